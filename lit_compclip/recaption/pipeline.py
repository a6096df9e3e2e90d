"""Recaption tar shards: original members copied byte for byte, KEY.json gains `recaption`; atomic and resumable."""

from __future__ import annotations

import contextlib
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

from lit_compclip.cli_args import missing_folders
from lit_compclip.recaption.base import Outcome, Request
from lit_compclip.recaption.prompt import placeholder, render
from lit_compclip.recaption.tars import (InputError, count_samples, describe, job_identity, output_record, read_units,
                                         split_name)
from lit_compclip.data.shards import expand_shards, is_remote

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # as the data module reads them
PARTIAL = ".partial"  # suffix of a shard being written; renamed away only when it is complete and within the limit
REASON_CHARS = 120  # failure reasons are grouped by their text, cut to this length
FAIL_FAST = 16  # a run stops once this many requests failed with none answered (unless --max-failure-rate 1)


def input_shards(spec: str) -> list[str]:
    """Local shard paths of `spec` (the specs training reads, see lit_compclip.data.shards), stricter: remote URLs are
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


@dataclass
class Stats:
    samples: int = 0
    recaptioned: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> samples
    tokens: int | None = None  # None while no backend answer reported a count
    answered: int = 0  # requests the backend answered with a recaption
    unanswered: Counter = field(default_factory=Counter)  # reason -> requests it failed (error, empty, refused)
    shards_done: int = 0  # written and renamed into place: complete and within the failure limit
    shards_finished_before: int = 0  # skipped: this job's finished output from an earlier run
    shards_redone: list = field(default_factory=list)  # "name: why" for an earlier output that was not finished
    over_limit: list = field(default_factory=list)  # "name: k of n samples failed", kept as NAME.tar.partial
    bad_shards: list = field(default_factory=list)  # "path: reason" for inputs that could not be read to the end
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def fail(self, reason: str) -> None:
        self.failures[reason[:REASON_CHARS]] += 1

    def summary(self) -> dict:
        secs = max(self.seconds, 1e-9)
        return {"samples": self.samples, "recaptioned": self.recaptioned, "failed": self.failed,
                "failure_rate": self.failed / self.samples if self.samples else 0.0,
                "failures": dict(self.failures.most_common()), "shards_done": self.shards_done,
                "shards_finished_before": self.shards_finished_before, "shards_redone": self.shards_redone,
                "over_limit": self.over_limit, "bad_shards": self.bad_shards, "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / secs, 2),
                "tokens": self.tokens, "tokens_per_s": None if self.tokens is None else round(self.tokens / secs, 2)}


class Stopped(Exception):
    """The backend failed every request of the run so far: every shard would end over the failure limit."""


@dataclass
class Job:
    backend: object  # a recaption.base.Backend
    fields: list[str]  # "txt" = KEY.txt, other names = KEY.json fields
    template: str
    provenance: dict  # written into every KEY.json as recaption_provenance
    chunk: int = 64  # requests per backend.caption() call
    max_failure_rate: float = 1.0  # a shard whose failed share passes it is never finished


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


def _stop_message(job: Job, stats: Stats) -> str:
    reason, n = stats.unanswered.most_common(1)[0]
    url = getattr(job.backend, "url", None)
    check = "is the server up? are --base-url and --model right?" if url else "is it the right one for this data?"
    return (f"the {job.backend.name} backend failed all of its first {sum(stats.unanswered.values())} requests"
            f"{f' to {url}' if url else ''} ({n} x {reason}); stopped with nothing recaptioned. Check the backend "
            f"({check}) and run the same command again")


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
        if outcome is not None:
            stats.answered += outcome.text is not None
            if outcome.text is None:
                stats.unanswered[outcome.error[:REASON_CHARS]] += 1
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
    # A dead endpoint (or a backend that cannot caption this data) fails every request alike: stop instead of
    # spending hours writing shards that could only end over the limit. A limit of 1 accepts any failure.
    if job.max_failure_rate < 1 and stats.answered == 0 and sum(stats.unanswered.values()) >= FAIL_FAST:
        raise Stopped(_stop_message(job, stats))


def recaption_shard(src: str, tmp: str, job: Job, stats: Stats, on_samples=lambda n: None) -> tuple[int, int]:
    """Write src's recaptioned copy to tmp; (samples, failed samples) of the shard. An unreadable src raises
    InputError, a backend that failed every request so far Stopped."""
    samples, failed = stats.samples, stats.failed
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
    return stats.samples - samples, stats.failed - failed


def _finished(src: str, dst: str, job: Job, stats: Stats) -> bool:
    """Whether dst is src's finished output from this same job: every sample there, written by this backend, model
    and prompt, within the failure limit. Any other output is logged, counted as redone and redone."""
    if not os.path.exists(dst):
        return False
    try:
        n_in = count_samples(src)
    except InputError:
        return False  # redone, and reported as a bad shard there
    ours = job_identity(job.provenance)
    try:
        n_out, failed, jobs = output_record(dst)
    except InputError as exn:
        why = f"unreadable ({exn})"
    else:
        others = sorted((j for j in jobs if j != ours), key=repr)
        if n_out != n_in:
            why = f"output has {n_out} samples, input {src} has {n_in}"
        elif others:
            why = f"written by another job ({describe(others[0])}; this run: {describe(ours)})"
        elif n_out and failed / n_out > job.max_failure_rate:
            why = f"{failed} of {n_out} samples failed, over --max-failure-rate {job.max_failure_rate}"
        else:
            return True
    log.warning("%s: %s; redoing it", dst, why)
    stats.shards_redone.append(f"{os.path.basename(dst)}: {why}")
    return False


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def run(shards: list[str], out_dir: str, job: Job, overwrite: bool = False, progress: bool | None = None) -> Stats:
    """Recaption `shards` into out_dir (same file names); finished outputs are skipped unless overwrite. A shard over
    job.max_failure_rate stays NAME.tar.partial. out_dir is made when the first shard is written, and removed again
    (with the parents made for it) if this run leaves it empty."""
    out_real = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(s)) == out_real for s in shards):
        raise ValueError(f"output folder {out_dir!r} holds input shards; write the recaptioned shards elsewhere")
    stats, start, made, written = Stats(), time.perf_counter(), None, 0
    tty = sys.stderr.isatty() if progress is None else progress
    bar = None
    if tty:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="sample", dynamic_ncols=True, desc="recaption")
    try:
        for i, src in enumerate(shards):
            dst = os.path.join(out_dir, os.path.basename(src))
            tmp = dst + PARTIAL
            if os.path.exists(tmp):
                log.info("%s: redoing the partial shard an earlier run left (interrupted, or over the failure "
                         "limit)", dst)
                os.remove(tmp)
            if not overwrite and _finished(src, dst, job, stats):
                stats.shards_finished_before += 1
                continue
            if overwrite and os.path.exists(dst):
                log.info("%s: overwriting (--overwrite)", dst)
            if made is None:
                made = missing_folders(out_dir)
                os.makedirs(out_dir, exist_ok=True)
            before, t0 = stats.samples, time.perf_counter()
            try:
                n, failed = recaption_shard(src, tmp, job, stats, bar.update if bar is not None else lambda n: None)
            except InputError as exn:
                _remove(tmp)
                stats.bad_shards.append(str(exn))
                log.error("skipping unreadable input shard %s", exn)
                continue
            except Exception:  # the run stops; only an interrupt leaves its partial shard behind
                _remove(tmp)
                raise
            if n and failed / n > job.max_failure_rate:
                stats.over_limit.append(f"{os.path.basename(dst)}: {failed} of {n} samples failed")
                log.warning("%s: %d of %d samples failed, over --max-failure-rate %s; kept as %s, redone when the "
                            "command is run again", dst, failed, n, job.max_failure_rate, tmp)
            else:
                os.replace(tmp, dst)
                stats.shards_done += 1
            written += 1
            stats.seconds = time.perf_counter() - start
            left = len(shards) - i - 1
            rate = stats.samples / max(stats.seconds, 1e-9)
            if bar is not None:  # the total is an estimate: shards left times the mean shard size so far
                bar.total = stats.samples + round(left * stats.samples / written)
                bar.refresh()
            else:
                eta = left * stats.samples / written / rate if rate else 0.0
                log.info("%s: %d samples in %.1f s; %d/%d shards, %.1f samples/s, ETA %.0f s", os.path.basename(src),
                         stats.samples - before, time.perf_counter() - t0, i + 1, len(shards), rate, eta)
    finally:
        if bar is not None:
            bar.close()
        for folder in made or []:  # deepest first; a folder someone else wrote into stays
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    stats.seconds = time.perf_counter() - start
    return stats
