"""Winoground: two images, two captions with the same words; text, image and group scores, overall and per tag."""

from __future__ import annotations

import torch

from lit_compclip.metrics import winoground_scores
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, encode_images,
                                      encode_texts, field, read_jsonl)


class Winoground:
    """`text`, `image`, `group`, the same as `<collapsed_tag>/text` etc. (tag lowercased), `ties` and `n`.

    `ties` counts examples where any comparison the scores use is an exact tie (the strict rule counts it wrong).
    Images are `<images>/<image_0>.png`, as in the official release."""

    def __init__(self, examples: str, images: str, batch_size: int = 256, limit: int | None = None):
        check_common("winoground", batch_size, limit)
        self.batch_size = batch_size
        path = check_path(examples, "examples", "winoground")
        image_dir = check_path(images, "images", "winoground", is_dir=True)
        lines = read_jsonl(path)
        if not lines:
            raise ValueError(f"{path}: holds no examples")
        # list of ((image 0, image 1), (caption 0, caption 1), tag, id)
        self.examples = []
        for lineno, record in lines[:limit]:
            where = f"{path} line {lineno}"
            refs = tuple(ImageRef(image_dir / f"{field(record, f'image_{i}', str, where)}.png", None, where)
                         for i in (0, 1))
            captions = tuple(field(record, f"caption_{c}", str, where) for c in (0, 1))
            tag = field(record, "collapsed_tag", str, where).strip().lower().replace(" ", "_")
            if not tag:
                raise ValueError(f"{where} field 'collapsed_tag' is empty")
            self.examples.append((refs, captions, tag, str(record.get("id", lineno))))
        check_images_exist([ref for ex in self.examples for ref in ex[0]], "winoground")

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        n = len(self.examples)
        img = encode_images(encoder, [ref for ex in self.examples for ref in ex[0]], self.batch_size)
        txt = encode_texts(encoder, [c for ex in self.examples for c in ex[1]], self.batch_size)
        img, txt = img.view(n, 2, -1), txt.view(n, 2, -1)  # (N, 2, D): [:, 0] is image/caption 0
        s = (txt[:, :, None, :] * img[:, None, :, :]).sum(-1)  # (N, 2, 2): s[n, c, i] = sim(caption c, image i)
        scores = winoground_scores(s)
        out = {k: scores[k].float().mean().item() for k in ("text", "image", "group")}
        if records is not None:
            # One record per example, under "group": image 0 with its caption first, plus
            # matrix[c][i] = sim(caption c, image i).
            records.setdefault("group", []).extend(
                {"id": key, "image": str(refs[0].path), "images": [str(r.path) for r in refs],
                 "captions": list(caps), "scores": [float(s[i, 0, 0]), float(s[i, 1, 0])],
                 "matrix": s[i].tolist(), "correct": bool(scores["group"][i]), "text": bool(scores["text"][i]),
                 "image_score": bool(scores["image"][i]), "group_tag": tag}
                for i, (refs, caps, tag, key) in enumerate(self.examples))
        tags = [ex[2] for ex in self.examples]
        for tag in dict.fromkeys(tags):
            rows = torch.tensor([t == tag for t in tags])
            for k in ("text", "image", "group"):
                out[f"{tag}/{k}"] = scores[k][rows].float().mean().item()
        out["ties"] = float(scores["tied"].sum())
        out["n"] = float(n)
        return out
