"""The run's Lightning callbacks: the probes every N epochs and at the end of fit (their files, chart and W&B tables),
plain progress lines, whole CSV rows, the text cache's hit rate, and the exact count of skipped samples."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from lit_compclip.data.skips import RunSkips, held_by, skip_line, write_record
from lit_compclip.probes.report import Records, margin, rival, worst_failures, write_results
from lit_compclip.stopping import held_signals
from lit_compclip.training.probing import run_probes

log = logging.getLogger(__name__)


def log_wandb_tables(records: Records, loggers, k: int = 8) -> int:
    """Log the worst failures per subset as W&B tables (image, id, captions, margin) to every WandbLogger."""
    from lightning.pytorch.loggers import WandbLogger

    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets:
        return 0
    import wandb

    from lit_compclip.probes.base import ImageRef, load_image

    tables = 0
    for probe, subsets in records.items():
        for subset, rows in subsets.items():
            data = []
            for r in worst_failures(rows, k):
                ref = ImageRef(Path(r["image"]), tuple(r["box"]) if "box" in r else None, f"{probe} record {r['id']}")
                data.append([wandb.Image(load_image(ref)), r["id"], r["captions"][0], rival(r), margin(r)])
            if data:
                for lg in targets:
                    lg.log_table(key=f"failures/{probe}/{subset}",
                                 columns=["image", "id", "true caption", "winning rival", "margin"], data=data)
                tables += 1
    return tables


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
                log_wandb_tables(self.records, trainer.loggers, self.failures)
            with open(os.path.join(self.run_dir, "probes_history.json"), "w") as f:
                json.dump(self.history, f, indent=1)
            from lit_compclip.reports.plots import plot_history  # matplotlib loads only once a chart is drawn

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
        stats = getattr(module.model.text, "cache_stats", lambda: None)()
        if stats is None:
            return
        n = len(batch["caption"])
        for key in ("hit_rate", "size_mb", "errors"):
            module.log(f"text_cache/{key}", stats[key], batch_size=n)


class DataSkips(L.Callback):
    """The exact count of skipped samples by reason, summed over loader workers and ranks (data/skips.py counts):
    training's over the whole run (a resumed run goes on from the checkpoint's), validation's of its latest pass.

    Logged as data/skipped (and data/val_skipped) where Lightning writes metrics; when training ends, a final row with
    data/skipped/<reason> goes to every logger, rank 0 writes <run_dir>/data_skips.json (with the shards found cut
    short, `cut_shards`) and prints one line. The training total is saved in the checkpoint (data/skips.py)."""

    def __init__(self, run_dir: str | None = None):
        self.run_dir = run_dir
        self.skips = RunSkips()
        self.total: dict[str, int] = {}  # every rank's training total, as of the last sync
        self.record: dict | None = None  # what data_skips.json holds, once training ended

    def _sync(self, module) -> dict[str, int]:
        """Every rank's training total, reason -> count; a collective under DDP."""
        self.total = self.skips.train(module.device)
        return self.total

    @property
    def skipped(self) -> int:
        """Training samples skipped in the run so far (its every rank), as of the last sync."""
        return sum(self.total.values())

    def on_train_start(self, trainer, module):
        self.skips.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.skips.count(batch, held_by(trainer.train_dataloader))
        if trainer._logger_connector.should_update_logs:  # the same step on every rank: the collective is safe
            self._sync(module)
            module.log("data/skipped", float(self.skipped), reduce_fx="max", batch_size=1)

    def on_validation_epoch_start(self, trainer, module):
        self.skips.start_val()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.skips.count_val(batch)

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        total = self.skips.end_val(held_by(trainer.val_dataloaders), module.device)
        # already every rank's: "max" leaves it as it is (and quiets Lightning's epoch-level sync warning)
        module.log("data/val_skipped", float(total), batch_size=1, sync_dist=True, reduce_fx="max")

    def on_save_checkpoint(self, trainer, module, checkpoint):
        # every rank saves together (ModelCheckpoint), so the collective is safe and the sum is the run's
        self.skips.save(checkpoint, self._sync(module))

    def on_load_checkpoint(self, trainer, module, checkpoint):
        self.skips.load(checkpoint)

    def on_train_end(self, trainer, module):
        self.skips.count({}, held_by(trainer.train_dataloader))
        train = self._sync(module)
        # the shards found cut short by rank 0 when the run started (data.tars.cut_shards)
        self.record = self.skips.record(train, getattr(trainer.datamodule, "cut", None))
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(self.skips.final_metrics(train), step=trainer.global_step)
            logger.save()  # the CSV logger writes only every log_every_n_steps otherwise
        path = write_record(self.record, self.run_dir) if self.run_dir else None
        print(skip_line(self.record, path), flush=True)
