"""Builds everything a run needs from a checked config, trains, and leaves the run folder behind."""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
import tarfile
import time
import warnings

from omegaconf import DictConfig, OmegaConf

from lit_compclip.cli_args import check_writable_folder
from lit_compclip.config import check_caption_fields
from lit_compclip.errors import BUILD_ERRORS, ConfigError, reported_as
from lit_compclip.ranks import launched_apart as _launched_apart, launched_rank as _launched_rank
from lit_compclip.reports.wandb_runs import has_wandb_key, wandb_mode
from lit_compclip.stopping import Stopped, held_signals, stop_on_signals
from lit_compclip.training.loggers import build_loggers, finish_wandb
# block_classes: tests/test_speed_options.py and test_decoder_towers.py import it from here
from lit_compclip.training.trainer import block_classes, checkpoint_callbacks, trainer_options  # noqa: F401

log = logging.getLogger(__name__)


RUN_DIR_ENV = "LIT_COMPCLIP_RUN_DIR"  # rank 0's choice, inherited by the processes Lightning launches


def unique_run_dir(cfg: DictConfig) -> str:
    """runs/<name>, or runs/<name>-2, -3, ... so that an earlier run's files are never overwritten.

    Ranks Lightning launches take rank 0's folder (handed down in the environment); ranks launched apart (torchrun,
    srun, a second node) cannot agree on a suffix, so they all need the same explicit run_dir, used as given."""
    if _launched_rank() and os.environ.get(RUN_DIR_ENV):
        return os.environ[RUN_DIR_ENV]
    if _launched_rank() or _launched_apart():
        if not cfg.run_dir:
            raise ConfigError("run_dir: processes started apart (torchrun, srun, one launch per node) need the same "
                              "explicit run_dir=PATH on every rank")
        return cfg.run_dir
    base = cfg.run_dir or os.path.join("runs", cfg.name)
    path, n = base, 1
    while os.path.isdir(path) and os.listdir(path):
        n += 1
        path = f"{base}-{n}"
    return path


def count_samples(urls: list[str]) -> int | None:
    """Samples in local shards (one per distinct key), reading tar headers only; None for remote shards."""
    total = 0
    for url in urls:
        if not os.path.isfile(url):
            return None
        try:
            with tarfile.open(url) as tar:
                total += len({m.name.split(".", 1)[0] for m in tar if m.isfile()})
        except (tarfile.TarError, OSError):
            continue  # the data module counts and logs unreadable shards
    return total


def check_inputs(cfg: DictConfig):
    """Every path the run reads must exist (one-line errors) before a model is built; returns the probes."""
    from lit_compclip.data.shards import expand_shards
    from lit_compclip.probes import build_probes

    for key in ("train_shards", "val_shards"):
        if cfg.data[key]:
            with reported_as(f"data.{key}", (FileNotFoundError, ValueError)):
                expand_shards(cfg.data[key])
    probes = {}
    for name, suite in cfg.probes.suites.items():  # one at a time, so that the error names its suite
        with reported_as(f"probes.suites.{name}", (FileNotFoundError, ValueError)):
            probes.update(build_probes({name: suite}, cfg.probes.get("limit")))
    return probes


def total_steps(cfg: DictConfig) -> int:
    """Optimizer steps of the whole run, which the cosine schedule needs up front."""
    from lit_compclip.data.shards import expand_shards

    if cfg.trainer.max_steps and cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    world = _world_size(cfg)
    samples = cfg.data.samples_per_epoch or count_samples(expand_shards(cfg.data.train_shards))
    if not samples:
        raise ConfigError("set trainer.max_steps or data.samples_per_epoch: remote shards cannot be counted")
    return max(1, cfg.trainer.max_epochs * (samples // (world * cfg.data.batch_size)))


def _world_size(cfg: DictConfig) -> int:
    d = cfg.trainer.devices
    n = len(d) if isinstance(d, (list, tuple)) or OmegaConf.is_list(d) else (int(d) if str(d).isdigit() else 1)
    return n * cfg.trainer.num_nodes


def init_weights(model, path: str) -> None:
    """Copy checkpoint `path`'s weights into `model`, nothing else (the run keeps a fresh optimizer, schedule and
    step); a missing, unreadable or differently shaped checkpoint is a one-line ConfigError naming `init_from`."""
    from lit_compclip.factory import load
    from lit_compclip.training.resume import weight_problems

    try:
        source = load(path).state_dict()
    except ConfigError as e:
        raise ConfigError(f"init_from: {e}") from None
    problems = weight_problems({k: v.shape for k, v in source.items()},
                               {k: v.shape for k, v in model.model.state_dict().items()})
    if problems:
        raise ConfigError(f"init_from: checkpoint {path!r} does not fit the configured model ({'; '.join(problems)});"
                          f" use the model settings it was trained with")
    model.model.load_state_dict(source)


def check_writable(cfg: DictConfig, model) -> None:
    """What fit would only find out later, leaving a half-made run folder: an unwritable text-cache folder, or
    W&B online without an API key."""
    options = getattr(model.model.text, "cache_options", None)
    if options:  # the folder is made on first use
        check_writable_folder(options[0], "model.text.cache_dir (set it to a writable folder or to null):",
                              ConfigError)
    if wandb_mode(cfg.wandb.mode) == "online" and not has_wandb_key():
        raise ConfigError("wandb.mode: online needs an API key (WANDB_API_KEY or `wandb login`); use wandb.mode=offline "
                          "to log locally and `wandb sync` later")


def train(cfg: DictConfig) -> dict:
    """Run one experiment; returns {"run_dir", "probes" (final results), "wandb_mode"}."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor

    from lit_compclip.training.callbacks import DataSkips, ProbeCallback, ProgressLines, TextCacheStats
    from lit_compclip.training.datamodule import WebDataModule
    from lit_compclip.training.module import CompClip
    from lit_compclip.training.resume import RESUME_ENV, RandomState, check_fits, resume_point
    from lit_compclip.config.plugins import prepare

    if cfg.init_from and not os.path.isfile(cfg.init_from):  # before the synthetic world is built (minutes)
        raise ConfigError(f"init_from: checkpoint {cfg.init_from!r} not found")
    world_to_check = check_caption_fields(cfg)  # a field the shards lack, before anything is built
    resume = resume_point(cfg, _launched_rank())  # a missing, unreadable or weights-only checkpoint fails here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Expected here, and alarming to a newcomer: frozen text layers are in eval mode on purpose, config.yaml is
    # written into the run folder before the CSV logger starts, one loader worker is the CPU default, and a run
    # without val_shards hands Lightning an empty validation list.
    for pattern in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*", ".*exists and is not empty.*",
                    ".*treespec.*", ".*Total length of `list` across ranks is zero.*"):
        warnings.filterwarnings("ignore", pattern)

    # Everything a bad value can stop is built before the run folder exists; the model first, before the synthetic
    # world (minutes): a tower, timm or transformers error is one line naming its key (reported_as).
    with reported_as("model"):
        model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim))
    if resume is not None:
        check_fits(resume, model)  # before the run folder is touched; its weights replace any init_from
    elif cfg.init_from:
        init_weights(model, cfg.init_from)  # before the run folder exists: a bad checkpoint leaves nothing behind
    check_writable(cfg, model)
    prepare(cfg)
    if world_to_check:
        check_caption_fields(cfg)  # the synthetic world, now built
    probes = check_inputs(cfg)
    steps = model.total_steps = total_steps(cfg)  # the cosine schedule's length counts the data
    model.save_hyperparameters({**model.hparams, "total_steps": steps})  # checkpoints record it as before
    run_dir = (resume and resume.run_dir) or unique_run_dir(cfg)
    with reported_as("data"):
        data = WebDataModule(**OmegaConf.to_container(cfg.data), seed=cfg.seed,
                             train_transform=model.model.train_transform, eval_transform=model.model.transform)
    with reported_as("wandb"):
        loggers, mode = build_loggers(cfg, run_dir, resume)  # no folder yet: both loggers write from fit on
    probe_cb = ProbeCallback(probes, cfg.probes.every_n_epochs, run_dir, cfg.probes.dump, cfg.probes.failures)
    callbacks = [probe_cb, LearningRateMonitor("step"), RandomState(), *checkpoint_callbacks(cfg, run_dir)]
    callbacks.append(DataSkips(run_dir))  # exact skip counts: the final metrics row, data_skips.json, one line
    if not (sys.stdout.isatty() and cfg.trainer.enable_progress_bar):
        callbacks.append(ProgressLines(steps))  # a progress bar is invisible in logs and pipes
    if getattr(model.model.text, "cache_options", None):
        callbacks.append(TextCacheStats())
    # Lightning checks strategy, accelerator, devices and precision against this machine here (it raises
    # MisconfigurationException, and TypeError for devices a CPU cannot take): one line naming the trainer key.
    flags = {k: cfg.trainer[k] for k in ("strategy", "accelerator", "devices", "precision", "num_nodes")}
    with reported_as("trainer", BUILD_ERRORS + (TypeError, MisconfigurationException), options=flags):
        t = trainer_options(cfg, model)
        t["enable_progress_bar"] = cfg.trainer.enable_progress_bar and sys.stdout.isatty()  # else ProgressLines
        if not model.automatic_optimization:  # GradCache steps and clips by hand: Lightning refuses gradient_clip_val
            model.manual_clip_val = t.pop("gradient_clip_val")
        trainer = L.Trainer(**t, logger=loggers, callbacks=callbacks, default_root_dir=run_dir,
                            num_sanity_val_steps=0)
    # From here on SIGTERM and SIGINT stop the run wherever it is (waiting for data too), never halfway through a file.
    with stop_on_signals() as signals:
        try:
            if not _launched_rank():  # only now: a run stopped by a bad value above leaves no folder behind
                os.makedirs(run_dir, exist_ok=True)
                # a resumed run keeps the config it started with and records its own beside it
                kept = resume is not None and os.path.isfile(os.path.join(run_dir, "config.yaml"))
                with held_signals():
                    OmegaConf.save(cfg, os.path.join(run_dir, "config.resume.yaml" if kept else "config.yaml"),
                                   resolve=True)
                os.environ[RUN_DIR_ENV] = run_dir  # read by the ranks Lightning launches, at fit
                os.environ[RESUME_ENV] = resume.path if resume else ""
            began = time.perf_counter()
            # Lightning restores step, epoch, optimizer, schedule, callbacks and the train loader's position; it reads
            # the file with weights_only=True (never a pickle's code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says),
            # after resume_point checked it (lit_compclip.checkpoints)
            trainer.fit(model, data, ckpt_path=resume.path if resume else None, weights_only=True)
            timing = probe_time(probe_cb.pass_seconds(), time.perf_counter() - began)
            if trainer.is_global_zero:
                with held_signals(), open(os.path.join(run_dir, "run_time.json"), "w") as f:
                    json.dump(timing, f, indent=1)
        except BaseException:
            if signals.received is None:
                raise
            # whatever the signal interrupted (Lightning's own SIGTERM exit, a loader worker killed by the same
            # signal): one line, and the signal's exit status
            saved = os.path.isfile(os.path.join(run_dir, "checkpoints", "last.ckpt"))
            stopped = Stopped(signals.received)
            if not _launched_rank():
                print(f"compclip train: stopped by {stopped.name} at step {trainer.global_step}; {run_dir} keeps "
                      + ("its last checkpoint: resume=last continues the run" if saved else "no checkpoint yet"),
                      file=sys.stderr, flush=True)
            raise stopped from None
        finally:
            finish_wandb(loggers)
    return {"run_dir": run_dir, "is_global_zero": trainer.is_global_zero, "probes": probe_cb.final, "wandb_mode": mode,
            "time": timing,
            # the newest: a resumed run's folder holds one W&B folder per process that logged into the run
            "wandb_dir": max(glob.glob(os.path.join(run_dir, "wandb", "*run-*")), key=os.path.getmtime, default=None)}


def probe_time(passes: list[float], fit_s: float) -> dict:
    """What the probes cost this run (run_time.json): each pass's seconds, their sum, and its share of the wall time
    of `fit` (training, validation, checkpoints and the probes themselves; this process only, for a resumed run)."""
    # the share comes from the rounded seconds the file holds, so run_time.json agrees with itself: a short probe
    # pass rounded to the millisecond would otherwise move the quotient by more than a part in a thousand
    fit, total = round(fit_s, 3), round(sum(passes), 3)
    return {"fit_s": fit, "probe_s": total, "probe_passes_s": [round(p, 3) for p in passes],
            "probe_fraction": total / fit if fit > 0 else None}


def format_table(results: dict[str, float]) -> str:
    """The probe table printed at the end of a run: one row per probe, its metrics as columns of name=value."""
    rows: dict[str, list[str]] = {}
    for key, value in sorted(results.items()):
        _, probe, metric = key.split("/", 2)
        if metric == "seconds":
            continue
        shown = f"{value:g}" if metric.rsplit("/", 1)[-1] in ("ties", "n", "n_images", "n_texts", "max_tokens") else f"{value:.3f}"
        rows.setdefault(probe, []).append(f"{metric}={shown}")
    width = max((len(p) for p in rows), default=5)
    lines = [f"{'probe':<{width}}  results", f"{'-' * width}  {'-' * 60}"]
    for probe, cells in rows.items():
        for i in range(0, len(cells), 5):
            lines.append(f"{probe if i == 0 else '':<{width}}  " + "  ".join(cells[i:i + 5]))
    return "\n".join(lines)
