"""Raw samples to training batches: the image checked and decoded, a caption picked (and hard negatives made), the
augmentation seeded by the sample alone, and each batch carrying the skips met since the previous one.
WebDataset pipeline stages; no Lightning."""

from __future__ import annotations

import io
import json
import random
from typing import Callable

import torch
import webdataset as wds
from PIL import Image

from lit_compclip.data.captions import CaptionPicker
from lit_compclip.data.negatives import NegativeMaker
from lit_compclip.data.skips import SKIPS_ONLY, SkipLog, describe
from lit_compclip.data.stream import PADDING, fast_forward_share
from lit_compclip.data.passes import PassSeeded, UsableWatch

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class Decode(PassSeeded):
    """Raw sample -> {"image" (PIL, checked), "seed" (of its augmentation), "caption", "key"} (+ "negatives");
    undecodable or captionless samples are counted and dropped."""

    def __init__(self, picker: CaptionPicker, skips: SkipLog, seed: int, negatives: NegativeMaker | None = None,
                 later: tuple[int, CaptionPicker] | None = None, usable: UsableWatch | None = None,
                 jpeg_draft: int | None = None):
        super().__init__(seed)
        self.picker, self.skips, self.negatives, self.usable = picker, skips, negatives, usable
        self.later = later  # (first 0-based epoch, its picker): data.later_caption_fields
        self.jpeg_draft = jpeg_draft  # data.jpeg_draft: a JPEG decoded at 1/2, 1/4 or 1/8 scale, >= this many px

    def run(self, src):
        rng, negative_rng, augment_rng = (self.rng_for(tag) for tag in ("caption", "negatives", "augment"))
        for sample in src:
            record = self.decode(sample, rng, negative_rng)
            if self.usable is not None:
                self.usable.decoded(sample, record is not None)
            if record is not None:
                record["seed"] = augment_rng.getrandbits(63)
                yield record

    def decode(self, sample: dict, rng: random.Random, negative_rng: random.Random | None = None) -> dict | None:
        url, key = sample.get("__url__"), sample.get("__key__")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            files = sorted(k for k in sample if not k.startswith("__"))
            return self.skips.skip("no_image", url, key, f"no {'/'.join(IMAGE_EXTS)} file, has {files}")
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as exn:
                return self.skips.skip("bad_json", url, key, describe(exn))
            if not isinstance(meta, dict):
                return self.skips.skip("bad_json", url, key, f"expected a JSON object, got {type(meta).__name__}")
        picker = self.later[1] if self.later and self.epoch >= self.later[0] else self.picker
        caption = picker({"txt": sample.get("txt"), "json": meta}, rng)
        if caption is None:
            return self.skips.skip("no_caption", url, key, f"none of {list(picker.caption_fields)} present")
        try:
            image = open_image(sample[ext], self.jpeg_draft)
        except Exception as exn:  # PIL raises several types for corrupt or truncated files
            return self.skips.skip("bad_image", url, key, describe(exn))
        record = {"image": image, "caption": caption, "key": key}
        if self.negatives is not None:
            record["negatives"] = self.negatives(meta, caption, negative_rng, key, url)
        return record


def open_image(data: bytes, draft: int | None = None) -> Image.Image:
    """Image bytes as training decodes them, in RGB; with `draft` (data.jpeg_draft), a JPEG decoded by Pillow at 1/2,
    1/4 or 1/8 scale while both sides stay >= `draft` px (a no-op for other formats and for small images)."""
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft("RGB", (draft, draft))
    return image.convert("RGB")


def transform_seeded(transform: Callable, image: Image.Image, seed: int) -> torch.Tensor:
    """`transform(image)` with Python's and torch's CPU random state seeded by `seed` and restored afterwards, so an
    augmentation depends on its sample alone: a skipped sample need not be transformed, a resumed stream augments
    as the uninterrupted one did, and the training process's own random state is left untouched."""
    state = random.getstate()
    random.seed(seed)  # timm's crops draw from `random`, torchvision's from torch
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return transform(image)
    finally:
        random.setstate(state)


class Collate(wds.PipelineStage):
    """Lists of records -> batch dicts (images transformed here), each reporting by reason the skips this worker met
    since its previous batch, up to the next batch's records; `fast_forward` = k makes the next pass continue at
    global batch k (see stream.fast_forward_share).

    Reading one batch ahead gives a worker's last batch the skips met after it (the partial batch training drops,
    broken samples at a shard's end); a worker that made no batch at all reports its skips in a SKIPS_ONLY marker,
    which the StreamLoader adds to the next batch. So every skip reaches the module exactly once.

    With hard negatives: `negatives` is every record's list flattened (any image's negative is a negative for every
    image), and `no_negative` counts the records that got none."""

    def __init__(self, skips: SkipLog, transform: Callable):
        self.skips, self.transform, self.fast_forward = skips, transform, 0

    def run(self, src):
        info = torch.utils.data.get_worker_info()
        skip, pad = fast_forward_share(self.fast_forward, *((info.id, info.num_workers) if info else (0, 1)))
        if pad:
            yield {PADDING: True}
        src = iter(src)
        records = next(src, None)
        made = 0
        while records is not None:
            following = next(src, None)  # read ahead, so the skips met reading it are this batch's if it is the last
            if skip:  # decoded and checked (so later draws and skips stay the same), never transformed
                skip -= 1
                self.skips.take()
            else:
                yield self.collate(records)
            made += 1
            records = following
        left = self.skips.take()  # only where no batch came: the last one took the rest
        if left["skipped"]:
            assert made == 0, left
            yield {SKIPS_ONLY: True, **left}

    def collate(self, records: list[dict]) -> dict:
        images = [transform_seeded(self.transform, r["image"], r["seed"]) for r in records]
        batch = {"image": torch.stack(images),  # (B, 3, H, W)
                 "caption": [r["caption"] for r in records],
                 "key": [r["key"] for r in records],
                 **self.skips.take()}  # skipped: reason -> count, and their log lines
        if "negatives" in records[0]:
            batch["negatives"] = [n for r in records for n in r["negatives"]]
            batch["no_negative"] = sum(not r["negatives"] for r in records)
        return batch
