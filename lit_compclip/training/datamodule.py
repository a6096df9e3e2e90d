"""WebDataset LightningDataModule: image-text pairs streamed from img2dataset shards, bad samples skipped and counted.

Its streams are WebDataset pipelines of stages: data/tars.py reads shards, training/passes.py orders a pass,
training/decode.py makes batches, data/skips.py counts what is dropped, data/stream.py runs the passes as epochs."""

from __future__ import annotations

import logging

import lightning
import torch
import webdataset as wds

from lit_compclip.data.captions import CaptionPicker
from lit_compclip.data.negatives import NegativeMaker
from lit_compclip.data.shards import expand_shards
from lit_compclip.data.skips import SkipLog, cut_note
from lit_compclip.data.stream import StreamLoader
from lit_compclip.data.tars import ReadShards, cut_shards
from lit_compclip.data.decode import Collate, Decode
from lit_compclip.data.passes import (PassSeeded, RankShare, ResampledShards, Shuffle, ShardList, UsableWatch,
                                          group_units)

log = logging.getLogger(__name__)


class WebDataModule(lightning.LightningDataModule):
    """Train/val image-text streams from WebDataset shards, with weighted caption fields and family grouping.

    `hard_negatives` ({"source": None|name in lit_compclip.data.negatives.SOURCES, "per_sample": int}) adds false
    captions to training samples; validation never gets any."""

    def __init__(self, train_shards: str, val_shards: str | None, caption_fields: dict[str, float],
                 sentence_sample: dict[str, int] | None, batch_size: int, num_workers: int, shuffle_buffer: int,
                 shard_shuffle: bool, resampled: bool, samples_per_epoch: int | None, group_key: str | None,
                 seed: int, train_transform, eval_transform, hard_negatives: dict | None = None,
                 later_caption_fields: dict[str, float] | None = None, later_epoch: int = 2,
                 jpeg_draft: int | None = None):
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
        if jpeg_draft is not None and (isinstance(jpeg_draft, bool) or not isinstance(jpeg_draft, int) or jpeg_draft < 1):
            raise ValueError(f"data.jpeg_draft = {jpeg_draft!r}: must be a positive int (pixels) or None")
        self.jpeg_draft = jpeg_draft
        if samples_per_epoch is not None and (not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"data.samples_per_epoch = {samples_per_epoch!r}: must be a positive int or None")
        if resampled and samples_per_epoch is None:
            raise ValueError("data.resampled=true draws shards forever: set data.samples_per_epoch to end an epoch")
        for name, fn in (("train_transform", train_transform), ("eval_transform", eval_transform)):
            if not callable(fn):
                raise ValueError(f"{name} must be a callable PIL.Image -> Tensor(3, H, W), got {type(fn).__name__}")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.train_picker = CaptionPicker(caption_fields, sentence_sample)
        self.val_picker = CaptionPicker(caption_fields)  # validation scores whole captions
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
        self.streams: list[StreamLoader] = []  # every loader handed out, closed at teardown

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
                    log.warning("%s", cut_note(split, shard))

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

    def _dataloader(self, pipeline, workers: int) -> torch.utils.data.DataLoader:
        # Workers start afresh with each pass (no persistent workers): train workers get the epoch's seeds, and a
        # pass's workers end with it, or when teardown closes it. Its own generator: starting workers then draws
        # nothing from the training process's random state (the stages seed themselves), so a resumed run's
        # dropout continues as the uninterrupted run's did.
        return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers,
                                           generator=torch.Generator().manual_seed(self.seed))

    def _stream(self, *args, **kwargs) -> StreamLoader:
        loader = StreamLoader(*args, **kwargs)
        self.streams.append(loader)
        return loader

    def close(self) -> None:
        """Stop the loader workers of passes cut short; Lightning calls it as fit, validate or test ends, or fails."""
        for loader in self.streams:
            loader.close()

    def teardown(self, stage: str) -> None:
        self.close()

    def on_exception(self, exception: BaseException) -> None:
        self.close()

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
        skips, usable = SkipLog("train"), None
        if self.resampled:
            # each rank/worker draws its own shards (seeded by seed, epoch, rank, worker), so no splitting
            usable = UsableWatch(urls)
            shards = [ResampledShards(urls, self.seed, usable)]
            workers = self.num_workers
        else:
            # one order for every rank (shuffled before splitting), so ranks still partition the shards
            shards = [ShardList(urls, self.shard_shuffle, self.seed), RankShare(rank, world), wds.split_by_worker]
            workers = self._workers_for(urls, rank, world, "train")
        grouped = self.group_key is not None
        collate = Collate(skips, self.train_transform)
        pipeline = wds.DataPipeline(
            *shards,
            ReadShards(skips, usable),
            # raw samples are shuffled (compressed bytes, ~50x smaller than decoded tensors); a family moves as one
            wds.pipelinefilter(group_units)(self.group_key) if grouped else None,
            Shuffle(self.shuffle_buffer, self.seed) if self.shuffle_buffer > 0 else None,
            wds.filters.unlisted() if grouped else None,
            Decode(self.train_picker, skips, self.seed, negatives=self.negatives, later=self.later, usable=usable,
                   jpeg_draft=self.jpeg_draft),  # training only: validation decodes at full size
            wds.batched(self.batch_size, collation_fn=None, partial=False),
            collate,
        )
        seeded = [stage for stage in pipeline.pipeline if isinstance(stage, PassSeeded)]

        def start_pass(epoch: int, repeat: int, skip: int) -> None:
            for stage in seeded:
                stage.set_pass(epoch, repeat)
            collate.fast_forward = skip

        # Resampled streams are endless per worker, so a resumed one can skip inside the workers (fast_forward).
        return self._stream(self._dataloader(pipeline, workers), num_batches, "train",
                            self.train_shards, self.batch_size, start_pass, fast_forward=self.resampled)

    def val_dataloader(self) -> StreamLoader | list:
        if self.val_shards is None:
            return []
        if self.val_urls is None:
            self.setup("validate")
        urls, (rank, world) = self.val_urls, self.process_info()
        skips = SkipLog("val")
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls), RankShare(rank, world), wds.split_by_worker,
            ReadShards(skips),
            Decode(self.val_picker, skips, self.seed),
            wds.batched(self.batch_size, collation_fn=None, partial=True),
            Collate(skips, self.eval_transform),
        )
        workers = self._workers_for(urls, rank, world, "val")
        return self._stream(self._dataloader(pipeline, workers), None, "val", self.val_shards,
                            self.batch_size)
