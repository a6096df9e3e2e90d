"""Runs the configured probes on the model's encoders every N epochs and at the end of fit, and records them."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_compclip.encoders.compclip import ModuleEncoder  # noqa: F401 (its home before lit_compclip.encoders)
from lit_compclip.stopping import held_signals

log = logging.getLogger(__name__)
# Not accuracies: kept out of the plot.
COUNT_METRICS = {"ties", "n", "n_images", "n_texts", "truncated_fraction", "max_tokens"}


def build_probes(suites: Mapping[str, Mapping[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """name -> probe object; `type` picks the registry entry (default: the name). Raises one-line errors."""
    from lit_compclip.probes import build_probe, split_suite

    probes = {}
    for name, suite in suites.items():
        kind, options = split_suite(name, suite)
        if limit is not None:
            options.setdefault("limit", limit)
        probes[name] = build_probe(kind, options)
    return probes


def run_probes(probes: Mapping[str, Any], module, records: dict | None = None, truncation=None,
               inputs=None) -> dict[str, float]:
    """Score every probe in eval mode; returns flat `probe/<name>/<metric>` -> value plus each probe's wall time.

    With `records` (a dict), also fills records[<name>][<subset>] with per-example results (see probes/report).
    `truncation` (encoders.memo.TruncationCounts) and `inputs` (TransformedImages) keep the captions' token counts
    and the images' model inputs from one pass to the next."""
    from lit_compclip.probes import run_suite

    was_training = module.training
    module.eval()
    try:
        return run_suite(probes, ModuleEncoder(module, inputs), records, truncation)
    finally:
        module.train(was_training)


def plot_history(history: list[dict], path: str):
    """probes.png: a panel per benchmark suite, a line per subset over epochs, chance dashed (see plots.py); returns
    the figure, or None when the history holds no score."""
    from lit_compclip.plots import plot_history as draw

    return draw(history, path)


def write_results(metrics: Mapping[str, float], records: Mapping | None, out_dir: str, failures: int = 8,
                  records_dir: str | None = None, title: str = "Probe failures") -> None:
    """probes.json (flat metric -> value), probe_seconds.json (each probe's wall seconds) and failures.md (worst
    failures per subset) in `out_dir`, and with `records_dir` the per-example records as
    <records_dir>/<probe>/<subset>.jsonl. Shared by training and `compclip probe`."""
    from lit_compclip.probes.report import failure_page, write_records

    os.makedirs(out_dir, exist_ok=True)
    # wall-clock seconds go to their own file, so the same seed on the same machine gives the same probes.json
    timed = {k: v for k, v in metrics.items() if k.endswith("/seconds")}
    with open(os.path.join(out_dir, "probes.json"), "w") as f:
        json.dump({k: v for k, v in metrics.items() if k not in timed}, f, indent=1, sort_keys=True)
    with open(os.path.join(out_dir, "probe_seconds.json"), "w") as f:
        json.dump(timed, f, indent=1, sort_keys=True)
    if records:
        failure_page(records, os.path.join(out_dir, "failures.md"), failures, title)
        if records_dir:
            write_records(records, records_dir)


class ProbeCallback(L.Callback):
    def __init__(self, probes: Mapping[str, Any], every_n_epochs: int = 1, run_dir: str | None = None,
                 dump: bool = True, failures: int = 8):
        self.probes = dict(probes)
        self.every_n_epochs = every_n_epochs
        self.run_dir = run_dir
        self.dump, self.failures = dump, failures
        self.history: list[dict] = []
        self.records: dict = {}  # per-example results of the latest probe run
        from lit_compclip.encoders.memo import TransformedImages, TruncationCounts

        # what does not change with the weights, kept from one pass to the next
        self.truncation, self.inputs = TruncationCounts(), TransformedImages()

    def _run(self, trainer, module) -> None:
        if not self.probes or not trainer.is_global_zero:
            return
        self.records = {}
        metrics = run_probes(self.probes, module, self.records, self.truncation, self.inputs)
        self.history.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "metrics": metrics})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info("probes after epoch %d: %s", trainer.current_epoch + 1,
                 {k: round(v, 3) for k, v in metrics.items()})

    def pass_seconds(self) -> list[float]:
        """Wall seconds of each probe pass so far (the sum of its probes' `seconds`)."""
        return [sum(v for k, v in h["metrics"].items() if k.endswith("/seconds")) for h in self.history]

    def on_train_epoch_end(self, trainer, module):
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run(trainer, module)

    def on_fit_end(self, trainer, module):
        if not trainer.is_global_zero:
            return
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self._run(trainer, module)
        if not (self.run_dir and self.history):
            return
        with held_signals():  # a stop signal waits until these files are whole
            records_dir = os.path.join(self.run_dir, "probe_records") if self.dump else None
            write_results(self.history[-1]["metrics"], self.records, self.run_dir, self.failures, records_dir,
                          f"Probe failures of {os.path.basename(self.run_dir)} at step {trainer.global_step}")
            if self.failures:
                from lit_compclip.probes.report import log_wandb_tables

                log_wandb_tables(self.records, trainer.loggers, self.failures)
            with open(os.path.join(self.run_dir, "probes_history.json"), "w") as f:
                json.dump(self.history, f, indent=1)
            plot_history(self.history, os.path.join(self.run_dir, "probes.png"))

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]["metrics"] if self.history else {}

    # Saved in every checkpoint, so a resumed run's probes_history.json and probes.png keep the earlier epochs.
    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class ProgressLines(L.Callback):
    """One plain line every `every` steps (loss, seconds per step, time left) for logs and non-interactive shells."""

    def __init__(self, total_steps: int, every: int = 25):
        self.total_steps, self.every = total_steps, every
        self.start = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is None:
            self.start = (trainer.global_step, time.perf_counter())
            return
        step = trainer.global_step
        if step % self.every or not trainer.is_global_zero:
            return
        per_step = (time.perf_counter() - self.start[1]) / max(1, step - self.start[0])
        left = per_step * max(0, self.total_steps - step)
        print(f"step {step}/{self.total_steps}  epoch {trainer.current_epoch + 1}  loss {float(outputs['loss']):.3f}  "
              f"{per_step:.2f} s/step  ~{left / 60:.1f} min left", flush=True)


class WholeRowsCSVLogger(CSVLogger):
    """Lightning's CSV logger (metrics.csv), whose rows a stop signal never cuts: it waits until they are written."""

    def save(self) -> None:
        with held_signals():
            super().save()


class TextCacheStats(L.Callback):
    """Logs the text tower's prefix-cache hit rate and size (`text_cache/*`) with the other training metrics."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        stats = getattr(module.text, "cache_stats", lambda: None)()
        if stats is None:
            return
        n = len(batch["caption"])
        for key in ("hit_rate", "size_mb", "errors"):
            module.log(f"text_cache/{key}", stats[key], batch_size=n)


def _reduced(counts: Mapping[str, int], device) -> dict[str, int]:
    """Skip counts (reason -> count) summed over every process; a collective, so every rank must call it."""
    from lit_compclip.data.datamodule import SKIP_REASONS

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {r: n for r, n in counts.items() if n}
    assert set(counts) <= set(SKIP_REASONS), sorted(counts)
    # int64 on the module's device (NCCL reduces GPU tensors only): exact at any count
    vector = torch.tensor([int(counts.get(r, 0)) for r in SKIP_REASONS], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(vector)
    return {r: n for r, n in zip(SKIP_REASONS, vector.tolist()) if n}


def _skips_of(batch) -> Counter:
    skipped = batch.get("skipped") if isinstance(batch, Mapping) else None
    return Counter(skipped) if isinstance(skipped, Mapping) else Counter()


def _held(loaders) -> Counter:
    """Counts a StreamLoader received after its epoch's last batch (see stream.SKIPS_ONLY)."""
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return sum((Counter(loader.take_held()) for loader in loaders if hasattr(loader, "take_held")), Counter())


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


class DataSkips(L.Callback):
    """The exact count of skipped samples by reason, summed over loader workers and ranks: training's over the whole
    run (a resumed run goes on from the checkpoint's), validation's of its latest pass (it re-reads the same data).

    Logged as data/skipped (and data/val_skipped) where Lightning writes metrics; when training ends, a final row with
    data/skipped/<reason> goes to every logger, rank 0 writes <run_dir>/data_skips.json (with the shards found cut
    short, `cut_shards`) and prints one line. The training totals live in the module (skipped, skipped_by_reason),
    which saves them in the checkpoint. A skip counts once the batch that carries it is consumed, as the loader logs
    it (data/stream.py): what the loader read ahead and training never took is neither counted nor logged."""

    def __init__(self, run_dir: str | None = None):
        self.run_dir = run_dir
        self.before: Counter = Counter()  # every rank's total when this fit started (restored from a checkpoint)
        self.local: Counter = Counter()  # this rank's own since then
        self.val: dict[str, int] = {}  # the latest validation pass, every rank's
        self._val_pass: Counter = Counter()
        self.validated = False  # whether self.val holds a pass (this fit's or the checkpoint's)
        self.record: dict | None = None  # what data_skips.json holds, once training ended

    def _sync(self, module) -> dict[str, int]:
        """Every rank's training total into module.skipped(_by_reason); a collective under DDP."""
        total = Counter(self.before) + Counter(_reduced(self.local, module.device))
        module.skipped_by_reason, module.skipped = dict(total), sum(total.values())
        return module.skipped_by_reason

    def on_train_start(self, trainer, module):
        self.before, self.local = Counter(getattr(module, "skipped_by_reason", {}) or {}), Counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.local += _skips_of(batch) + _held(trainer.train_dataloader)
        if trainer._logger_connector.should_update_logs:  # the same step on every rank: the collective is safe
            self._sync(module)
            module.log("data/skipped", float(module.skipped), reduce_fx="max", batch_size=1)

    def on_validation_epoch_start(self, trainer, module):
        self._val_pass = Counter()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self._val_pass += _skips_of(batch)

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        # ranks may hold different numbers of validation batches: one collective here, none per batch
        self.val = _reduced(self._val_pass + _held(trainer.val_dataloaders), module.device)
        self.validated = True
        # already every rank's: "max" leaves it as it is (and quiets Lightning's epoch-level sync warning)
        module.log("data/val_skipped", float(sum(self.val.values())), batch_size=1, sync_dist=True, reduce_fx="max")

    def on_save_checkpoint(self, trainer, module, checkpoint):
        # every rank saves together (ModelCheckpoint), so the sum is the run's; the module writes it (data_counts)
        self._sync(module)
        if self.validated:
            checkpoint.setdefault("data_counts", {})["val_skipped_by_reason"] = dict(self.val)

    def on_load_checkpoint(self, trainer, module, checkpoint):
        val = checkpoint.get("data_counts", {}).get("val_skipped_by_reason")
        self.val, self.validated = dict(val or {}), val is not None

    def on_train_end(self, trainer, module):
        self.local += _held(trainer.train_dataloader)
        train = self._sync(module)
        self.record = {"train": {"total": module.skipped, "by_reason": dict(sorted(train.items())),
                                 "counts": "every training sample skipped in this run (resumes included), summed over "
                                           "ranks and loader workers; a sample read in two passes counts twice"}}
        if self.validated:
            self.record["val"] = {"total": sum(self.val.values()), "by_reason": dict(sorted(self.val.items())),
                                  "counts": "the last validation pass, summed over ranks and loader workers"}
        cut = getattr(trainer.datamodule, "cut", None) or {}
        if any(cut.values()):  # found by rank 0 when the run started (data.tars.cut_shards)
            self.record["cut_shards"] = [{"split": split, **shard} for split, shards in cut.items() for shard in shards]
        if not trainer.is_global_zero:
            return
        final = {"data/skipped": module.skipped, **{f"data/skipped/{r}": n for r, n in train.items()}}
        if "val" in self.record:
            final.update({"data/val_skipped": self.record["val"]["total"],
                          **{f"data/val_skipped/{r}": n for r, n in self.val.items()}})
        for logger in trainer.loggers:
            logger.log_metrics(final, step=trainer.global_step)
            logger.save()  # the CSV logger writes only every log_every_n_steps otherwise
        path = None
        if self.run_dir:
            os.makedirs(self.run_dir, exist_ok=True)
            path = os.path.join(self.run_dir, "data_skips.json")
            with held_signals(), open(path, "w") as f:
                json.dump(self.record, f, indent=1)
        print(skip_line(self.record, path), flush=True)
