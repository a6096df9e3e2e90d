"""ARO VG-Relation / VG-Attribution: on the cropped box, does the true caption beat the swapped one strictly?"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Sequence

import torch

from lit_compclip.metrics import choice_correct, group_mean
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, choose_subsets,
                                      encode_images, encode_texts, field, pair_scores, read_json)

# subset -> (annotation file, the field that names its macro-average group)
SUBSETS = {
    "vg_relation": ("visual_genome_relation.json", "relation_name"),
    "vg_attribution": ("visual_genome_attribution.json", "attributes"),
}


class ARO:
    """Micro accuracy `vg_relation` / `vg_attribution`, their `_macro` averages, exact `ties` and `n`.

    Macro groups are relation names (VG-R) and ordered attribute pairs (VG-A). `exclude_relations` and
    `min_cases` (drop groups with fewer cases) shape only the macro averages, where the official figures
    apply them; the micro accuracies use every record."""

    def __init__(self, root: str, images: str, subsets: Sequence[str] | None = None, batch_size: int = 64,
                 limit: int | None = None, min_cases: int = 0, exclude_relations: Sequence[str] | None = None):
        check_common("aro", batch_size, limit)
        if not isinstance(min_cases, int) or min_cases < 0:
            raise ValueError(f"aro probe: option 'min_cases' must be an integer >= 0; got {min_cases!r}")
        if isinstance(exclude_relations, str):
            raise ValueError(f"aro probe: option 'exclude_relations' must be a list of relation names; "
                             f"got the string {exclude_relations!r}")
        self.batch_size, self.min_cases = batch_size, min_cases
        self.exclude_relations = set(exclude_relations or ())
        root_dir = check_path(root, "root", "aro", is_dir=True)
        image_dir = check_path(images, "images", "aro", is_dir=True)
        files = choose_subsets("aro", subsets, {s: root_dir / name for s, (name, _) in SUBSETS.items()}, "root")
        # subset -> list of (cropped image, true caption, false caption, macro group)
        self.examples = {}
        for s, path in files.items():
            self.examples[s] = self._read(path, SUBSETS[s][1], image_dir, limit)
            if not self._macro(s, [True] * len(self.examples[s])):
                raise ValueError(f"aro probe: {path}: no {SUBSETS[s][1]} group is left for the macro average "
                                 f"after exclude_relations and min_cases={min_cases}")
        check_images_exist([row[0] for rows in self.examples.values() for row in rows], "aro")

    @staticmethod
    def _read(path: Path, group_key: str, image_dir: Path, limit: int | None) -> list[tuple]:
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
                group: Hashable = tuple(pair)
            else:
                group = field(record, group_key, str, where)
            rows.append((ref, field(record, "true_caption", str, where), field(record, "false_caption", str, where),
                         group))
        return rows

    def _macro(self, subset: str, correct) -> dict[Hashable, float]:
        """Per-group accuracy over the groups the macro average keeps."""
        keep = [i for i, row in enumerate(self.examples[subset])
                if not (subset == "vg_relation" and row[3] in self.exclude_relations)]
        groups = [self.examples[subset][i][3] for i in keep]
        return group_mean(torch.as_tensor(correct)[keep], groups, self.min_cases)

    def run(self, encoder: Encoder) -> dict[str, float]:
        rows = [row for subset in self.examples.values() for row in subset]
        # One pass over both subsets so a shared crop or caption is encoded once.
        img = encode_images(encoder, [row[0] for row in rows], self.batch_size)  # (N, D)
        txt = encode_texts(encoder, [row[1] for row in rows] + [row[2] for row in rows], self.batch_size)  # (2N, D)
        correct, tied = choice_correct(pair_scores(img, txt[:len(rows)]), pair_scores(img, txt[len(rows):]))
        out, start = {}, 0
        for subset, examples in self.examples.items():
            part = correct[start:start + len(examples)]
            start += len(examples)
            out[subset] = part.float().mean().item()
            per_group = self._macro(subset, part)
            out[f"{subset}_macro"] = sum(per_group.values()) / len(per_group)
        out["ties"] = float(tied.sum())
        out["n"] = float(len(rows))
        return out
