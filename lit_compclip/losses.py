"""The contrastive objective: symmetric InfoNCE as a pure function of normalised embeddings."""

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
