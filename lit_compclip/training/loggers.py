"""A run's loggers: metrics.csv (its rows whole, continued on resume) and W&B (online only with credentials, logging
into the same W&B run on resume), closed when the run ends."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from lit_compclip.reports.wandb_runs import wandb_mode


def build_loggers(cfg: DictConfig, run_dir: str, resume=None):
    """CSV (run_dir/metrics.csv) and W&B loggers; a resumed run (`resume`: lit_compclip.training.resume.Resume) appends to
    the folder's metrics.csv and W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    from lit_compclip.training.callbacks import WholeRowsCSVLogger
    from lit_compclip.training.resume import continue_csv, wandb_id

    # Rows reach the file every log step, so a killed run loses none it logged before its last checkpoint.
    csv_logger = WholeRowsCSVLogger(save_dir=run_dir, name="", version="",
                                    flush_logs_every_n_steps=cfg.trainer.log_every_n_steps)
    if resume is not None:
        continue_csv(csv_logger, resume.global_step)
    loggers = [csv_logger]
    mode = wandb_mode(cfg.wandb.mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        same_run = {"id": wandb_id(run_dir), "resume": "allow"} if resume is not None and wandb_id(run_dir) else {}
        wandb_logger = WandbLogger(name=os.path.basename(run_dir), save_dir=run_dir, project=cfg.wandb.project,
                                   entity=cfg.wandb.entity, tags=list(cfg.wandb.tags), mode=mode,
                                   config=OmegaConf.to_container(cfg), **same_run)
        # Lightning passes `anonymous=None` to wandb.init when it is not asked for, and wandb (0.2x on) prints "The
        # anonymous setting has no effect" for any value passed, None included, even with WANDB_SILENT set.
        init = getattr(wandb_logger, "_wandb_init", {})
        if "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
        loggers.append(wandb_logger)
    return loggers, mode


def finish_wandb(loggers) -> None:
    """Close this run's W&B run: a later run in the same process (a notebook, a test) would otherwise log into it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
