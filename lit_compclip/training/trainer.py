"""The Lightning Trainer's arguments from cfg.trainer: precision by device, BatchNorm synced where it can be, FSDP
units made of both towers' blocks, and the checkpoint callbacks."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from lit_compclip.errors import ConfigError


def trainer_options(cfg: DictConfig, model) -> dict:
    """Lightning Trainer keyword arguments from `cfg.trainer`: an unset precision chosen by device, and
    strategy=fsdp built as an FSDPStrategy that makes each transformer block of both towers one FSDP unit."""
    import torch

    t = OmegaConf.to_container(cfg.trainer)
    fsdp = t.pop("fsdp")
    t.pop("checkpoint_every_n_steps")  # a ModelCheckpoint option (checkpoint_callbacks), not a Trainer one
    gpu = torch.cuda.is_available() and t["accelerator"] in ("auto", "gpu", "cuda")
    if t["precision"] is None:
        t["precision"] = "bf16-mixed" if gpu else "32-true"
    # BatchNorm (model.image.stem_norm=batch) normalises over each process's share of the batch; synced across GPUs,
    # the loss stays the global batch's. torch syncs it only on GPUs: on CPU each process would keep its own.
    batchnorm = model is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    t["sync_batchnorm"] = gpu and batchnorm
    processes = t["num_nodes"] * (t["devices"] if isinstance(t["devices"], int) else len(str(t["devices"]).split(",")))
    if batchnorm and not gpu and (processes > 1 or t["devices"] == -1):
        raise ConfigError("model.image.stem_norm=batch: BatchNorm cannot be synced across CPU processes (torch syncs "
                          "it on GPUs only), so the loss would not be the global batch's; use model.image.stem_norm=group")
    if t["strategy"] == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        if getattr(model.model.text, "cache_options", None):  # its namespace hashes weights FSDP shards per rank
            raise ConfigError("model.text.cache_dir: the frozen-layer cache does not work with trainer.strategy=fsdp;"
                              " set model.text.cache_dir=null")

        # Activation checkpointing stays the towers' own option (model.image/text.grad_checkpointing), one mechanism
        # with or without FSDP; Lightning refuses FSDP without a GPU.
        t["strategy"] = FSDPStrategy(auto_wrap_policy=block_classes(model), **fsdp)
    return t


def block_classes(model) -> set[type]:
    """The block classes of both towers (a timm ViT's Block, BertLayer, nn.TransformerEncoderLayer, ...): the
    largest stack of same-class modules in the image trunk, the longest layer list of the text tower."""
    from torch import nn

    from lit_compclip.towers.pretrained import transformer_layers

    stacks = [m for m in model.model.image.trunk.modules()
              if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) and len({type(c) for c in m}) == 1]
    if not stacks:
        raise ValueError(f"trainer.strategy=fsdp: no stack of blocks in the image trunk "
                         f"{type(model.model.image.trunk).__name__} to shard")
    return {type(max(stacks, key=len)[0]), type(transformer_layers(model.model.text)[0])}


def checkpoint_callbacks(cfg: DictConfig, run_dir: str) -> list:
    """checkpoints/last.ckpt at every epoch end and, with trainer.checkpoint_every_n_steps, every N steps too."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = os.path.join(run_dir, "checkpoints")
    # no version counter: both callbacks overwrite the one last.ckpt instead of writing last-v1.ckpt beside it
    callbacks = [ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, enable_version_counter=False)]
    if cfg.trainer.checkpoint_every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, enable_version_counter=False,
                                         every_n_train_steps=cfg.trainer.checkpoint_every_n_steps))
    return callbacks
