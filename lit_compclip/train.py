"""Builds everything a run needs from a checked config, trains, and leaves the run folder behind."""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import tarfile
import warnings

from omegaconf import DictConfig, OmegaConf

from lit_compclip.config import ConfigError

log = logging.getLogger(__name__)


RUN_DIR_ENV = "LIT_COMPCLIP_RUN_DIR"  # rank 0's choice, inherited by the processes Lightning launches


def _launched_rank() -> bool:
    """True in a process started as a non-zero rank (Lightning's launcher, torchrun or SLURM)."""
    return any(os.environ.get(k, "0") != "0" for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK"))


def unique_run_dir(cfg: DictConfig) -> str:
    """runs/<name>, or runs/<name>-2, -3, ... so that an earlier run's files are never overwritten.

    Other ranks take rank 0's folder (handed down in the environment), or the plain name when launched apart
    (torchrun, SLURM: set run_dir explicitly there)."""
    base = cfg.run_dir or os.path.join("runs", cfg.name)
    if _launched_rank():
        return os.environ.get(RUN_DIR_ENV, base)
    path, n = base, 1
    while os.path.isdir(path) and os.listdir(path):
        n += 1
        path = f"{base}-{n}"
    return path


def ensure_synth(cfg: DictConfig) -> None:
    """Build the synthetic world on first use when the configured data lives inside `synth.out_dir`."""
    out = os.path.normpath(cfg.synth.out_dir)
    paths = [cfg.data.train_shards, cfg.data.val_shards or ""]
    paths += [str(v) for suite in cfg.probes.suites.values() for v in suite.values()]
    uses_synth = any(os.path.normpath(p).startswith(out + os.sep) for p in paths if p)
    if cfg.synth.auto and uses_synth and not os.path.exists(os.path.join(out, "manifest.json")):
        print(f"building the synthetic world in {out} (once) ...", flush=True)
        build_synth(cfg)


def build_synth(cfg: DictConfig, overwrite: bool = False) -> dict:
    """Generate the synthetic world described by `cfg.synth`; returns the generator's summary."""
    from lit_compclip.synth import generate

    args = OmegaConf.to_container(cfg.synth)
    out = args.pop("out_dir")
    args.pop("auto")
    return generate(out, overwrite=overwrite, **args)


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
    from lit_compclip.callbacks import build_probes
    from lit_compclip.data.datamodule import expand_shards

    try:
        for key in ("train_shards", "val_shards"):
            if cfg.data[key]:
                expand_shards(cfg.data[key])
        return build_probes(cfg.probes.suites, cfg.probes.get("limit"))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def total_steps(cfg: DictConfig) -> int:
    """Optimizer steps of the whole run, which the cosine schedule needs up front."""
    from lit_compclip.data.datamodule import expand_shards

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
    from lit_compclip.evaluate import load_module

    try:
        source = load_module(path).state_dict()
    except ConfigError as e:
        raise ConfigError(f"init_from: {e}") from None
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    shapes = [k for k in target if k in source and source[k].shape != target[k].shape]
    problems = [f"{len(shapes)} weight(s) of another shape, e.g. {shapes[0]!r} {tuple(source[shapes[0]].shape)} "
                f"there vs {tuple(target[shapes[0]].shape)} here"] if shapes else []
    problems += [f"{len(missing)} weight(s) missing, e.g. {missing[0]!r}"] if missing else []
    problems += [f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]!r}"] if unexpected else []
    if problems:
        raise ConfigError(f"init_from: checkpoint {path!r} does not fit the configured model ({'; '.join(problems)});"
                          f" use the model settings it was trained with")
    model.load_state_dict(source)


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = os.path.expanduser("~/.netrc")
    has_key = os.environ.get("WANDB_API_KEY") or (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read())
    return "online" if has_key else "offline"


def build_loggers(cfg: DictConfig, run_dir: str):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = [CSVLogger(save_dir=run_dir, name="", version="")]
    mode = wandb_mode(cfg.wandb.mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(name=os.path.basename(run_dir), save_dir=run_dir, project=cfg.wandb.project,
                                   entity=cfg.wandb.entity, tags=list(cfg.wandb.tags), mode=mode,
                                   config=OmegaConf.to_container(cfg)))
    return loggers, mode


def train(cfg: DictConfig) -> dict:
    """Run one experiment; returns {"run_dir", "probes" (final results), "wandb_mode"}."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lit_compclip.callbacks import ProbeCallback, ProgressLines
    from lit_compclip.data.datamodule import WebDataModule
    from lit_compclip.model import CompClip

    if cfg.init_from and not os.path.isfile(cfg.init_from):  # before the synthetic world is built (minutes)
        raise ConfigError(f"init_from: checkpoint {cfg.init_from!r} not found")
    ensure_synth(cfg)
    probes = check_inputs(cfg)
    steps = total_steps(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Expected here, and alarming to a newcomer: frozen text layers are in eval mode on purpose, config.yaml is
    # written into the run folder before the CSV logger starts, and one loader worker is the CPU default.
    for pattern in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*", ".*exists and is not empty.*",
                    ".*treespec.*"):
        warnings.filterwarnings("ignore", pattern)

    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=steps)
    if cfg.init_from:
        init_weights(model, cfg.init_from)  # before the run folder exists: a bad checkpoint leaves nothing behind
    run_dir = unique_run_dir(cfg)
    if not _launched_rank():
        os.makedirs(run_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
        os.environ[RUN_DIR_ENV] = run_dir
    data = WebDataModule(**OmegaConf.to_container(cfg.data), seed=cfg.seed,
                         train_transform=model.train_transform, eval_transform=model.eval_transform)
    loggers, mode = build_loggers(cfg, run_dir)
    probe_cb = ProbeCallback(probes, cfg.probes.every_n_epochs, run_dir, cfg.probes.dump, cfg.probes.failures)
    callbacks = [probe_cb, ModelCheckpoint(dirpath=os.path.join(run_dir, "checkpoints"), save_last=True,
                                           save_top_k=0), LearningRateMonitor("step")]
    if not (sys.stdout.isatty() and cfg.trainer.enable_progress_bar):
        callbacks.append(ProgressLines(steps))  # a progress bar is invisible in logs and pipes
    t = OmegaConf.to_container(cfg.trainer)
    if t["precision"] is None:
        gpu = torch.cuda.is_available() and t["accelerator"] in ("auto", "gpu", "cuda")
        t["precision"] = "bf16-mixed" if gpu else "32-true"
    trainer = L.Trainer(**t, logger=loggers, callbacks=callbacks, default_root_dir=run_dir,
                        num_sanity_val_steps=0)
    try:
        trainer.fit(model, data)
    finally:
        finish_wandb(loggers)
    return {"run_dir": run_dir, "is_global_zero": trainer.is_global_zero, "probes": probe_cb.final, "wandb_mode": mode,
            "wandb_dir": next(iter(glob.glob(os.path.join(run_dir, "wandb", "*run-*"))), None)}


def finish_wandb(loggers) -> None:
    """Close this run's W&B run: a later run in the same process (a notebook, a test) would otherwise log into it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


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
