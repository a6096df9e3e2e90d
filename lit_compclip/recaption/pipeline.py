"""Recaption tar shards: original members copied byte for byte, KEY.json gains `recaption`; atomic and resumable."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tarfile
import time
from dataclasses import dataclass

from lit_compclip.cli_args import missing_folders
from lit_compclip.recaption.base import Outcome
from lit_compclip.recaption.samples import Sample, annotate, prepare, write_sample
from lit_compclip.recaption.stats import REASON_CHARS, Stats
from lit_compclip.recaption.tars import InputError, count_samples, describe, job_identity, output_record, read_units

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # suffix of a shard being written; renamed away only when it is complete and within the limit
FAIL_FAST = 16  # a run stops once this many requests failed with none answered (unless --max-failure-rate 1)


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


def _stop_message(job: Job, stats: Stats) -> str:
    reason, n = stats.unanswered.most_common(1)[0]
    url = getattr(job.backend, "url", None)
    check = "is the server up? are --base-url and --model right?" if url else "is it the right one for this data?"
    return (f"the {job.backend.name} backend failed all of its first {sum(stats.unanswered.values())} requests"
            f"{f' to {url}' if url else ''} ({n} x {reason}); stopped with nothing recaptioned. Check the backend "
            f"({check}) and run the same command again")


def _flush(out: tarfile.TarFile, pending: list[Sample], job: Job, stats: Stats) -> None:
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
        meta = annotate(sample, outcome, job.provenance) if sample.meta is not None else None
        if meta is not None and "recaption" in meta:
            stats.recaptioned += 1
        else:
            reason = meta["recaption_error"] if meta is not None else sample.error
            stats.fail(reason)
            log.debug("%s: %s", sample.key, reason)
        stats.samples += 1
        write_sample(out, sample, meta)
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
            pending: list[Sample] = []
            for key, members in read_units(src):
                if key is None:  # not a sample: copied in its place
                    _flush(out, pending, job, stats)
                    out.addfile(members[0][0], io.BytesIO(members[0][1]) if members[0][0].isfile() else None)
                    continue
                pending.append(prepare(key, members, job.fields, job.template))
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
