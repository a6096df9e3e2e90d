"""The contrastive objective as pure functions: symmetric InfoNCE (optionally with extra hard-negative captions), over
the whole batch or as one process's share of it."""

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


def info_nce_local(image_local: torch.Tensor, text_local: torch.Tensor, image_all: torch.Tensor,
                   text_all: torch.Tensor, logit_scale: torch.Tensor | float, offset: int,
                   negative_all: torch.Tensor | None = None) -> torch.Tensor:
    """One process's share of the global-batch loss: only its own b rows of each direction (open_clip's local loss).

    `image_local`, `text_local` (b, D) are this process's pairs, at rows `offset` .. `offset + b` of the gathered
    `image_all`, `text_all` (B, D); `negative_all` (M, D) are every process's hard negatives (image->text side only,
    as in `info_nce_with_negatives`). Every process must hold the same b: the mean of the processes' local losses is
    then `info_nce` (or `info_nce_with_negatives`) of the whole batch, at O(b * B) memory instead of O(B * B). Under
    DDP the gradients are exact too: the backward of an all-gather sums over processes what DDP then averages.
    """
    b = image_local.shape[0]
    if image_local.shape != text_local.shape or image_all.shape != text_all.shape or image_local.ndim != 2 \
            or image_all.ndim != 2 or image_all.shape[1] != image_local.shape[1] \
            or not 0 <= offset <= image_all.shape[0] - b:
        raise ValueError(f"info_nce_local expects (b, D) local and (B, D) gathered tensors with 0 <= offset <= B - b, "
                         f"got {tuple(image_local.shape)}, {tuple(text_local.shape)}, {tuple(image_all.shape)}, "
                         f"{tuple(text_all.shape)} and offset {offset}")
    texts = text_all if negative_all is None else torch.cat([text_all, negative_all])  # (B + M, D)
    labels = torch.arange(offset, offset + b, device=image_local.device)  # the positives' global columns
    image_to_text = logit_scale * image_local @ texts.T  # (b, B + M): my images against every text
    text_to_image = logit_scale * text_local @ image_all.T  # (b, B): my texts against every image
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
