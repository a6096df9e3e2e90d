"""Which process this is among a run's ranks: one Lightning launched, or one torchrun or srun started apart."""

from __future__ import annotations

import os


def launched_rank() -> bool:
    """True in a process started as a non-zero rank (Lightning's launcher, torchrun or SLURM)."""
    return any(os.environ.get(k, "0") != "0" for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK"))


def launched_apart() -> bool:
    """True when torchrun or srun started every rank, rank 0 too: no rank can hand its run folder to the others."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1
