"""Probe results' columns and their chance levels: `<suite>/<metric>` columns in papers' order (counts, ties and
seconds left out), and the score random similarities would get, by each benchmark's rule."""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

from lit_compclip.probes.report import COUNT_METRICS

NOT_SCORES = COUNT_METRICS | {"seconds"}
SUMMARY = re.compile(r"(.*_)?mean")  # a suite's average of its subsets (mean, itt_mean): shown after them
SUITE_ORDER = ("sugarcrepe", "sugarcrepe_pp", "aro", "winoground", "whatsup")  # as papers' tables; others follow
# Chance under random scores, (suite pattern, metric pattern, level); a suite is matched by its name, so a suite
# renamed in the config (probes.suites.mine.type=sugarcrepe) gets no chance line. Retrieval: see retrieval_chance.
CHANCE_RULES = (
    (r"sugarcrepe_?pp|scpp", r".*", 1 / 3),  # ITT and TOT: both positives beat the negative, 1 in 3 orderings
    (r"sugarcrepe", r".*", 1 / 2),  # the true caption or the negative
    (r"aro", r"vg_(relation|attribution).*", 1 / 2),
    (r"aro", r"(coco|flickr)\w*order.*", 1 / 5),  # the caption and four word-order perturbations
    (r"winoground", r"(.*/)?(text|image)", 1 / 4),  # both captions (images) right: 1 in 4
    (r"winoground", r"(.*/)?group", 1 / 6),  # text and image right together: 4 of the 24 orderings
    # What'sUp (probes/whatsup.py): Controlled four placements, one true; pair = two opposite images both right;
    # set = all four placements of an object pair right; QA two options; `mean` averages the subsets present
    (r"whatsup", r"controlled(_[ab])?(_official)?", 1 / 4),
    (r"whatsup", r"controlled_[ab]_pair", 1 / 4 ** 2),
    (r"whatsup", r"controlled_[ab]_set", 1 / 4 ** 4),
    (r"whatsup", r"(coco|vg)_qa(_one|_two)?(_official)?", 1 / 2),
)
WHATSUP_SUBSETS = ("controlled_a", "controlled_b", "coco_qa_one", "coco_qa_two", "vg_qa_one", "vg_qa_two")
RECALL = re.compile(r"(t2i|i2t)_r(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key putting 'r5' before 'r10'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def order_columns(columns: Sequence[str]) -> list[str]:
    """The score columns (`<suite>/<metric>`; counts, ties and seconds left out): papers' suites first, then the
    others in order of appearance; within a suite overall metrics before per-tag ones, the summary (mean) last,
    r5 before r10."""
    suites: dict[str, list[str]] = {}
    for column in columns:
        suite, metric = column.split("/", 1)
        if metric.rsplit("/", 1)[-1] not in NOT_SCORES and column not in suites.setdefault(suite, []):
            suites[suite].append(column)

    def key(column: str) -> tuple:
        metric = column.split("/", 1)[1]
        return metric.count("/"), bool(SUMMARY.fullmatch(metric)), natural_key(metric)

    known = [s for s in SUITE_ORDER if s in suites] + [s for s in suites if s not in SUITE_ORDER]
    return [c for suite in known for c in sorted(suites[suite], key=key)]


def retrieval_chance(metric: str, n_images: float, n_texts: float) -> float | None:
    """Recall@k of random scores: t2i k / n_images; i2t 1 - C(T - m, k) / C(T, k) with m = T / I captions per image
    (None when images hold different numbers of captions)."""
    way, k = RECALL.fullmatch(metric).groups()
    k, n_images, n_texts = int(k), int(n_images), int(n_texts)
    if way == "t2i":
        return min(1.0, k / n_images)
    if n_texts % n_images:
        return None
    m = n_texts // n_images
    return 1.0 - math.comb(n_texts - m, k) / math.comb(n_texts, k) if k < n_texts else 1.0


def chance_of(suite: str, metric: str) -> float | None:
    """The rule's chance level of one suite metric, or None."""
    return next((lv for s, m, lv in CHANCE_RULES if re.search(s, suite) and re.fullmatch(m, metric)), None)


def chance(raw: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """column -> chance level where known: the benchmark's rule, or for recall the suite's image and text counts
    (shown only when every model that has the column agrees)."""
    out: dict[str, float] = {}
    for column in order_columns(list(dict.fromkeys(c for results in raw.values() for c in results))):
        suite, metric = column.split("/", 1)
        if RECALL.fullmatch(metric):
            levels = {retrieval_chance(metric, r[f"{suite}/n_images"], r[f"{suite}/n_texts"])
                      for r in raw.values() if column in r and f"{suite}/n_images" in r and f"{suite}/n_texts" in r}
            if len(levels) == 1 and None not in levels:
                out[column] = levels.pop()
            continue
        level = chance_of(suite, metric)
        if level is None and "whatsup" in suite and metric == "mean":  # the average of its subsets' levels
            present = {tuple(w for w in WHATSUP_SUBSETS if f"{suite}/{w}" in r) for r in raw.values() if column in r}
            if len(present) == 1 and (subsets := present.pop()):
                level = sum(chance_of(suite, w) for w in subsets) / len(subsets)
        if level is not None:
            out[column] = level
    return out
