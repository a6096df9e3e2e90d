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


def sugarcrepe_pp_scores(image: Tensor, text: Tensor) -> dict[str, Tensor]:
    """SugarCrepe++'s two rules per example, (N,) bools `itt`, `tot` and their ties `itt_tied`, `tot_tied`.

    image[n] = sim(image, [caption, caption2, negative]); text[n] = [sim(caption, caption2), sim(caption, negative),
    sim(caption2, negative)]. ITT: both positives beat the negative; TOT: the positives are closer to each other than
    either is to the negative. Strict, as Sri-Harsha/scpp's VLMs/test_*.py compare them (`>`): a tie is wrong and
    `*_tied` marks a deciding comparison that tied. A NaN score is never correct and never a tie."""
    for name, s in (("image", image), ("text", text)):
        if s.dim() != 2 or s.shape[1] != 3:
            raise ValueError(f"sugarcrepe++ {name} scores need shape (N, 3); got {tuple(s.shape)}")
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"sugarcrepe++ scores need as many image rows as text rows; got {image.shape[0]} "
                         f"and {text.shape[0]}")
    # ITT: the weaker positive decides; torch.minimum passes a NaN on, so a NaN is never right
    itt, itt_tied = choice_correct(torch.minimum(image[:, 0], image[:, 1]), image[:, 2])
    tot, tot_tied = choice_correct(text[:, 0], text[:, 1:])
    return {"itt": itt, "tot": tot, "itt_tied": itt_tied, "tot_tied": tot_tied}


def first_option_wins(scores: Tensor) -> Tensor:
    """(N,) bools: does an argmax over each row of (N, K) scores pick column 0, the true option?

    The official What'sUp / ARO code takes numpy's argmax, which returns the first of equal maxima: with the true
    option first, a tie counts as right there (beside the strict `choice_correct`). A NaN row is wrong."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"option scores need shape (N, K >= 2); got {tuple(scores.shape)}")
    return (scores[:, 0] >= scores[:, 1:].max(dim=1).values) & ~scores.isnan().any(dim=1)


def placement_sets(correct: Tensor, objects: Sequence[Hashable], placements: Sequence[str],
                   opposites: Sequence[tuple[str, str]]) -> dict[str, float]:
    """What'sUp Controlled pair and set accuracy over the object pairs photographed in every placement.

    correct[n]: image n's verdict; objects[n]: its object pair; placements[n]: its placement (e.g. 'left').
    `pair`: the fraction of (object pair, opposite placements) couples with both images right; `set`: the fraction
    of object pairs with all of their images right; `groups`: the object pairs counted. As in amitakamath/whatsup_vlms
    (dataset_zoo/aro_datasets.py, Controlled_Images.evaluate_scores) a repeated placement keeps the last verdict;
    an object pair lacking a placement is left out (the official denominators assume every pair is complete)."""
    if correct.dim() != 1 or not len(objects) == len(placements) == correct.shape[0]:
        raise ValueError(f"placement_sets needs correct (N,) and N objects and placements; got "
                         f"{tuple(correct.shape)}, {len(objects)} and {len(placements)}")
    wanted = {p for couple in opposites for p in couple}
    verdicts: dict[Hashable, dict[str, bool]] = {}
    for ok, obj, place in zip(correct.tolist(), objects, placements):
        verdicts.setdefault(obj, {})[place] = bool(ok)
    complete = [v for v in verdicts.values() if wanted <= set(v)]
    if not complete:
        return {"pair": float("nan"), "set": float("nan"), "groups": 0.0}
    pairs = sum(v[a] and v[b] for v in complete for a, b in opposites)
    return {"pair": pairs / (len(complete) * len(opposites)), "set": sum(all(v[p] for p in wanted) for v in complete)
            / len(complete), "groups": float(len(complete))}
