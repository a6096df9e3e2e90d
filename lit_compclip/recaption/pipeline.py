"""Recaption tar shards: original members copied byte for byte, KEY.json gains `recaption`; atomic and resumable."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from lit_compclip.recaption.base import Outcome, Request
from lit_compclip.recaption.prompt import placeholder, render
from lit_compclip.shards import expand_shards, is_remote

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # as the data module reads them
PARTIAL = ".partial"  # suffix of a shard being written; renamed away only when the shard is complete
REASON_CHARS = 120  # failure reasons are grouped by their text, cut to this length


class InputError(Exception):
    """An input shard that cannot be read to its end."""


def input_shards(spec: str) -> list[str]:
    """Local shard paths of `spec` (the specs training reads, see lit_compclip.shards), stricter: remote URLs are
    refused (members are read and written with `tarfile`) and so is any missing shard."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"input shard spec {spec!r} is empty; give a folder, a brace pattern or paths joined with '::'")
    for part in spec.split("::"):
        if is_remote(part.strip()):
            raise ValueError(f"input shard spec {part!r} is remote; recaption reads local shards (copy them first)")
    paths = expand_shards(spec)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # training tolerates (and counts) missing shards; a recaption run must not skip any
        raise FileNotFoundError(f"input shard spec {spec!r}: {len(missing)} of {len(paths)} shard(s) missing, "
                                f"e.g. {missing[0]!r}")
    names = Counter(os.path.basename(p) for p in paths)
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        raise ValueError(f"input shards share the file name {twice[0]!r}; output shards keep input names, so each "
                         f"name must be unique")
    return paths


def worker_shards(paths: list[str], shard_index: int, num_shards: int) -> list[str]:
    """Shard j goes to worker j % num_shards: a job array splits the work with no coordination."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= --shard-index < --num-shards, got --shard-index {shard_index} "
                         f"--num-shards {num_shards}")
    return paths[shard_index::num_shards]


def split_name(name: str) -> tuple[str, str] | None:
    """'dir/000001.jpg' -> ('dir/000001', 'jpg'): the key ends at the first dot of the base name, as webdataset's."""
    head, _, base = name.rpartition("/")
    if "." not in base.strip("."):
        return None
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext


def read_units(path: str, with_data: bool = True) -> Iterator[tuple[str | None, list[tuple[tarfile.TarInfo, bytes]]]]:
    """(key, [(member, bytes)]) per sample (consecutive files with one key), in order; (None, [...]) for a member
    that belongs to no sample (a folder, a name without extension), which is copied through as it is."""
    try:
        with tarfile.open(path, "r:") as tar:
            key, group = None, []
            for info in tar:
                parts = split_name(info.name) if info.isfile() else None
                if group and (parts is None or parts[0] != key):
                    yield key, group
                    group = []
                data = tar.extractfile(info).read() if with_data and info.isfile() else b""
                if parts is None:
                    yield None, [(info, data)]
                    continue
                key = parts[0]
                group.append((info, data))
            if group:
                yield key, group
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise InputError(f"{path}: {type(exn).__name__}: {exn}") from None


def count_samples(path: str) -> int:
    return sum(1 for key, _ in read_units(path, with_data=False) if key is not None)


@dataclass
class Stats:
    samples: int = 0
    recaptioned: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> samples
    tokens: int | None = None  # None while no backend answer reported a count
    shards_done: int = 0
    shards_finished_before: int = 0  # skipped: complete output from an earlier run
    shards_redone: list = field(default_factory=list)  # output present but its sample count was wrong
    bad_shards: list = field(default_factory=list)  # "path: reason" for inputs that could not be read to the end
    seconds: float = 0.0

    def fail(self, reason: str) -> None:
        self.failures[reason[:REASON_CHARS]] += 1

    def summary(self) -> dict:
        secs = max(self.seconds, 1e-9)
        n_fail = sum(self.failures.values())
        return {"samples": self.samples, "recaptioned": self.recaptioned, "failed": n_fail,
                "failure_rate": n_fail / self.samples if self.samples else 0.0,
                "failures": dict(self.failures.most_common()), "shards_done": self.shards_done,
                "shards_finished_before": self.shards_finished_before, "shards_redone": self.shards_redone,
                "bad_shards": self.bad_shards, "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / secs, 2),
                "tokens": self.tokens, "tokens_per_s": None if self.tokens is None else round(self.tokens / secs, 2)}


@dataclass
class Job:
    backend: object  # a recaption.base.Backend
    fields: list[str]  # "txt" = KEY.txt, other names = KEY.json fields
    template: str
    provenance: dict  # written into every KEY.json as recaption_provenance
    chunk: int = 64  # requests per backend.caption() call


@dataclass
class _Sample:
    key: str
    members: list  # [(TarInfo, bytes)]
    meta: dict | None  # parsed KEY.json ({} when none); None when it is unreadable (the sample is then copied as is)
    request: Request | None = None
    error: str | None = None


def prepare(key: str, members: list, job: Job) -> _Sample:
    """Parse one sample and build its request, or say why it cannot have one."""
    by_ext = {split_name(info.name)[1].lower(): data for info, data in members}
    meta = {}
    if "json" in by_ext:
        try:
            meta = json.loads(by_ext["json"])
        except (ValueError, UnicodeDecodeError) as exn:
            return _Sample(key, members, None, error=f"bad KEY.json: {exn}")
        if not isinstance(meta, dict):
            return _Sample(key, members, None, error=f"bad KEY.json: expected an object, got {type(meta).__name__}")
    ext = next((e for e in IMAGE_EXTS if e in by_ext), None)
    if ext is None:
        return _Sample(key, members, meta, error=f"no image file ({'/'.join(IMAGE_EXTS)}); has {sorted(by_ext)}")
    values = {}
    for name in job.fields:
        if name == "txt":
            value = by_ext["txt"].decode("utf-8", errors="replace") if "txt" in by_ext else ""
        else:
            value = meta.get(name)
            value = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        values[placeholder(name)] = value.strip()
    request = Request(key, by_ext[ext], ext, render(job.template, values), values, meta)
    return _Sample(key, members, meta, request)


def annotate(sample: _Sample, outcome: Outcome | None, job: Job) -> dict:
    """The new KEY.json content: original fields plus recaption (or recaption_error) and the provenance."""
    meta = dict(sample.meta)
    if "recaption" in meta:  # a recaption already in the input is kept, under another name
        meta["recaption_previous"] = meta.pop("recaption")
    meta.pop("recaption_error", None)
    if outcome is not None and outcome.text:
        meta["recaption"] = outcome.text
    else:
        meta["recaption_error"] = sample.error or (outcome.error if outcome else None) or "no answer"
    meta["recaption_provenance"] = job.provenance
    return meta


def _write_sample(out: tarfile.TarFile, sample: _Sample, meta: dict | None) -> None:
    """Every member as read; KEY.json replaced in place (keeping its member metadata) or appended when absent."""
    new = None if meta is None else json.dumps(meta, ensure_ascii=False).encode("utf-8")
    wrote_json = False
    for info, data in sample.members:
        if new is not None and split_name(info.name)[1].lower() == "json" and not wrote_json:
            info = copy.copy(info)
            info.size, data, wrote_json = len(new), new, True
        out.addfile(info, io.BytesIO(data))
    if new is not None and not wrote_json:  # metadata of the sample's first member: deterministic across runs
        info = copy.copy(sample.members[0][0])
        info.name, info.size = f"{sample.key}.json", len(new)
        out.addfile(info, io.BytesIO(new))


def _flush(out: tarfile.TarFile, pending: list[_Sample], job: Job, stats: Stats) -> None:
    requests = [s.request for s in pending if s.request is not None]
    outcomes = job.backend.caption(requests) if requests else []
    if len(outcomes) != len(requests):
        raise RuntimeError(f"backend {job.backend.name!r} returned {len(outcomes)} outcomes for {len(requests)} requests")
    answers = iter(outcomes)
    for sample in pending:
        outcome = next(answers) if sample.request is not None else None
        if outcome is not None and not (outcome.text or "").strip():
            outcome = Outcome(None, outcome.error or "empty answer", outcome.tokens)
        if outcome is not None and outcome.tokens is not None:
            stats.tokens = (stats.tokens or 0) + outcome.tokens
        meta = annotate(sample, outcome, job) if sample.meta is not None else None
        if meta is not None and "recaption" in meta:
            stats.recaptioned += 1
        else:
            reason = meta["recaption_error"] if meta is not None else sample.error
            stats.fail(reason)
            log.debug("%s: %s", sample.key, reason)
        stats.samples += 1
        _write_sample(out, sample, meta)
    pending.clear()


def recaption_shard(src: str, dst: str, job: Job, stats: Stats, on_samples=lambda n: None) -> None:
    """Write src's recaptioned copy to dst + PARTIAL, then rename it to dst; an unreadable src raises InputError."""
    tmp = dst + PARTIAL
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as out:
            pending: list[_Sample] = []
            for key, members in read_units(src):
                if key is None:  # not a sample: copied in its place
                    _flush(out, pending, job, stats)
                    out.addfile(members[0][0], io.BytesIO(members[0][1]) if members[0][0].isfile() else None)
                    continue
                pending.append(prepare(key, members, job))
                if sum(s.request is not None for s in pending) >= job.chunk:
                    before = stats.samples
                    _flush(out, pending, job, stats)
                    on_samples(stats.samples - before)
            before = stats.samples
            _flush(out, pending, job, stats)
            on_samples(stats.samples - before)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _finished(src: str, dst: str, stats: Stats) -> bool:
    """Whether dst is a complete output of src (same sample count); a wrong one is logged and redone."""
    if not os.path.exists(dst):
        return False
    try:
        n_in = count_samples(src)
    except InputError:
        return False  # redone, and reported as a bad shard there
    try:
        n_out = count_samples(dst)
    except InputError as exn:
        n_out = f"unreadable ({exn})"
    if n_out == n_in:
        return True
    log.warning("%s: output has %s samples, input %s has %d; redoing it", dst, n_out, src, n_in)
    stats.shards_redone.append(os.path.basename(dst))
    return False


def run(shards: list[str], out_dir: str, job: Job, overwrite: bool = False, progress: bool | None = None) -> Stats:
    """Recaption `shards` into out_dir (same file names); finished outputs are skipped unless overwrite."""
    os.makedirs(out_dir, exist_ok=True)
    out_real = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(s)) == out_real for s in shards):
        raise ValueError(f"output folder {out_dir!r} holds input shards; write the recaptioned shards elsewhere")
    stats, start = Stats(), time.perf_counter()
    tty = sys.stderr.isatty() if progress is None else progress
    bar = None
    if tty:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="sample", dynamic_ncols=True, desc="recaption")
    for i, src in enumerate(shards):
        dst = os.path.join(out_dir, os.path.basename(src))
        if os.path.exists(dst + PARTIAL):
            log.info("%s: redoing the partial shard an interrupted run left", dst)
            os.remove(dst + PARTIAL)
        if not overwrite and _finished(src, dst, stats):
            stats.shards_finished_before += 1
            continue
        if overwrite and os.path.exists(dst):
            log.info("%s: overwriting (--overwrite)", dst)
        before, t0 = stats.samples, time.perf_counter()
        try:
            recaption_shard(src, dst, job, stats, bar.update if bar is not None else lambda n: None)
        except InputError as exn:
            if os.path.exists(dst + PARTIAL):
                os.remove(dst + PARTIAL)
            stats.bad_shards.append(str(exn))
            log.error("skipping unreadable input shard %s", exn)
            continue
        stats.shards_done += 1
        stats.seconds = time.perf_counter() - start
        done, left = stats.shards_done, len(shards) - i - 1
        rate = stats.samples / max(stats.seconds, 1e-9)
        if bar is not None:  # the total is an estimate: shards left times the mean shard size so far
            bar.total = stats.samples + round(left * stats.samples / done)
            bar.refresh()
        else:
            eta = left * stats.samples / done / rate if rate else 0.0
            log.info("%s: %d samples in %.1f s; %d/%d shards, %.1f samples/s, ETA %.0f s", os.path.basename(src),
                     stats.samples - before, time.perf_counter() - t0, i + 1, len(shards), rate, eta)
    if bar is not None:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
