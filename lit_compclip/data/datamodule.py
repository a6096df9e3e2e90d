"""WebDataset LightningDataModule: image-text pairs streamed from img2dataset shards, bad samples skipped and counted."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import random
import re
from collections import Counter
from typing import Callable

import lightning
import torch
import webdataset as wds
from PIL import Image

from lit_compclip.negatives import NegativeMaker
from lit_compclip.shards import expand_shards

from .captions import CaptionPicker
from .stream import PADDING, SKIP_NOTES, SKIPS_ONLY, StreamLoader, fast_forward_share
from .tars import CutShard, cut_shards, listed_samples, tar_members

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_LOG_LINES_PER_REASON = 10  # per worker, then one "counted only" line
# Why a sample (or a shard's rest) is dropped: the keys of every batch's `skipped` and of data_skips.json.
SKIP_REASONS = ("bad_image", "bad_json", "no_caption", "no_image", "truncated_shard", "unreadable_shard")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own files in a shard (e.g. __index__), never sample files
_READ = "__read__"  # a raw sample's read of its shard (resampled streams: _UsableWatch)


def _worker_tag() -> str:
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return f"rank {rank}/{world} worker {worker}/{workers}"


class _SkipLog:
    """Per-worker skip counts by reason, and their log lines; `take()` hands what the next batch reports: `skipped`
    (reason -> count) and its lines, which the StreamLoader logs when that batch is consumed. So the log names
    exactly the skips the record counts: none of a batch the loader read ahead and training never took."""

    def __init__(self, stream: str):
        self.stream = stream
        self.counts: Counter = Counter()
        self.pending: Counter = Counter()
        self.notes: list[str] = []

    def skip(self, reason: str, url, key, detail) -> None:
        """Count one skip and note its line; returns None so a stage can `return skips.skip(...)` to drop the
        sample."""
        assert reason in SKIP_REASONS, reason
        self.counts[reason] += 1
        self.pending[reason] += 1
        n = self.counts[reason]
        if n <= _LOG_LINES_PER_REASON:
            what = f"sample {key!r}" if key is not None else "shard"
            so_far = ", ".join(f"{r}={c}" for r, c in sorted(self.counts.items()))
            self.notes.append(f"{self.stream} data, {_worker_tag()}: skipped {what} of {url}: {reason} ({detail}); "
                              f"this worker's skips so far: {so_far}")
        elif n == _LOG_LINES_PER_REASON + 1:
            self.notes.append(f"{self.stream} data, {_worker_tag()}: further {reason!r} skips counted only")

    def take(self) -> dict:
        """{"skipped": reason -> count, SKIP_NOTES: log lines} since the last take."""
        taken = {"skipped": dict(self.pending), SKIP_NOTES: self.notes}
        self.pending, self.notes = Counter(), []
        return taken


def _describe(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"


class _UsableWatch:
    """Whether a resampled worker has proven that its shards hold no usable sample, so that its endless stream ends
    (and the loader says no batch came out) instead of waiting forever for a batch: every shard read through since
    the last usable sample, and each of those reads' samples decoded and skipped. The worker's stages share it: reads
    are numbered as they start, and a read settles only once its last sample was decoded (the shuffle buffer may hold
    one for long); a usable sample starts a new generation, in which only reads begun since then count."""

    def __init__(self, urls: list[str]):
        self.urls = set(urls)
        self.generation, self.started = 0, 0
        self.dry: set[str] = set()  # shards read through, in this generation, without a usable sample
        self.reads: dict[int, list] = {}  # read -> [url, generation it began in, samples not yet decoded, ended]

    def start(self, url: str) -> int:
        self.started += 1
        self.reads[self.started] = [url, self.generation, 0, False]
        return self.started

    def add(self, read: int, sample: dict) -> None:
        sample[_READ] = read
        self.reads[read][2] += 1

    def end(self, read: int) -> None:
        self.reads[read][3] = True
        self._settle(read)

    def decoded(self, sample: dict, usable: bool) -> None:
        if usable:
            self.generation += 1
            self.dry.clear()
        read = sample.get(_READ)
        if read in self.reads:
            self.reads[read][2] -= 1
            self._settle(read)

    def _settle(self, read: int) -> None:
        url, generation, left, ended = self.reads[read]
        if ended and left == 0:
            del self.reads[read]
            if generation == self.generation:
                self.dry.add(url)

    @property
    def barren(self) -> bool:
        return self.dry >= self.urls


class _ReadShards(wds.PipelineStage):
    """{url} -> raw samples; a shard that fails to open or read is counted, not fatal, and so is one cut short (which
    Python's tar reader would take for a shorter shard): what was read before the cut or the failure stays."""

    def __init__(self, skips: _SkipLog, usable: _UsableWatch | None = None):
        self.skips, self.usable = skips, usable

    def files(self, url: str):
        keys = set()
        try:
            stream = wds.gopen(url)
            try:
                for name, data in tar_members(stream):
                    if not _META.match(name):
                        keys.add(wds.tariterators.base_plus_ext(name)[0])
                        yield {"fname": name, "data": data, "__url__": url}
            finally:
                with contextlib.suppress(Exception):  # a pipe's exit status after its tar was read is no loss
                    stream.close()
        except CutShard as exn:
            listed, read = listed_samples(url), len(keys - {None})
            lost = (f"{listed - read} lost of the {listed} its _stats.json lists" if listed is not None and listed >= read
                    else "how many were lost is unknown (no img2dataset _stats.json beside it)")
            self.skips.skip("truncated_shard", url, None, f"cut short: {exn}; {read} samples read, {lost}")
        except Exception as exn:  # missing or unreadable
            self.skips.skip("unreadable_shard", url, None, _describe(exn))
        yield {}  # webdataset's end-of-shard marker flushes the sample read so far instead of losing it

    def run(self, src):
        for shard in src:
            read = self.usable.start(shard["url"]) if self.usable is not None else None
            try:
                for sample in wds.tariterators.group_by_keys(self.files(shard["url"])):
                    if read is not None:
                        self.usable.add(read, sample)
                    yield sample
            except Exception as exn:  # e.g. a duplicate file name inside the tar
                self.skips.skip("unreadable_shard", shard["url"], None, _describe(exn))
            finally:
                if read is not None:
                    self.usable.end(read)


class _RankShare(wds.PipelineStage):
    """Every `world`-th shard from the `rank`-th: wds.split_by_node's split, with the rank the trainer gives (a loader
    worker started by spawn or forkserver sees no process group, and webdataset would then give every rank all)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def run(self, src):
        yield from itertools.islice(src, self.rank, None, self.world)


class _PassSeeded(wds.PipelineStage):
    """A stage whose randomness is seeded by (seed, epoch, repeat, rank, worker): reproducible, different per pass and
    worker, and the same again when a run resumes (the stream's loader sets the pass before starting its workers)."""

    def __init__(self, seed: int):
        self.seed, self.pass_key, self.epoch = seed, "0/0", 0

    def set_pass(self, epoch: int, repeat: int) -> None:
        self.pass_key, self.epoch = f"{epoch}/{repeat}", epoch

    def rng_for(self, tag: str, per_worker: bool = True) -> random.Random:
        """One random stream of the current pass (so one consumer's draws never shift another's)."""
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        where = f"/{rank}/{worker}" if per_worker else ""
        return random.Random(f"{tag}/{self.seed}/{self.pass_key}{where}")  # str seeds are stable


class _ShardList(_PassSeeded):
    """The shard URLs, in a per-pass order that every rank and worker agrees on (so splitting them partitions)."""

    def __init__(self, urls: list[str], shuffle: bool, seed: int):
        super().__init__(seed)
        self.urls, self.shuffle = list(urls), shuffle

    def run(self):
        urls = list(self.urls)
        if self.shuffle:
            self.rng_for("shards", per_worker=False).shuffle(urls)
        for url in urls:
            yield {"url": url}


class _ResampledShards(_PassSeeded):
    """Shards drawn with replacement, per rank and worker, until `usable` proves they hold no usable sample.
    (webdataset's ResampledShards counts epochs inside each worker, which a restart resets; here the pass comes from
    the loader.)"""

    def __init__(self, urls: list[str], seed: int, usable: _UsableWatch):
        super().__init__(seed)
        self.urls, self.usable = list(urls), usable

    def run(self):
        rng = self.rng_for("shards")
        while not self.usable.barren:
            yield {"url": rng.choice(self.urls)}


class _Decode(_PassSeeded):
    """Raw sample -> {"image" (PIL, checked), "seed" (of its augmentation), "caption", "key"} (+ "negatives");
    undecodable or captionless samples are counted and dropped."""

    def __init__(self, picker: CaptionPicker, skips: _SkipLog, seed: int, negatives: NegativeMaker | None = None,
                 later: tuple[int, CaptionPicker] | None = None, usable: _UsableWatch | None = None):
        super().__init__(seed)
        self.picker, self.skips, self.negatives, self.usable = picker, skips, negatives, usable
        self.later = later  # (first 0-based epoch, its picker): data.later_caption_fields

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
                return self.skips.skip("bad_json", url, key, _describe(exn))
            if not isinstance(meta, dict):
                return self.skips.skip("bad_json", url, key, f"expected a JSON object, got {type(meta).__name__}")
        picker = self.later[1] if self.later and self.epoch >= self.later[0] else self.picker
        caption = picker({"txt": sample.get("txt"), "json": meta}, rng)
        if caption is None:
            return self.skips.skip("no_caption", url, key, f"none of {list(picker.caption_fields)} present")
        try:
            image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
        except Exception as exn:  # PIL raises several types for corrupt or truncated files
            return self.skips.skip("bad_image", url, key, _describe(exn))
        record = {"image": image, "caption": caption, "key": key}
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
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=self.rng_for("shuffle"))(iter(src))


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


class _Collate(wds.PipelineStage):
    """Lists of records -> batch dicts (images transformed here), each reporting by reason the skips this worker met
    since its previous batch, up to the next batch's records; `fast_forward` = k makes the next pass continue at
    global batch k (see stream.fast_forward_share).

    Reading one batch ahead gives a worker's last batch the skips met after it (the partial batch training drops,
    broken samples at a shard's end); a worker that made no batch at all reports its skips in a SKIPS_ONLY marker,
    which the StreamLoader adds to the next batch. So every skip reaches the module exactly once.

    With hard negatives: `negatives` is every record's list flattened (any image's negative is a negative for every
    image), and `no_negative` counts the records that got none."""

    def __init__(self, skips: _SkipLog, transform: Callable):
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


class WebDataModule(lightning.LightningDataModule):
    """Train/val image-text streams from WebDataset shards, with weighted caption fields and family grouping.

    `hard_negatives` ({"source": None|name in lit_compclip.negatives.SOURCES, "per_sample": int}) adds false
    captions to training samples; validation never gets any."""

    def __init__(self, train_shards: str, val_shards: str | None, caption_fields: dict[str, float],
                 sentence_sample: int, batch_size: int, num_workers: int, shuffle_buffer: int,
                 shard_shuffle: bool, resampled: bool, samples_per_epoch: int | None, group_key: str | None,
                 seed: int, train_transform, eval_transform, hard_negatives: dict | None = None,
                 later_caption_fields: dict[str, float] | None = None, later_epoch: int = 2):
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
        if isinstance(later_epoch, bool) or not isinstance(later_epoch, int) or later_epoch < 2:
            raise ValueError(f"data.later_epoch = {later_epoch!r}: must be an int >= 2 (epochs count from 1)")
        # a curriculum: from epoch `later_epoch` (1-based) on, training reads `later_caption_fields` instead
        self.later = (later_epoch - 1, CaptionPicker(later_caption_fields, sentence_sample)) \
            if later_caption_fields is not None else None
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.shard_shuffle, self.resampled, self.samples_per_epoch = shard_shuffle, resampled, samples_per_epoch
        self.group_key, self.seed = group_key, seed
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None
        self.cut: dict[str, list[dict]] | None = None  # split -> its local shards cut short (tars.cut_shards)

    def process_info(self) -> tuple[int, int]:
        """(global rank, world size) from the attached trainer, else from RANK/WORLD_SIZE or torch.distributed."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return rank, world

    def setup(self, stage: str | None = None) -> None:
        self.train_urls = expand_shards(self.train_shards)
        self.val_urls = expand_shards(self.val_shards) if self.val_shards else None
        if self.cut is None and (self.trainer is None or self.trainer.is_global_zero):  # named once, by one process
            self.cut = {"train": cut_shards(self.train_urls), "val": cut_shards(self.val_urls or [])}
            for split, shards in self.cut.items():
                for shard in shards:
                    listed = shard["samples_listed"]
                    held = f"{shard['samples_lost']} lost of the {listed} its _stats.json lists" \
                        if listed is not None else "how many were lost is unknown (no img2dataset _stats.json beside it)"
                    log.warning("%s data: shard %s is cut short (it ends without its end-of-archive blocks): %d "
                                "samples can be read, %s; each read of it counts as a truncated_shard skip",
                                split, shard["shard"], shard["samples_read"], held)

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

    def _dataloader(self, pipeline, workers: int, persistent: bool) -> torch.utils.data.DataLoader:
        # its own generator: starting workers then draws nothing from the training process's random state (the
        # stages seed themselves), so a resumed run's dropout continues as the uninterrupted run's did
        return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers,
                                           persistent_workers=persistent and workers > 0,
                                           generator=torch.Generator().manual_seed(self.seed))

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
        skips, usable = _SkipLog("train"), None
        if self.resampled:
            # each rank/worker draws its own shards (seeded by seed, epoch, rank, worker), so no splitting
            usable = _UsableWatch(urls)
            shards = [_ResampledShards(urls, self.seed, usable)]
            workers = self.num_workers
        else:
            # one order for every rank (shuffled before splitting), so ranks still partition the shards
            shards = [_ShardList(urls, self.shard_shuffle, self.seed), _RankShare(rank, world), wds.split_by_worker]
            workers = self._workers_for(urls, rank, world, "train")
        grouped = self.group_key is not None
        collate = _Collate(skips, self.train_transform)
        pipeline = wds.DataPipeline(
            *shards,
            _ReadShards(skips, usable),
            # raw samples are shuffled (compressed bytes, ~50x smaller than decoded tensors); a family moves as one
            wds.pipelinefilter(group_units)(self.group_key) if grouped else None,
            _Shuffle(self.shuffle_buffer, self.seed) if self.shuffle_buffer > 0 else None,
            wds.filters.unlisted() if grouped else None,
            _Decode(self.train_picker, skips, self.seed, negatives=self.negatives, later=self.later, usable=usable),
            wds.batched(self.batch_size, collation_fn=None, partial=False),
            collate,
        )
        seeded = [stage for stage in pipeline.pipeline if isinstance(stage, _PassSeeded)]

        def start_pass(epoch: int, repeat: int, skip: int) -> None:
            for stage in seeded:
                stage.set_pass(epoch, repeat)
            collate.fast_forward = skip

        # Workers start afresh each epoch, so they get the epoch's seeds (a persistent worker keeps its first copy).
        # Resampled streams are endless per worker, so a resumed one can skip inside the workers (fast_forward).
        return StreamLoader(self._dataloader(pipeline, workers, persistent=False), num_batches, "train",
                            self.train_shards, self.batch_size, start_pass, fast_forward=self.resampled)

    def val_dataloader(self) -> StreamLoader | list:
        if self.val_shards is None:
            return []
        if self.val_urls is None:
            self.setup("validate")
        urls, (rank, world) = self.val_urls, self.process_info()
        skips = _SkipLog("val")
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls), _RankShare(rank, world), wds.split_by_worker,
            _ReadShards(skips),
            _Decode(self.val_picker, skips, self.seed),
            wds.batched(self.batch_size, collation_fn=None, partial=True),
            _Collate(skips, self.eval_transform),
        )
        workers = self._workers_for(urls, rank, world, "val")
        return StreamLoader(self._dataloader(pipeline, workers, persistent=True), None, "val", self.val_shards,
                            self.batch_size)
