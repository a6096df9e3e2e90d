"""WebDataset LightningDataModule: image-text pairs streamed from img2dataset shards, bad samples skipped and counted."""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections import Counter
from typing import Callable

import lightning
import torch
import webdataset as wds
from PIL import Image

from lit_compclip.negatives import NegativeMaker
from lit_compclip.shards import expand_shards, is_remote

from .captions import CaptionPicker

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_LOG_LINES_PER_REASON = 10  # per worker, then one "counted only" line


def _worker_tag() -> str:
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return f"rank {rank}/{world} worker {worker}/{workers}"


class _SkipLog:
    """Per-worker skip counts by reason; `pending` is what the next batch reports in its `skipped` field."""

    def __init__(self, stream: str):
        self.stream = stream
        self.counts: Counter = Counter()
        self.pending = 0

    def skip(self, reason: str, url, key, detail) -> None:
        """Count and log one skip; returns None so a stage can `return skips.skip(...)` to drop the sample."""
        self.counts[reason] += 1
        self.pending += 1
        n = self.counts[reason]
        if n <= _LOG_LINES_PER_REASON:
            what = f"sample {key!r}" if key is not None else "shard"
            so_far = ", ".join(f"{r}={c}" for r, c in sorted(self.counts.items()))
            log.warning("%s data, %s: skipped %s of %s: %s (%s); skips so far: %s",
                        self.stream, _worker_tag(), what, url, reason, detail, so_far)
        elif n == _LOG_LINES_PER_REASON + 1:
            log.warning("%s data, %s: further %r skips counted only", self.stream, _worker_tag(), reason)

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


def _describe(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"


class _ReadShards(wds.PipelineStage):
    """{url} -> raw samples with webdataset's tar reader; a shard that fails to open or read is counted, not fatal."""

    def __init__(self, skips: _SkipLog):
        self.skips = skips

    def files(self, url: str):
        try:
            yield from wds.tariterators.tar_file_expander(wds.tariterators.url_opener([dict(url=url)]))
        except Exception as exn:  # missing, unreadable or truncated: what was read stays, the rest is dropped
            self.skips.skip("unreadable_shard", url, None, _describe(exn))
            yield {}  # webdataset's end-of-shard marker flushes the sample read so far instead of losing it

    def run(self, src):
        for shard in src:
            try:
                yield from wds.tariterators.group_by_keys(self.files(shard["url"]))
            except Exception as exn:  # e.g. a duplicate file name inside the tar
                self.skips.skip("unreadable_shard", shard["url"], None, _describe(exn))


class _PassSeeded(wds.PipelineStage):
    """A stage whose randomness is seeded by (seed, pass, rank, worker): reproducible, different per pass and worker."""

    def __init__(self, seed: int, advance: bool = True):
        self.seed, self.advance, self.passes = seed, advance, -1

    def next_rng(self, tag: str) -> random.Random:
        if self.advance:
            self.passes += 1
        return self.rng_for(tag)

    def rng_for(self, tag: str) -> random.Random:
        """Another stream of the current pass (so one consumer's draws never shift another's)."""
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        return random.Random(f"{tag}/{self.seed}/{max(self.passes, 0)}/{rank}/{worker}")  # str seeds are stable


class _Decode(_PassSeeded):
    """Raw sample -> {"image", "caption", "key"} (+ "negatives"); undecodable or captionless samples are counted and
    dropped."""

    def __init__(self, picker: CaptionPicker, transform: Callable, skips: _SkipLog, seed: int, advance: bool,
                 negatives: NegativeMaker | None = None):
        super().__init__(seed, advance)
        self.picker, self.transform, self.skips, self.negatives = picker, transform, skips, negatives

    def run(self, src):
        rng = self.next_rng("caption")
        negative_rng = self.rng_for("negatives")
        for sample in src:
            record = self.decode(sample, rng, negative_rng)
            if record is not None:
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
                return self.skips.skip("bad_json", url, key, _describe(exn))
            if not isinstance(meta, dict):
                return self.skips.skip("bad_json", url, key, f"expected a JSON object, got {type(meta).__name__}")
        caption = self.picker({"txt": sample.get("txt"), "json": meta}, rng)
        if caption is None:
            return self.skips.skip("no_caption", url, key, f"none of {list(self.picker.caption_fields)} present")
        try:
            image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
        except Exception as exn:  # PIL raises several types for corrupt or truncated files
            return self.skips.skip("bad_image", url, key, _describe(exn))
        record = {"image": self.transform(image), "caption": caption, "key": key}
        if self.negatives is not None:
            record["negatives"] = self.negatives(meta, caption, negative_rng, key, url)
        return record


def _group_of(sample: dict, group_key: str):
    try:
        meta = json.loads(sample.get("json") or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None  # a unit of its own; the decode stage skips and counts it
    return meta.get(group_key) if isinstance(meta, dict) else None


def group_units(samples, group_key: str):
    """Consecutive raw samples with the same non-None .json[group_key] -> one list (a unit); others are units of one."""
    unit, last = [], None
    for sample in samples:
        group = _group_of(sample, group_key)
        if unit and (group is None or group != last):
            yield unit
            unit = []
        unit.append(sample)
        last = group
    if unit:
        yield unit


class _Shuffle(_PassSeeded):
    """webdataset's shuffle buffer with a per-pass, per-worker seeded rng."""

    def __init__(self, bufsize: int, seed: int):
        super().__init__(seed)
        self.bufsize = bufsize

    def run(self, src):
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=self.next_rng("shuffle"))(iter(src))


class _Collate:
    """List of records -> batch dict, reporting the skips since this worker's previous batch.

    With hard negatives: `negatives` is every record's list flattened (any image's negative is a negative for every
    image), and `no_negative` counts the records that got none."""

    def __init__(self, skips: _SkipLog):
        self.skips = skips

    def __call__(self, records: list[dict]) -> dict:
        batch = {"image": torch.stack([r["image"] for r in records]),  # (B, 3, H, W)
                 "caption": [r["caption"] for r in records],
                 "key": [r["key"] for r in records],
                 "skipped": self.skips.take()}
        if "negatives" in records[0]:
            batch["negatives"] = [n for r in records for n in r["negatives"]]
            batch["no_negative"] = sum(not r["negatives"] for r in records)
        return batch


class StreamLoader:
    """A WebLoader with a known length when the epoch is fixed, and a clear error when nothing comes out."""

    def __init__(self, loader, num_batches: int | None, name: str, spec: str, batch_size: int):
        self.loader, self.num_batches, self.name, self.spec, self.batch_size = \
            loader, num_batches, name, spec, batch_size

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"{self.name} stream length is unknown (set data.samples_per_epoch to fix it)")
        return self.num_batches

    def __iter__(self):
        count = 0
        for batch in self.loader:
            count += 1
            yield batch
        if count == 0:
            raise ValueError(f"no {self.name} batch came out of {self.spec!r}: every shard/sample was skipped or a "
                             f"worker had fewer than batch_size={self.batch_size} good samples (see warnings above)")


class WebDataModule(lightning.LightningDataModule):
    """Train/val image-text streams from WebDataset shards, with weighted caption fields and family grouping.

    `hard_negatives` ({"source": None|name in lit_compclip.negatives.SOURCES, "per_sample": int}) adds false
    captions to training samples; validation never gets any."""

    def __init__(self, train_shards: str, val_shards: str | None, caption_fields: dict[str, float],
                 sentence_sample: int, batch_size: int, num_workers: int, shuffle_buffer: int,
                 shard_shuffle: bool, resampled: bool, samples_per_epoch: int | None, group_key: str | None,
                 seed: int, train_transform, eval_transform, hard_negatives: dict | None = None):
        super().__init__()
        hard = dict(hard_negatives or {})
        if set(hard) - {"source", "per_sample"}:
            raise ValueError(f"data.hard_negatives: unknown option(s) {sorted(set(hard) - {'source', 'per_sample'})};"
                             f" valid: ['per_sample', 'source']")
        # built here so a bad source or count fails at once, not inside a loader worker
        self.negatives = NegativeMaker(hard["source"], hard.get("per_sample", 1)) if hard.get("source") else None
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                 ("shuffle_buffer", shuffle_buffer, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"data.{name} = {value!r}: must be an int >= {low}")
        if samples_per_epoch is not None and (not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"data.samples_per_epoch = {samples_per_epoch!r}: must be a positive int or None")
        if resampled and samples_per_epoch is None:
            raise ValueError("data.resampled=true draws shards forever: set data.samples_per_epoch to end an epoch")
        for name, fn in (("train_transform", train_transform), ("eval_transform", eval_transform)):
            if not callable(fn):
                raise ValueError(f"{name} must be a callable PIL.Image -> Tensor(3, H, W), got {type(fn).__name__}")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.train_picker = CaptionPicker(caption_fields, sentence_sample)
        self.val_picker = CaptionPicker(caption_fields, 0)  # validation scores whole captions
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.shard_shuffle, self.resampled, self.samples_per_epoch = shard_shuffle, resampled, samples_per_epoch
        self.group_key, self.seed = group_key, seed
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None

    def process_info(self) -> tuple[int, int]:
        """(global rank, world size) from the attached trainer, else from RANK/WORLD_SIZE or torch.distributed."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return rank, world

    def setup(self, stage: str | None = None) -> None:
        self.train_urls = expand_shards(self.train_shards)
        self.val_urls = expand_shards(self.val_shards) if self.val_shards else None

    def _workers_for(self, urls: list[str], rank: int, world: int, name: str) -> int:
        # webdataset raises "No samples found" in a worker that gets no shard
        mine = len(urls[rank::world])
        if mine == 0:
            raise ValueError(f"data.{name}_shards has {len(urls)} shard(s) for {world} processes; each process "
                             f"needs at least one")
        if mine < self.num_workers:
            log.info("%s data: %d shard(s) for rank %d, so %d loader workers instead of %d",
                     name, mine, rank, mine, self.num_workers)
        return min(self.num_workers, mine)

    def _loader(self, pipeline, workers: int, num_batches: int | None, name: str, spec: str) -> StreamLoader:
        loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
        if num_batches is not None:
            loader = loader.with_epoch(nbatches=num_batches)  # loader level: counts batches of all workers
        return StreamLoader(loader, num_batches, name, spec, self.batch_size)

    def train_dataloader(self) -> StreamLoader:
        if self.train_urls is None:
            self.setup("fit")
        urls, (rank, world) = self.train_urls, self.process_info()
        if world > 1 and not self.resampled and self.samples_per_epoch is None:
            raise ValueError(f"training on {world} processes needs data.samples_per_epoch so every rank runs the "
                             f"same number of batches (uneven ranks hang DDP)")
        num_batches = None
        if self.samples_per_epoch is not None:
            num_batches = self.samples_per_epoch // world // self.batch_size
            if num_batches == 0:
                raise ValueError(f"data.samples_per_epoch={self.samples_per_epoch} is less than one batch per "
                                 f"process (batch_size={self.batch_size} x {world} processes)")
        skips = _SkipLog("train")
        if self.resampled:
            # each rank/worker draws its own shards (seeded by seed, rank, worker, pass), so no splitting
            shards = [wds.ResampledShards(urls, seed=self.seed, deterministic=True)]
            workers = self.num_workers
        else:
            shuffle = wds.detshuffle(len(urls), len(urls), seed=self.seed) if self.shard_shuffle else None
            # shuffle before splitting: the same permutation on every rank, so ranks still partition the shards
            shards = [wds.SimpleShardList(urls), shuffle, wds.split_by_node, wds.split_by_worker]
            workers = self._workers_for(urls, rank, world, "train")
        grouped = self.group_key is not None
        pipeline = wds.DataPipeline(
            *shards,
            _ReadShards(skips),
            # raw samples are shuffled (compressed bytes, ~50x smaller than decoded tensors); a family moves as one
            wds.pipelinefilter(group_units)(self.group_key) if grouped else None,
            _Shuffle(self.shuffle_buffer, self.seed) if self.shuffle_buffer > 0 else None,
            wds.filters.unlisted() if grouped else None,
            _Decode(self.train_picker, self.train_transform, skips, self.seed, advance=True,
                    negatives=self.negatives),
            wds.batched(self.batch_size, collation_fn=_Collate(skips), partial=False),
        )
        return self._loader(pipeline, workers, num_batches, "train", self.train_shards)

    def val_dataloader(self) -> StreamLoader | list:
        if self.val_shards is None:
            return []
        if self.val_urls is None:
            self.setup("validate")
        urls, (rank, world) = self.val_urls, self.process_info()
        skips = _SkipLog("val")
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
            _ReadShards(skips),
            _Decode(self.val_picker, self.eval_transform, skips, self.seed, advance=False),
            wds.batched(self.batch_size, collation_fn=_Collate(skips), partial=True),
        )
        return self._loader(pipeline, self._workers_for(urls, rank, world, "val"), None, "val", self.val_shards)
