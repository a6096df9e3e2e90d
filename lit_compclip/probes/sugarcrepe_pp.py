"""SugarCrepe++: do both true captions (the second phrased otherwise) beat a hard negative, by image and by text?"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from lit_compclip.metrics import sugarcrepe_pp_scores
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, choice_record,
                                      choose_subsets, encode_images, encode_texts, field, pair_scores, read_json)

SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


class Example(NamedTuple):
    id: str
    ref: ImageRef
    captions: tuple[str, str, str]  # caption, caption2, negative_caption


class SugarCrepePP:
    """Per subset `<subset>_itt` and `<subset>_tot`, their means `itt_mean` / `tot_mean`, `ties` and `n` examples.

    Reads Sri-Harsha/scpp's `data/<subset>.json` (a JSON list of {id, filename, caption, caption2,
    negative_caption}; `filename` in `images`, COCO val2017 for the real set). Rules as its VLMs/test_*.py score them:
    ITT (image-to-text) is right iff sim(image, caption) > sim(image, negative) and sim(image, caption2) >
    sim(image, negative); TOT (text only) iff sim(caption, caption2) > sim(caption, negative) and sim(caption,
    caption2) > sim(caption2, negative). Both strict, there as here, so a tie is wrong; `ties` counts the tied
    deciding comparisons of both rules. Accuracies are micro within a subset; the means are over subsets.
    `limit` keeps each file's first records."""

    def __init__(self, annotations: str, images: str, subsets: Sequence[str] | None = None,
                 batch_size: int = 256, limit: int | None = None):
        check_common("sugarcrepe_pp", batch_size, limit)
        self.batch_size = batch_size
        root = check_path(annotations, "annotations", "sugarcrepe_pp", is_dir=True)
        image_dir = check_path(images, "images", "sugarcrepe_pp", is_dir=True)
        files = choose_subsets("sugarcrepe_pp", subsets, {s: root / f"{s}.json" for s in SUBSETS}, "annotations")
        self.examples = {s: self._read(path, image_dir, limit) for s, path in files.items()}
        check_images_exist([ex.ref for rows in self.examples.values() for ex in rows], "sugarcrepe_pp")

    @staticmethod
    def _read(path: Path, image_dir: Path, limit: int | None) -> list[Example]:
        data = read_json(path)
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON list of records")
        rows = []
        for i, record in enumerate(data[:limit]):
            where = f"{path} record {i}"
            key = str(field(record, "id", (int, str), where))
            texts = tuple(field(record, k, str, where) for k in ("caption", "caption2", "negative_caption"))
            rows.append(Example(key, ImageRef(image_dir / field(record, "filename", str, where), None, where), texts))
        return rows

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        flat = [ex for rows in self.examples.values() for ex in rows]
        n = len(flat)
        # One pass over every subset, so a shared image or caption is encoded once.
        img = encode_images(encoder, [ex.ref for ex in flat], self.batch_size)  # (N, D)
        txt = encode_texts(encoder, [c for ex in flat for c in ex.captions], self.batch_size)
        txt = txt.view(n, 3, -1)  # (N, 3, D): caption, caption2, negative
        # Column by column, so identical captions get bit-identical scores (an exact tie).
        image = torch.stack([pair_scores(img, txt[:, j]) for j in range(3)], dim=1)  # (N, 3): c1, c2, neg
        text = torch.stack([pair_scores(txt[:, a], txt[:, b]) for a, b in ((0, 1), (0, 2), (1, 2))], dim=1)  # (N, 3)
        verdict = sugarcrepe_pp_scores(image, text)
        out, start = {}, 0
        for subset, rows in self.examples.items():
            span = slice(start, start + len(rows))
            out[f"{subset}_itt"] = verdict["itt"][span].float().mean().item()
            out[f"{subset}_tot"] = verdict["tot"][span].float().mean().item()
            if records is not None:
                self._record(records, subset, rows, start, image, text, verdict)
            start += len(rows)
        for rule in ("itt", "tot"):
            out[f"{rule}_mean"] = sum(out[f"{s}_{rule}"] for s in self.examples) / len(self.examples)
        out["ties"] = float(verdict["itt_tied"].sum() + verdict["tot_tied"].sum())
        out["n"] = float(n)
        return out

    @staticmethod
    def _record(records: dict, subset: str, rows: list[Example], start: int, image, text, verdict) -> None:
        """Two records per example (`<subset>_itt`, `<subset>_tot`), each with the comparison that decides it first:
        ITT the weaker positive against the negative, TOT caption2 against the negative (both as seen from
        `caption`), so a failure's margin is how far the negative wins."""
        itt, tot = records.setdefault(f"{subset}_itt", []), records.setdefault(f"{subset}_tot", [])
        for i, ex in enumerate(rows, start=start):
            caption, caption2, negative = ex.captions
            s1, s2, sn = image[i].tolist()
            weak = (caption, s1) if s1 <= s2 else (caption2, s2)
            itt.append(choice_record(ex.id, ex.ref, [weak[0], negative], [weak[1], sn], verdict["itt"][i],
                                     tied=bool(verdict["itt_tied"][i]), all_captions=list(ex.captions),
                                     image_scores=[s1, s2, sn]))
            t12, t1n, t2n = text[i].tolist()
            tot.append(choice_record(ex.id, ex.ref, [caption2, negative], [t12, max(t1n, t2n)], verdict["tot"][i],
                                     tied=bool(verdict["tot_tied"][i]), all_captions=list(ex.captions),
                                     text_scores=[t12, t1n, t2n]))
