"""Continuing an interrupted run: which checkpoint and run folder `resume` names, checked before anything heavy."""

from __future__ import annotations

import csv
import glob
import os
import random
import re
from dataclasses import dataclass

import lightning as L
from omegaconf import DictConfig

from lit_compclip.errors import ConfigError

RESUME_ENV = "LIT_COMPCLIP_RESUME"  # rank 0's checkpoint ("" = a fresh run), inherited by the processes it launches


@dataclass
class Resume:
    path: str  # the checkpoint Lightning restores (a file, or a folder for sharded FSDP checkpoints)
    run_dir: str | None  # the folder the run continues in; None: a fresh folder
    global_step: int | None
    shapes: dict | None  # weight name -> shape, to check the configured model before training starts


def run_candidates(cfg: DictConfig) -> list[str]:
    """The folders `resume=last/auto` looks in: run_dir, or runs/<name> and its -2, -3, ... siblings."""
    if cfg.run_dir:
        return [cfg.run_dir]
    base = os.path.join("runs", cfg.name)
    return [base] + [p for p in glob.glob(glob.escape(base) + "-*") if re.fullmatch(r"\d+", p[len(base) + 1:])]


def latest_checkpoint(cfg: DictConfig) -> str | None:
    """The newest checkpoints/last.ckpt among the run's folders (see run_candidates), or None."""
    found = [os.path.join(d, "checkpoints", "last.ckpt") for d in run_candidates(cfg)]
    found = [p for p in found if os.path.exists(p)]
    return max(found, key=os.path.getmtime) if found else None


def run_dir_of(checkpoint: str) -> str | None:
    """<run>/checkpoints/x.ckpt -> <run> when that holds a run's config.yaml; else None."""
    run = os.path.normpath(os.path.join(checkpoint, os.pardir, os.pardir))
    in_checkpoints = os.path.basename(os.path.dirname(os.path.normpath(checkpoint))) == "checkpoints"
    return run if in_checkpoints and os.path.isfile(os.path.join(run, "config.yaml")) else None


def read_checkpoint(path: str) -> dict | None:
    """The training checkpoint file's dict with its tensors memory-mapped (nothing big is read), or None for a
    sharded FSDP folder once every pickle in it is checked; a one-line ConfigError otherwise."""
    from lit_compclip.checkpoints import check_sharded, read_training_checkpoint

    try:
        if os.path.isdir(path):
            check_sharded(path)
            return None
        return read_training_checkpoint(path)
    except ConfigError as e:
        raise ConfigError(f"resume: {e}") from None


def resume_point(cfg: DictConfig, launched_rank: bool) -> Resume | None:
    """What `resume` names (a path, `last`, or `auto` = last if any, else None: a fresh run); the run folder is
    run_dir if set, else the checkpoint's own run folder. Processes Lightning launches take rank 0's answer."""
    if not cfg.resume:
        return None
    if launched_rank and RESUME_ENV in os.environ:
        path = os.environ[RESUME_ENV]
        return Resume(path, None, None, None) if path else None
    path = cfg.resume
    if path in ("last", "auto"):
        path = latest_checkpoint(cfg)
        if path is None and cfg.resume == "auto":
            return None
        if path is None:
            where = " or ".join(os.path.join(d, "checkpoints", "last.ckpt") for d in run_candidates(cfg)[:3])
            raise ConfigError(f"resume=last: no checkpoint at {where}; set run_dir to the run's folder, name a "
                              f"checkpoint file, or use resume=auto to start fresh when there is none")
    checkpoint = read_checkpoint(path)
    if checkpoint is None:  # a sharded (FSDP) folder: Lightning checks its weights' shapes
        return Resume(path, cfg.run_dir or run_dir_of(path), None, None)
    shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
    return Resume(path, cfg.run_dir or run_dir_of(path), int(checkpoint["global_step"]), shapes)


def weight_problems(source: dict, target: dict) -> list[str]:
    """How weights {name: shape} of a checkpoint (`source`) fail to fit a model's (`target`); [] if they fit."""
    missing, unexpected = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    shapes = [k for k in target if k in source and tuple(source[k]) != tuple(target[k])]
    problems = [f"{len(shapes)} weight(s) of another shape, e.g. {shapes[0]!r} {tuple(source[shapes[0]])} "
                f"there vs {tuple(target[shapes[0]])} here"] if shapes else []
    problems += [f"{len(missing)} weight(s) missing, e.g. {missing[0]!r}"] if missing else []
    problems += [f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]!r}"] if unexpected else []
    return problems


def check_fits(resume: Resume, model) -> None:
    """A checkpoint of another model is a one-line ConfigError before the run folder is touched."""
    if resume.shapes is None:
        return
    problems = weight_problems(resume.shapes, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if problems:
        raise ConfigError(f"resume: checkpoint {resume.path!r} does not fit the configured model "
                          f"({'; '.join(problems)}); resume with the model settings of its run (config.yaml)")


def continue_csv(logger, step: int | None) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it starts: put back the rows logged before `step`
    (later ones are logged again by the resumed run) and keep their header."""
    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    if step is not None:
        rows = [r for r in rows if not r.get("step") or float(r["step"]) < step]
    writer = logger.experiment  # created now: this deletes the file
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys = header  # new metrics extend this header; appended rows keep its column order


def wandb_id(run_dir: str) -> str | None:
    """The id of the run folder's newest W&B run (wandb/[offline-]run-DATE_TIME-ID), to log into it again."""
    runs = glob.glob(os.path.join(run_dir, "wandb", "*run-*-*"))
    return max(runs, key=os.path.getmtime).rsplit("-", 1)[1] if runs else None


class RandomState(L.Callback):
    """A callback whose state is this process's random generators: saved with every checkpoint, restored on resume,
    so random choices in training (dropout) continue as in the uninterrupted run. (The data stream seeds its own.)"""

    def state_dict(self) -> dict:
        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors and plain values only: Lightning reads checkpoints with torch.load(weights_only=True)
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        import numpy as np
        import torch

        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
