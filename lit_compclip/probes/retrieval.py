"""Image-text retrieval recall@1/5/10 both ways (DOCCI, Karpathy COCO/Flickr, or plain JSON lines)."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_compclip.metrics import recall_at_k
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, encode_images,
                                      encode_texts, field, read_json, read_jsonl)
from lit_compclip.registry import suggest

FORMATS = ("docci", "karpathy", "jsonl")


class Retrieval:
    """`t2i_r1/5/10`, `i2t_r1/5/10` (CLIP_benchmark rules, see metrics.recall_at_k), `n_images`, `n_texts`,
    `truncated_fraction` when the encoder has `count_truncated(texts) -> int`, and `max_tokens` (the truncation
    policy: a caption keeps its first max_tokens tokens) when it has that attribute.

    With `records`, one record per caption under "t2i": its image's score, the best rival images, its rank.

    docci: lines {example_id, split, image_file, description}, keeping `split` (default "test");
    karpathy: a JSON list [{"image", "caption": [..]}]; jsonl: lines {"image", "caption": str | list}.
    Records naming the same image file are merged into one image with all their captions."""

    def __init__(self, annotations: str, images: str, format: str, split: str | None = None,
                 batch_size: int = 64, limit: int | None = None):
        check_common("retrieval", batch_size, limit)
        if format not in FORMATS:
            raise ValueError(f"retrieval probe: unknown format {format!r}{suggest(format, FORMATS)}; "
                             f"choose one of {list(FORMATS)}")
        if split is not None and format != "docci":
            raise ValueError(f"retrieval probe: option 'split' applies only to format 'docci'; got split={split!r} "
                             f"with format {format!r}")
        self.batch_size = batch_size
        path = check_path(annotations, "annotations", "retrieval")
        image_dir = check_path(images, "images", "retrieval", is_dir=True)
        if format == "docci":
            records = self._docci(path, split or "test")
        elif format == "karpathy":
            data = read_json(path)
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of {{'image', 'caption'}} records (karpathy format)")
            records = [(f"{path} record {i}", r) for i, r in enumerate(data)]
        else:
            records = [(f"{path} line {lineno}", r) for lineno, r in read_jsonl(path)]
        if not records:
            raise ValueError(f"{path}: holds no {format} records")
        self.image_refs: list[ImageRef] = []  # distinct images, first-appearance order
        self.texts: list[str] = []
        self.text_to_image: list[int] = []
        self.text_ids: list[str] = []
        index: dict[Path, int] = {}
        for n, (where, record) in enumerate(records[:limit]):
            image_key, text_key = ("image_file", "description") if format == "docci" else ("image", "caption")
            image_path = image_dir / field(record, image_key, str, where)
            captions = field(record, text_key, (str, list), where)
            captions = [captions] if isinstance(captions, str) else captions
            if not captions or not all(isinstance(c, str) for c in captions):
                raise ValueError(f"{where} field {text_key!r} must be a string or a non-empty list of strings")
            if image_path not in index:
                index[image_path] = len(self.image_refs)
                self.image_refs.append(ImageRef(image_path, None, where))
            self.texts += captions
            key = str(record.get("example_id", n)) if format == "docci" else str(n)  # the record's id or index
            self.text_ids += [key if len(captions) == 1 else f"{key}/{j}" for j in range(len(captions))]
            self.text_to_image += [index[image_path]] * len(captions)
        check_images_exist(self.image_refs, "retrieval")

    @staticmethod
    def _docci(path: Path, split: str) -> list[tuple[str, dict]]:
        rows = read_jsonl(path)
        kept, seen = [], set()
        for lineno, record in rows:
            where = f"{path} line {lineno}"
            value = field(record, "split", str, where)
            seen.add(value)
            if value == split:
                kept.append((f"{where} (example_id {record.get('example_id')!r})", record))
        if not kept:
            raise ValueError(f"{path}: no record has split {split!r}{suggest(split, seen)}; splits present: "
                             f"{sorted(seen)}")
        return kept

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        img = encode_images(encoder, self.image_refs, self.batch_size)  # (n_images, D)
        txt = encode_texts(encoder, self.texts, self.batch_size)  # (n_texts, D)
        sim = txt @ img.T  # (n_texts, n_images)
        out = recall_at_k(sim, torch.tensor(self.text_to_image))
        if records is not None:
            records.setdefault("t2i", []).extend(self._t2i_records(sim))
        out["n_images"] = float(len(self.image_refs))
        out["n_texts"] = float(len(self.texts))
        count_truncated = getattr(encoder, "count_truncated", None)
        if callable(count_truncated):
            truncated = sum(int(count_truncated(self.texts[i:i + self.batch_size]))
                            for i in range(0, len(self.texts), self.batch_size))
            out["truncated_fraction"] = truncated / len(self.texts)
        max_tokens = getattr(encoder, "max_tokens", None)
        if max_tokens is not None:  # the policy behind that fraction: each caption keeps its first max_tokens
            out["max_tokens"] = float(max_tokens)
        return out

    def _t2i_records(self, sim: torch.Tensor, rivals: int = 3) -> list[dict]:
        """Per caption: its image's score, the best other images' scores, and its strict rank (ties count against
        it, a NaN score is last), the rule metrics.recall_at_k scores with."""
        targets = torch.tensor(self.text_to_image)
        idx = torch.arange(len(targets))
        own = sim[idx, targets]  # (n_texts,)
        rank = (sim >= own[:, None]).sum(dim=1)  # (n_texts,) 1-based: the own image counts itself
        rank[own.isnan()] = sim.shape[1]
        others = sim.clone()
        others[idx, targets] = float("-inf")  # an image is not its own rival
        best = others.topk(min(rivals, sim.shape[1] - 1), dim=1)  # (n_texts, <= rivals)
        return [{"id": self.text_ids[t], "image": str(self.image_refs[target].path), "captions": [self.texts[t]],
                 "scores": [float(own[t])], "correct": bool(rank[t] == 1), "rank": int(rank[t]),
                 "rival_images": [str(self.image_refs[i].path) for i in best.indices[t].tolist()],
                 "rival_scores": best.values[t].tolist()}
                for t, target in enumerate(self.text_to_image)]
