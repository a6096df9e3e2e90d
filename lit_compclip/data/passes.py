"""Which samples a pass over the shards reads, and in which order: the shard list (shuffled per pass, split between
ranks), resampled shards, family units and the shuffle buffer, each seeded by (seed, epoch, repeat, rank, worker), so
a resumed run reads what the uninterrupted one read. WebDataset pipeline stages; no Lightning."""

from __future__ import annotations

import itertools
import json
import random

import webdataset as wds

READ = "__read__"  # a raw sample's read of its shard (resampled streams: UsableWatch)


class UsableWatch:
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
        sample[READ] = read
        self.reads[read][2] += 1

    def end(self, read: int) -> None:
        self.reads[read][3] = True
        self._settle(read)

    def decoded(self, sample: dict, usable: bool) -> None:
        if usable:
            self.generation += 1
            self.dry.clear()
        read = sample.get(READ)
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


class RankShare(wds.PipelineStage):
    """Every `world`-th shard from the `rank`-th: wds.split_by_node's split, with the rank the trainer gives (a loader
    worker started by spawn or forkserver sees no process group, and webdataset would then give every rank all)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def run(self, src):
        yield from itertools.islice(src, self.rank, None, self.world)


class PassSeeded(wds.PipelineStage):
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


class ShardList(PassSeeded):
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


class ResampledShards(PassSeeded):
    """Shards drawn with replacement, per rank and worker, until `usable` proves they hold no usable sample.
    (webdataset's ResampledShards counts epochs inside each worker, which a restart resets; here the pass comes from
    the loader.)"""

    def __init__(self, urls: list[str], seed: int, usable: UsableWatch):
        super().__init__(seed)
        self.urls, self.usable = list(urls), usable

    def run(self):
        rng = self.rng_for("shards")
        while not self.usable.barren:
            yield {"url": rng.choice(self.urls)}


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


class Shuffle(PassSeeded):
    """webdataset's shuffle buffer with a per-pass, per-worker seeded rng."""

    def __init__(self, bufsize: int, seed: int):
        super().__init__(seed)
        self.bufsize = bufsize

    def run(self, src):
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=self.rng_for("shuffle"))(iter(src))
