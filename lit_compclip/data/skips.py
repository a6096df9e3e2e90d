"""Skipped samples, accounted in one place: why a sample (or the rest of a shard) is dropped, each loader worker's
counts and log lines, the counts batches carry to the training process, their sum over ranks, and the run's record
(data_skips.json, the final metrics row, one printed line).

A skip counts once the batch that carries it is consumed, and is logged then (data/stream.py): what a loader read
ahead and training never took is neither counted nor logged."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Mapping

import torch
import webdataset as wds

from lit_compclip.stopping import held_signals

# Why a sample (or a shard's rest) is dropped: the keys of every batch's `skipped` and of data_skips.json.
SKIP_REASONS = ("bad_image", "bad_json", "no_caption", "no_image", "truncated_shard", "unreadable_shard")
SKIPS_ONLY = "skips_only"  # a worker that made no batch: its `skipped` counts, added to the next batch's
SKIP_NOTES = "skip_notes"  # a batch's log lines of its `skipped`: logged when the batch is consumed, as it is counted
LOG_LINES_PER_REASON = 10  # per worker, then one "counted only" line
RECORD = "data_skips.json"  # in the run folder


def describe(exn: BaseException) -> str:
    """An exception as a skip's detail: its type and first argument."""
    return f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"


def _worker_tag() -> str:
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return f"rank {rank}/{world} worker {worker}/{workers}"


class SkipLog:
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
        if n <= LOG_LINES_PER_REASON:
            what = f"sample {key!r}" if key is not None else "shard"
            so_far = ", ".join(f"{r}={c}" for r, c in sorted(self.counts.items()))
            self.notes.append(f"{self.stream} data, {_worker_tag()}: skipped {what} of {url}: {reason} ({detail}); "
                              f"this worker's skips so far: {so_far}")
        elif n == LOG_LINES_PER_REASON + 1:
            self.notes.append(f"{self.stream} data, {_worker_tag()}: further {reason!r} skips counted only")

    def take(self) -> dict:
        """{"skipped": reason -> count, SKIP_NOTES: log lines} since the last take."""
        taken = {"skipped": dict(self.pending), SKIP_NOTES: self.notes}
        self.pending, self.notes = Counter(), []
        return taken


class HeldSkips:
    """What workers reported in SKIPS_ONLY markers (they made no batch), held by the loader until its next batch
    carries it, or handed out after the epoch's last batch."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.notes: list[str] = []

    def hold(self, marker: Mapping) -> None:
        self.counts.update(marker["skipped"])
        self.notes += marker.get(SKIP_NOTES, [])

    def clear(self) -> None:
        self.counts, self.notes = Counter(), []

    def carry(self, batch: dict) -> None:
        """Add what is held to `batch`'s counts and log lines."""
        if self.counts:
            batch["skipped"] = dict(Counter(batch["skipped"]) + self.counts)
            batch[SKIP_NOTES] = self.notes + batch.get(SKIP_NOTES, [])
            self.clear()

    def take(self) -> tuple[dict[str, int], list[str]]:
        """(counts, log lines) held, each handed out once."""
        counts, notes = dict(self.counts), self.notes
        self.clear()
        return counts, notes


def batch_skips(batch) -> Counter:
    """The skip counts a batch carries (reason -> count)."""
    skipped = batch.get("skipped") if isinstance(batch, Mapping) else None
    return Counter(skipped) if isinstance(skipped, Mapping) else Counter()


def held_by(loaders) -> Counter:
    """Counts a StreamLoader received after its epoch's last batch (see SKIPS_ONLY)."""
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return sum((Counter(loader.take_held()) for loader in loaders if hasattr(loader, "take_held")), Counter())


def reduced(counts: Mapping[str, int], device) -> dict[str, int]:
    """Skip counts (reason -> count) summed over every process; a collective, so every rank must call it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {r: n for r, n in counts.items() if n}
    assert set(counts) <= set(SKIP_REASONS), sorted(counts)
    # int64 on the module's device (NCCL reduces GPU tensors only): exact at any count
    vector = torch.tensor([int(counts.get(r, 0)) for r in SKIP_REASONS], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(vector)
    return {r: n for r, n in zip(SKIP_REASONS, vector.tolist()) if n}


class RunSkips:
    """A run's skip counts, summed over loader workers and ranks: training's over the whole run (a resumed run goes on
    from the checkpoint's), validation's of its latest pass (it re-reads the same data)."""

    def __init__(self):
        self.before: Counter = Counter()  # every rank's training total when this fit started (from a checkpoint)
        self.local: Counter = Counter()  # this rank's own since then
        self.val: dict[str, int] = {}  # the latest validation pass, every rank's
        self.val_pass: Counter = Counter()
        self.validated = False  # whether self.val holds a pass (this fit's or the checkpoint's)

    def start(self) -> None:
        """A fit begins: this rank's count from zero, on top of the checkpoint's total when one was loaded."""
        self.local = Counter()

    def count(self, batch, held: Counter) -> None:
        """A consumed training batch's skips, and those its loader held after the epoch's last batch."""
        self.local += batch_skips(batch) + held

    def train(self, device) -> dict[str, int]:
        """Every rank's training total, reason -> count; a collective under DDP."""
        return dict(Counter(self.before) + Counter(reduced(self.local, device)))

    def start_val(self) -> None:
        self.val_pass = Counter()

    def count_val(self, batch) -> None:
        self.val_pass += batch_skips(batch)

    def end_val(self, held: Counter, device) -> int:
        """Close a validation pass (one collective: ranks may hold different numbers of batches); its total."""
        self.val = reduced(self.val_pass + held, device)
        self.validated = True
        return sum(self.val.values())

    def save(self, checkpoint: dict, train: Mapping[str, int]) -> None:
        """Into the checkpoint: `train`, every rank's training total (a resumed run goes on counting from it), and the
        latest validation pass."""
        counts = checkpoint.setdefault("data_counts", {})
        counts.update(skipped=sum(train.values()), skipped_by_reason=dict(train))
        if self.validated:
            counts["val_skipped_by_reason"] = dict(self.val)

    def load(self, checkpoint: Mapping) -> None:
        counts = checkpoint.get("data_counts", {})
        self.before = Counter(counts.get("skipped_by_reason", {}))
        val = counts.get("val_skipped_by_reason")
        self.val, self.validated = dict(val or {}), val is not None

    def record(self, train: Mapping[str, int], cut: Mapping[str, list] | None) -> dict:
        """What data_skips.json holds: training's total by reason, the last validation pass's, the shards found cut
        short (data.tars.cut_shards, by split)."""
        out = {"train": {"total": sum(train.values()), "by_reason": dict(sorted(train.items())),
                         "counts": "every training sample skipped in this run (resumes included), summed over "
                                   "ranks and loader workers; a sample read in two passes counts twice"}}
        if self.validated:
            out["val"] = {"total": sum(self.val.values()), "by_reason": dict(sorted(self.val.items())),
                          "counts": "the last validation pass, summed over ranks and loader workers"}
        if cut and any(cut.values()):
            out["cut_shards"] = [{"split": split, **shard} for split, shards in cut.items() for shard in shards]
        return out

    def final_metrics(self, train: Mapping[str, int]) -> dict[str, float]:
        """The run's last metrics row: data/skipped (and data/val_skipped), and each by reason."""
        final = {"data/skipped": sum(train.values()), **{f"data/skipped/{r}": n for r, n in train.items()}}
        if self.validated:
            final.update({"data/val_skipped": sum(self.val.values()),
                          **{f"data/val_skipped/{r}": n for r, n in self.val.items()}})
        return final


def write_record(record: Mapping, run_dir: str) -> str:
    """<run_dir>/data_skips.json, whole even if a stop signal comes; returns its path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RECORD)
    with held_signals(), open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def skip_line(record: Mapping, path: str | None = None) -> str:
    """The one summary line of data_skips.json's `record`."""
    def part(split: Mapping, what: str) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(split["by_reason"].items()))
        return f"{split['total']} {what}" + (f" ({reasons})" if reasons else "")

    text = f"data: skipped {part(record['train'], 'training samples')}"
    if "val" in record:
        text += f", {part(record['val'], 'in the last validation pass')}"
    cut = record.get("cut_shards", [])
    if cut:
        lost = [s["samples_lost"] for s in cut if s["samples_lost"] is not None]  # where a _stats.json tells
        told = "how many samples were lost is unknown: no img2dataset _stats.json" if not lost else \
            f"{sum(lost)} samples lost" + ("" if len(lost) == len(cut) else f" in the {len(lost)} with a _stats.json")
        text += f"; {len(cut)} shard(s) cut short ({told})"
    return text + (f"; see {path}" if path else "")


def cut_note(split: str, shard: Mapping) -> str:
    """The warning a shard found cut short gets when the data is set up (data.tars.cut_shards)."""
    listed = shard["samples_listed"]
    held = f"{shard['samples_lost']} lost of the {listed} its _stats.json lists" \
        if listed is not None else "how many were lost is unknown (no img2dataset _stats.json beside it)"
    return (f"{split} data: shard {shard['shard']} is cut short (it ends without its end-of-archive blocks): "
            f"{shard['samples_read']} samples can be read, {held}; each read of it counts as a truncated_shard skip")
