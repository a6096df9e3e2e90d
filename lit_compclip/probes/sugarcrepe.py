"""SugarCrepe: does the image score its caption strictly above a hard negative caption (seven subsets)?"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lit_compclip.metrics import choice_correct
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, choice_record,
                                      choose_subsets, encode_images, encode_texts, field, natural_key, pair_scores,
                                      read_json)

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


class SugarCrepe:
    """Per-subset accuracy, their `mean`, exact `ties` (counted wrong) and `n` examples scored."""

    def __init__(self, annotations: str, images: str, subsets: Sequence[str] | None = None,
                 batch_size: int = 256, limit: int | None = None):
        check_common("sugarcrepe", batch_size, limit)
        self.batch_size = batch_size
        root = check_path(annotations, "annotations", "sugarcrepe", is_dir=True)
        image_dir = check_path(images, "images", "sugarcrepe", is_dir=True)
        files = choose_subsets("sugarcrepe", subsets, {s: root / f"{s}.json" for s in SUBSETS}, "annotations")
        # subset -> list of (image, caption, negative caption, key)
        self.examples = {s: self._read(path, image_dir, limit) for s, path in files.items()}
        check_images_exist([row[0] for rows in self.examples.values() for row in rows], "sugarcrepe")

    @staticmethod
    def _read(path: Path, image_dir: Path, limit: int | None) -> list[tuple[ImageRef, str, str, str]]:
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON object mapping keys to records")
        keys = sorted(data, key=natural_key)[:limit]
        rows = []
        for key in keys:
            where = f"{path} record {key!r}"
            filename = field(data[key], "filename", str, where)
            rows.append((ImageRef(image_dir / filename, None, where), field(data[key], "caption", str, where),
                         field(data[key], "negative_caption", str, where), key))
        return rows

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        rows = [row for subset in self.examples.values() for row in subset]
        # One pass over all subsets so a shared image or caption is encoded once.
        img = encode_images(encoder, [row[0] for row in rows], self.batch_size)  # (N, D)
        txt = encode_texts(encoder, [row[1] for row in rows] + [row[2] for row in rows], self.batch_size)  # (2N, D)
        pos, neg = pair_scores(img, txt[:len(rows)]), pair_scores(img, txt[len(rows):])
        correct, tied = choice_correct(pos, neg)
        out, start = {}, 0
        for subset, examples in self.examples.items():
            out[subset] = correct[start:start + len(examples)].float().mean().item()
            if records is not None:
                records.setdefault(subset, []).extend(
                    choice_record(key, ref, [caption, negative], [pos[i], neg[i]], correct[i])
                    for i, (ref, caption, negative, key) in enumerate(examples, start=start))
            start += len(examples)
        out["mean"] = sum(out.values()) / len(out)
        out["ties"] = float(tied.sum())
        out["n"] = float(len(rows))
        return out
