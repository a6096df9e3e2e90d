"""ARO: VG-Relation / VG-Attribution on the cropped box, COCO-Order / Flickr30k-Order on word-order negatives."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from lit_compclip.metrics import choice_correct, group_mean
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, choice_record,
                                      choose_subsets, encode_images, encode_texts, field, pair_scores, read_json)
from lit_compclip.probes.order import KINDS, frozen_negatives, frozen_path, read_karpathy

# subset -> (annotation file, the field that names its macro-average group)
SUBSETS = {
    "vg_relation": ("visual_genome_relation.json", "relation_name"),
    "vg_attribution": ("visual_genome_attribution.json", "attributes"),
}
ORDER_SUBSETS = ("coco_order", "flickr_order")

# Relations the official VG-Relation macro average leaves out (a swap of subject and object does not make them
# false). Fact taken from mertyg/vision-language-models-are-bows,
# "notebooks/Replicate ARO! VG-Relation, VG-Attribution.ipynb" (the list `symmetric`).
OFFICIAL_EXCLUDED_RELATIONS = frozenset([
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of", "opening",
    "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of", "parked near",
    "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on", "playing with",
    "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to", "staring at",
    "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching", "traveling down",
    "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for", "walking across", "walking by",
    "walking down", "walking next to", "walking through", "working in", "working on", "worn on", "wrapped around",
    "wrapped in", "by", "of", "near", "next to", "with", "beside", "on the side of", "around"])
# VG-Attribution pairs with fewer cases are dropped (dataset_zoo/aro_datasets.py, VG_Attribution.evaluate_scores).
OFFICIAL_MIN_PAIR_CASES = 25


class Example(NamedTuple):
    id: str  # list index in the VG file; "<image index>:<caption index>" in a Karpathy file
    ref: ImageRef
    captions: tuple[str, ...]  # the true caption first
    group: str | None  # relation name, "<attr0>_<attr1>" (the official key), or None for the Order sets


class ARO:
    """Accuracy `vg_relation`, `vg_attribution`, `coco_order`, `flickr_order`, macro `vg_*_macro`, `ties`, `n`.

    Every subset is optional; at least one is needed. `root` + `images` give VG-R / VG-A (`subsets` picks among
    them); `coco_order` / `flickr_order` (a Karpathy test JSON) + `coco_images` / `flickr_images` give the Order sets.
    Every accuracy is strict: the true caption must score above every other one; a tie is wrong and counted in
    `ties`. The official code's argmax puts the true Order caption first and so counts those ties right: that
    figure is reported beside the strict one as `coco_order_official` / `flickr_order_official`.
    Macro averages (VG only) are over relation names (VG-R) and ordered attribute pairs (VG-A):
    - default: `exclude_relations` leaves relation names out of VG-R and `min_cases` drops groups of both with fewer
      cases; by default nothing is dropped.
    - `official_macro=True`: the official figures' rules, which then replace those two options: VG-R leaves out
      OFFICIAL_EXCLUDED_RELATIONS (no floor) and VG-A drops pairs with < 25 cases (no exclusion), as in
      mertyg/vision-language-models-are-bows (notebooks/Replicate ARO! VG-Relation, VG-Attribution.ipynb for the
      list; dataset_zoo/aro_datasets.py for the floor).
    Micro accuracies always use every record.
    Order sets: each caption against its 4 perturbations (order.KINDS), all cleaned like the official `pre_caption`
    (lower case, punctuation blanked, 30 words). A perturbation that leaves a short caption unchanged ties with it
    and so counts wrong. The perturbations are generated once per `order_seed` for every caption of the file and
    frozen to `<file stem>.order_negatives.seed<order_seed>.json` beside it (or `coco_order_negatives` /
    `flickr_order_negatives`); later runs only read that file. Parts of speech come from a rule-based tagger
    (order.tag: a closed-class word list, a small adjective list, -ing words as verbs; everything else a noun)
    where the official code uses spaCy's en_core_web_sm, so the noun/adjective shuffles differ in detail.
    `limit` keeps the first records of VG files and the first images of Karpathy files."""

    def __init__(self, root: str | None = None, images: str | None = None, subsets: Sequence[str] | None = None,
                 batch_size: int = 256, limit: int | None = None, min_cases: int = 0,
                 exclude_relations: Sequence[str] | None = None, official_macro: bool = False,
                 coco_order: str | None = None, coco_images: str | None = None, flickr_order: str | None = None,
                 flickr_images: str | None = None, order_seed: int = 0, coco_order_negatives: str | None = None,
                 flickr_order_negatives: str | None = None):
        check_common("aro", batch_size, limit)
        if not isinstance(min_cases, int) or min_cases < 0:
            raise ValueError(f"aro probe: option 'min_cases' must be an integer >= 0; got {min_cases!r}")
        if isinstance(exclude_relations, str):
            raise ValueError(f"aro probe: option 'exclude_relations' must be a list of relation names; "
                             f"got the string {exclude_relations!r}")
        if not isinstance(official_macro, bool):
            raise ValueError(f"aro probe: option 'official_macro' must be true or false; got {official_macro!r}")
        if official_macro and (min_cases or exclude_relations):
            raise ValueError("aro probe: official_macro=True sets the exclusions and the floor itself; "
                             "leave 'min_cases' and 'exclude_relations' unset")
        if not isinstance(order_seed, int) or isinstance(order_seed, bool) or order_seed < 0:
            raise ValueError(f"aro probe: option 'order_seed' must be an integer >= 0; got {order_seed!r}")
        if root is None and coco_order is None and flickr_order is None:
            raise ValueError("aro probe: give at least one of options 'root' (VG-Relation / VG-Attribution), "
                             "'coco_order', 'flickr_order'")
        self.batch_size = batch_size
        # subset -> (relation names left out, floor on cases per group) of its macro average
        self.rules = {"vg_relation": (OFFICIAL_EXCLUDED_RELATIONS, 0) if official_macro
                      else (frozenset(exclude_relations or ()), min_cases),
                      "vg_attribution": (frozenset(), OFFICIAL_MIN_PAIR_CASES if official_macro else min_cases)}
        self.examples: dict[str, list[Example]] = {}
        self.kept: dict[str, list[int]] = {}  # subset -> rows its macro average counts
        if root is not None or images is not None or subsets is not None:
            self._add_vg(root, images, subsets, limit)
        for subset, ann, imgs, negs, opts in (
                ("coco_order", coco_order, coco_images, coco_order_negatives,
                 ("coco_order", "coco_images", "coco_order_negatives")),
                ("flickr_order", flickr_order, flickr_images, flickr_order_negatives,
                 ("flickr_order", "flickr_images", "flickr_order_negatives"))):
            if ann is not None or imgs is not None or negs is not None:
                self._add_order(subset, ann, imgs, negs, opts, order_seed, limit)
        check_images_exist([ex.ref for rows in self.examples.values() for ex in rows], "aro")

    def _add_vg(self, root, images, subsets, limit) -> None:
        for option, value in (("root", root), ("images", images)):
            if value is None:
                raise ValueError(f"aro probe: option {option!r} is needed with 'root', 'images' and 'subsets' "
                                 f"(VG-Relation / VG-Attribution)")
        root_dir = check_path(root, "root", "aro", is_dir=True)
        image_dir = check_path(images, "images", "aro", is_dir=True)
        files = choose_subsets("aro", subsets, {s: root_dir / name for s, (name, _) in SUBSETS.items()}, "root")
        for s, path in files.items():
            self.examples[s] = self._read_vg(path, SUBSETS[s][1], image_dir, limit)
            excluded, floor = self.rules[s]
            counts: dict[str, int] = {}
            for ex in self.examples[s]:
                counts[ex.group] = counts.get(ex.group, 0) + 1
            self.kept[s] = [i for i, ex in enumerate(self.examples[s])
                            if ex.group not in excluded and counts[ex.group] >= floor]
            if not self.kept[s]:
                dropped = f" and {len(excluded)} excluded relation names" if excluded else ""
                raise ValueError(f"aro probe: {path}: no {SUBSETS[s][1]} group is left for the macro average "
                                 f"under min_cases={floor}{dropped}")

    @staticmethod
    def _read_vg(path: Path, group_key: str, image_dir: Path, limit: int | None) -> list[Example]:
        data = read_json(path)
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON list of records")
        rows = []
        for i, record in enumerate(data[:limit]):
            where = f"{path} record {i}"
            x, y, w, h = (field(record, f"bbox_{k}", (int, float), where) for k in "xywh")
            if w <= 0 or h <= 0:
                raise ValueError(f"{where}: bbox_w and bbox_h must be > 0; got {w} and {h}")
            ref = ImageRef(image_dir / field(record, "image_path", str, where), (x, y, x + w, y + h), where)
            if group_key == "attributes":
                pair = field(record, "attributes", list, where)
                if len(pair) != 2 or not all(isinstance(a, str) for a in pair):
                    raise ValueError(f"{where} field 'attributes' must be a list of two strings; got {pair!r}")
                group = f"{pair[0]}_{pair[1]}"
            else:
                group = field(record, group_key, str, where)
            rows.append(Example(str(i), ref, (field(record, "true_caption", str, where),
                                              field(record, "false_caption", str, where)), group))
        return rows

    def _add_order(self, subset, ann, imgs, negs, opts, seed, limit) -> None:
        ann_opt, img_opt, neg_opt = opts
        for option, value in ((ann_opt, ann), (img_opt, imgs)):
            if value is None:
                raise ValueError(f"aro probe: option {option!r} is needed with {ann_opt!r} (the Karpathy test JSON) "
                                 f"and {img_opt!r} (its image folder)")
        path = check_path(ann, ann_opt, "aro")
        image_dir = check_path(imgs, img_opt, "aro", is_dir=True)
        frozen = Path(negs).expanduser() if negs is not None else frozen_path(path, seed)
        negatives = frozen_negatives(path, seed, frozen, neg_opt, limit)
        self.examples[subset] = [
            Example(ex.id, ImageRef(image_dir / ex.image, None, f"{path} record {ex.id.split(':')[0]}"),
                    (ex.caption, *negatives[ex.id]), None)
            for ex in read_karpathy(path, limit)]

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        flat = [ex for rows in self.examples.values() for ex in rows]
        # One pass over every subset so a shared image, crop or caption is encoded once.
        img = encode_images(encoder, [ex.ref for ex in flat], self.batch_size)  # (N, D)
        txt = encode_texts(encoder, [c for ex in flat for c in ex.captions], self.batch_size)  # (sum of K, D)
        out, ties, row, start = {}, 0, 0, 0
        for subset, rows in self.examples.items():
            n, k = len(rows), len(rows[0].captions)
            caps = txt[start:start + n * k].view(n, k, -1)  # (n, K, D), the true caption first
            # Column by column, so identical captions get bit-identical scores (an exact tie).
            scores = torch.stack([pair_scores(img[row:row + n], caps[:, j]) for j in range(k)], dim=1)  # (n, K)
            correct, tied = choice_correct(scores[:, 0], scores[:, 1:])
            row, start = row + n, start + n * k
            out[subset] = correct.float().mean().item()
            ties += int(tied.sum())
            if subset in SUBSETS:
                kept = self.kept[subset]
                per_group = group_mean(correct[kept], [rows[i].group for i in kept])
                out[f"{subset}_macro"] = sum(per_group.values()) / len(per_group)
            else:
                # The official code takes an argmax with the true caption first, so a tie (often a perturbation
                # identical to a short caption) counts as right there; reported beside the strict figure.
                out[f"{subset}_official"] = (scores[:, 0] >= scores[:, 1:].max(dim=1).values).float().mean().item()
            if records is not None:
                self._record(records.setdefault(subset, []), subset, rows, scores, correct, tied)
        out["ties"] = float(ties)
        out["n"] = float(len(flat))
        return out

    def _record(self, into: list, subset: str, rows: list[Example], scores, correct, tied) -> None:
        kept = set(self.kept.get(subset, ()))
        for i, ex in enumerate(rows):
            # VG refs carry their box, which choice_record adds; Order refs have none.
            extra = dict(group=ex.group, in_macro=i in kept) if subset in SUBSETS else dict(negative_kinds=list(KINDS))
            into.append(choice_record(ex.id, ex.ref, ex.captions, scores[i].tolist(), correct[i], tied=bool(tied[i]),
                                      **extra))
