"""What'sUp: does the image pick the caption with the right spatial preposition among its options (the first true)?"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from lit_compclip.metrics import choice_correct, first_option_wins, placement_sets
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, choice_record,
                                      choose_subsets, encode_images, encode_texts, field, pair_scores, read_json)

# subset -> (annotation file, image folder under `root`), as amitakamath/whatsup_vlms dataset_zoo/aro_datasets.py
# names them (its data/ folder is `root` here).
SUBSETS = {
    "controlled_a": ("controlled_images_dataset.json", "controlled_images"),
    "controlled_b": ("controlled_clevr_dataset.json", "controlled_clevr"),
    "coco_qa_one": ("coco_qa_one_obj.json", "val2017"),
    "coco_qa_two": ("coco_qa_two_obj.json", "val2017"),
    "vg_qa_one": ("vg_qa_one_obj.json", "vg_images"),
    "vg_qa_two": ("vg_qa_two_obj.json", "vg_images"),
}
# Controlled sets: the placements a file name may hold, as opposite couples (pair accuracy scores each couple).
OPPOSITES = {"controlled_a": (("left", "right"), ("on", "under")),
             "controlled_b": (("left", "right"), ("in-front", "behind"))}
# Two-object QA sets: the official labels, the first phrase found in the true caption, else the last label.
QA_TWO_LABELS = {"coco_qa_two": (("left of", "left"), ("right of", "right"), ("above", "above"), (None, "below")),
                 "vg_qa_two": (("left of", "left"), ("right of", "right"), ("front of", "front"),
                               ("behind", "behind"), (None, "top"))}
# Table 1 of the paper averages each dataset's two subsets (the official README, "Running experiments").
DATASETS = {"controlled": ("controlled_a", "controlled_b"), "coco_qa": ("coco_qa_one", "coco_qa_two"),
            "vg_qa": ("vg_qa_one", "vg_qa_two")}


class Example(NamedTuple):
    id: str  # the record's index in its file
    ref: ImageRef
    captions: tuple[str, ...]  # the options, the true one first
    preposition: str  # the official per-preposition label
    objects: str | None  # Controlled sets: the object pair ("<object>|<object>"), for pair and set accuracy


class WhatsUp:
    """Per subset strict accuracy `<subset>`, the official argmax figure `<subset>_official`, Controlled `_pair` and
    `_set`, the dataset means `controlled` / `coco_qa` / `vg_qa` (each only with both its subsets), `mean`, `ties`, `n`.

    Files and rules of amitakamath/whatsup_vlms (dataset_zoo/aro_datasets.py): under `root`,
    - Controlled A / B: `controlled_images_dataset.json` / `controlled_clevr_dataset.json`, a list of
      {image_path, caption_options}; the image is the path's file name in `controlled_images/` / `controlled_clevr/`,
      named `<object>_<placement>_<object>` with placement left_of, right_of, on, under (A) or left_of, right_of,
      in-front_of, behind (B); four options, the first true.
    - COCO-QA / VG-QA one- and two-object: `{coco,vg}_qa_{one,two}_obj.json`, a list of [image id, true caption,
      false caption]; images `val2017/<id, 12 digits>.jpg` (or `coco_images`) and `vg_images/<id>.jpg` (or
      `vg_images`).
    Accuracy is micro over a file's images. Strict: the true option must beat every other one; a tie is wrong and
    counted in `ties`. The official code takes numpy's argmax with the true option first, so a tie is right there:
    that figure is `<subset>_official`. Pair accuracy (per object pair, each couple of opposite placements with both
    images right) and set accuracy (all four right) use the strict verdicts over the object pairs that hold all four
    placements (the official code assumes every pair is complete; `limit` may cut one). Per-preposition labels (the
    official ones: the placement for Controlled, the true caption's last word for one-object QA, its first
    QA_TWO_LABELS phrase for two-object QA) go into the records. An image file whose bytes another one repeats is
    encoded once. `limit` keeps each file's first records."""

    def __init__(self, root: str, subsets: Sequence[str] | None = None, batch_size: int = 256,
                 limit: int | None = None, coco_images: str | None = None, vg_images: str | None = None):
        check_common("whatsup", batch_size, limit)
        self.batch_size = batch_size
        root_dir = check_path(root, "root", "whatsup", is_dir=True)
        folders = {s: root_dir / folder for s, (_, folder) in SUBSETS.items()}
        for option, value, prefix in (("coco_images", coco_images, "coco_qa"), ("vg_images", vg_images, "vg_qa")):
            if value is not None:
                folder = check_path(value, option, "whatsup", is_dir=True)
                folders.update({s: folder for s in SUBSETS if s.startswith(prefix)})
        files = choose_subsets("whatsup", subsets, {s: root_dir / name for s, (name, _) in SUBSETS.items()}, "root")
        self.examples = {s: self._read(s, path, folders[s], limit) for s, path in files.items()}
        refs = [ex.ref for rows in self.examples.values() for ex in rows]
        check_images_exist(refs, "whatsup")
        first: dict[bytes, ImageRef] = {}  # file content -> the first image holding it
        self.same = {r.path: first.setdefault(hashlib.sha1(r.path.read_bytes()).digest(), r) for r in refs}

    @staticmethod
    def _read(subset: str, path: Path, image_dir: Path, limit: int | None) -> list[Example]:
        data = read_json(path)
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON list of records")
        return [(_controlled if subset in OPPOSITES else _qa)(subset, i, record, f"{path} record {i}", image_dir)
                for i, record in enumerate(data[:limit])]

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        flat = [ex for rows in self.examples.values() for ex in rows]
        # One pass over every subset, so a shared image or caption is encoded once.
        img = encode_images(encoder, [self.same[ex.ref.path] for ex in flat], self.batch_size)  # (N, D)
        txt = encode_texts(encoder, [c for ex in flat for c in ex.captions], self.batch_size)  # (sum of K, D)
        out, ties, row, start = {}, 0, 0, 0
        for subset, rows in self.examples.items():
            n, k = len(rows), len(rows[0].captions)
            caps = txt[start:start + n * k].view(n, k, -1)  # (n, K, D), the true option first
            # Column by column, so identical captions get bit-identical scores (an exact tie).
            scores = torch.stack([pair_scores(img[row:row + n], caps[:, j]) for j in range(k)], dim=1)  # (n, K)
            correct, tied = choice_correct(scores[:, 0], scores[:, 1:])
            official = first_option_wins(scores)
            row, start = row + n, start + n * k
            out[subset] = correct.float().mean().item()
            out[f"{subset}_official"] = official.float().mean().item()
            ties += int(tied.sum())
            if subset in OPPOSITES:
                sets = placement_sets(correct, [ex.objects for ex in rows], [ex.preposition for ex in rows],
                                      OPPOSITES[subset])
                if sets["groups"]:
                    out[f"{subset}_pair"], out[f"{subset}_set"] = sets["pair"], sets["set"]
            if records is not None:
                records.setdefault(subset, []).extend(
                    choice_record(ex.id, ex.ref, ex.captions, scores[i].tolist(), correct[i], tied=bool(tied[i]),
                                  official=bool(official[i]), preposition=ex.preposition,
                                  **({"objects": ex.objects} if ex.objects else {}))
                    for i, ex in enumerate(rows))
        present = [s for s in SUBSETS if s in self.examples]
        for name, pair in DATASETS.items():
            if all(s in self.examples for s in pair):
                out[name] = sum(out[s] for s in pair) / 2
        out["mean"] = sum(out[s] for s in present) / len(present)
        out["ties"] = float(ties)
        out["n"] = float(len(flat))
        return out


def _options(captions, where: str, at_least: int = 2) -> tuple[str, ...]:
    if not isinstance(captions, list) or len(captions) < at_least or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{where}: the caption options must be a list of {at_least} or more strings, the true one "
                         f"first; got {captions!r}")
    return tuple(captions)


def _controlled(subset: str, i: int, record, where: str, image_dir: Path) -> Example:
    image_path = field(record, "image_path", str, where)
    captions = _options(field(record, "caption_options", list, where), where)
    parts = Path(image_path).stem.split("_")
    placements = [p for couple in OPPOSITES[subset] for p in couple]
    if len(parts) < 3 or parts[1] not in placements:
        raise ValueError(f"{where}: image_path {image_path!r} must be named <object>_<placement>_<object> with a "
                         f"placement of {placements} (left and right followed by _of)")
    return Example(str(i), ImageRef(image_dir / Path(image_path).name, None, where), captions, parts[1],
                   f"{parts[0]}|{parts[-1]}")


def _qa(subset: str, i: int, record, where: str, image_dir: Path) -> Example:
    if not isinstance(record, list) or len(record) < 3 or isinstance(record[0], bool) \
            or not isinstance(record[0], (int, str)):
        raise ValueError(f"{where}: expected [image id, true caption, false caption]; got {record!r}")
    captions = _options(list(record[1:3]), where)
    image = f"{str(record[0]).zfill(12)}.jpg" if subset.startswith("coco") else f"{record[0]}.jpg"
    if subset in QA_TWO_LABELS:
        label = next(name for phrase, name in QA_TWO_LABELS[subset] if phrase is None or phrase in captions[0])
    else:
        label = captions[0].split()[-1] if captions[0].split() else ""
    return Example(str(i), ImageRef(image_dir / image, None, where), captions, label, None)
