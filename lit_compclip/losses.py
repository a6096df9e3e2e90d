"""The contrastive objective: symmetric InfoNCE (optionally with extra hard-negative captions) as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies of `logit_scale * image_emb @ text_emb.T`.

    Both inputs are L2-normalised (B, D) with row i of each forming the positive pair; `logit_scale` is the
    multiplier itself (already exponentiated). Gathering across processes is the caller's job.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"info_nce expects two (B, D) tensors of one shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.T  # (B, B): row = image, column = text
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def info_nce_with_negatives(image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor,
                            logit_scale: torch.Tensor | float) -> torch.Tensor:
    """`info_nce` with M extra false captions (M, D) that every image must rank below its own (as NegCLIP).

    The negatives join the texts of the image->text direction only: each image sees all B + M texts. The
    text->image direction is unchanged (a negative describes no image of the batch), so M = 0 gives `info_nce`.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2 or negative_emb.ndim != 2 \
            or negative_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"info_nce_with_negatives expects (B, D), (B, D) and (M, D) tensors, got "
                         f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)} and {tuple(negative_emb.shape)}")
    b = image_emb.shape[0]
    logits = logit_scale * image_emb @ torch.cat([text_emb, negative_emb]).T  # (B, B + M): row = image
    labels = torch.arange(b, device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :b].T, labels)) / 2
