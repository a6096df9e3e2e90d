"""Pure scoring rules of the compositional benchmarks and retrieval: tensors in, numbers out, no I/O."""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor


def choice_correct(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row (correct, tied) bools: correct iff pos beats every negative strictly, tied iff pos == the best one.

    pos: (N,); neg: (N,) or (N, K). A NaN score is never correct and never a tie."""
    if neg.dim() == 1:
        neg = neg[:, None]
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0] or neg.shape[1] == 0:
        raise ValueError(f"choice scores need pos (N,) and neg (N,) or (N, K>0); got {tuple(pos.shape)} "
                         f"and {tuple(neg.shape)}")
    best_neg = neg.max(dim=1).values  # (N,)
    return pos > best_neg, pos == best_neg


def choice_accuracy(pos: Tensor, neg: Tensor) -> tuple[float, int]:
    """(fraction of rows where pos > every neg strictly, number of rows where pos ties the best neg); NaN if N == 0."""
    correct, tied = choice_correct(pos, neg)
    accuracy = correct.float().mean().item() if len(correct) else float("nan")
    return accuracy, int(tied.sum())


def winoground_scores(s: Tensor) -> dict[str, Tensor]:
    """Per-example (N,) bools `text`, `image`, `group` (strict inequalities) and `tied`.

    s[n, c, i] = sim(caption c, image i). `tied` marks examples where any of the four comparisons the scores
    use is an exact tie (which the strict rule counts as wrong)."""
    if s.dim() != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"winoground scores need shape (N, 2, 2); got {tuple(s.shape)}")
    c0i0, c0i1, c1i0, c1i1 = s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 1, 1]
    text = (c0i0 > c1i0) & (c1i1 > c0i1)  # each image prefers its own caption
    image = (c0i0 > c0i1) & (c1i1 > c1i0)  # each caption prefers its own image
    tied = (c0i0 == c1i0) | (c1i1 == c0i1) | (c0i0 == c0i1) | (c1i1 == c1i0)
    return {"text": text, "image": image, "group": text & image, "tied": tied}


def recall_at_k(sim: Tensor, text_to_image: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways, as LAION's CLIP_benchmark defines it, with ties broken against the right answer.

    sim: (n_texts, n_images); text_to_image[t] = index of text t's image. Text-to-image is averaged over texts
    (hit if the text's own image is in the top k); image-to-text over images (hit if ANY of the image's captions
    is in the top k). CLIP_benchmark ranks with torch.topk, whose order among equal scores is unspecified; here
    a wrong candidate that ties the best right one ranks ahead of it, so a collapsed model (all scores equal)
    scores ~k/n, never 1; a NaN score is a miss. Without ties the two agree exactly. k >= the number of candidates is always a hit.
    Keys: `t2i_r{k}` and `i2t_r{k}`."""
    if sim.dim() != 2 or text_to_image.shape != (sim.shape[0],):
        raise ValueError(f"recall needs sim (n_texts, n_images) and text_to_image (n_texts,); got "
                         f"{tuple(sim.shape)} and {tuple(text_to_image.shape)}")
    n_texts, n_images = sim.shape
    if n_texts == 0 or n_images == 0:
        raise ValueError(f"recall needs at least one text and one image; got sim {tuple(sim.shape)}")
    text_to_image = text_to_image.long()
    if text_to_image.min() < 0 or text_to_image.max() >= n_images:
        raise ValueError(f"text_to_image holds indices outside [0, {n_images})")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall ks must be >= 1; got {list(ks)}")
    rows = torch.arange(n_texts)
    own = sim[rows, text_to_image]  # (n_texts,) each text's score with its own image
    # Text-to-image rank = number of other images scoring >= the own image (the own one always counts itself).
    t2i_rank = (sim >= own[:, None]).sum(dim=1) - 1  # (n_texts,)
    t2i_rank[own.isnan()] = n_images  # a NaN score is a miss, never a free hit
    # Image-to-text: the best own caption's score, then the number of OTHER images' captions reaching it.
    best = torch.full((n_images,), float("-inf"), dtype=sim.dtype).scatter_reduce(
        0, text_to_image, own, reduce="amax")  # (n_images,)
    captions = torch.bincount(text_to_image, minlength=n_images)  # (n_images,)
    if (captions == 0).any():
        missing = int((captions == 0).nonzero()[0])
        raise ValueError(f"image {missing} has no caption in text_to_image; every image needs at least one")
    reach = (sim >= best[None, :]).sum(dim=0)  # (n_images,) texts at or above the best own caption
    own_reach = torch.bincount(text_to_image, weights=(own >= best[text_to_image]).float(), minlength=n_images)
    i2t_rank = reach - own_reach.long()  # (n_images,)
    i2t_rank[best.isnan()] = n_texts
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = (t2i_rank < k).float().mean().item()
    for k in ks:
        out[f"i2t_r{k}"] = (i2t_rank < k).float().mean().item()
    return out


def group_mean(correct: Tensor, groups: Sequence[Hashable], min_count: int = 0) -> dict[Hashable, float]:
    """Accuracy per group (first-appearance order), dropping groups with fewer than `min_count` cases.

    correct: (N,) bools or 0/1; groups[n] = the group of row n. The macro average is the mean of the values."""
    if correct.dim() != 1 or len(groups) != correct.shape[0]:
        raise ValueError(f"group_mean needs correct (N,) and N groups; got {tuple(correct.shape)} and {len(groups)}")
    rows: dict[Hashable, list[int]] = {}
    for n, g in enumerate(groups):
        rows.setdefault(g, []).append(n)
    values = correct.float()
    return {g: values[idx].mean().item() for g, idx in rows.items() if len(idx) >= min_count}
