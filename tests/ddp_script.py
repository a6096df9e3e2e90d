"""Run as a subprocess by test_ddp.py: one training step of CompClip per mode (a tiny model, and the shipped default
with and without its dropout), in one process and then in two DDP processes (CPU, gloo); then, with mode `skips`, a
real epoch over WORK/shards.

Usage: ddp_script.py OUT SINGLE_MODE[,...] DDP_MODE[,...] WORK. Writes {"single": {mode: ...}, "ddp": {mode: ...}}
with, as rank 0 sees them: the logged train/loss, rank 0's own step loss, the synchronised gradients, the updated
weights and how many gradient buckets DDP all-reduced; for `skips`, the keys each rank trained on and the run folder
(WORK/run: metrics.csv, data_skips.json).
"""

import hashlib
import os
import sys

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, IterableDataset

from lit_compclip.training.callbacks import DataSkips
from lit_compclip.config import load_config
from lit_compclip.training.datamodule import WebDataModule
from lit_compclip.training.module import CompClip, rank_and_world, rng_state, set_rng_state
from helpers import DEFAULT

GLOBAL_BATCH = 8
MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
# A large eps makes AdamW's first step linear in the gradient, so the weights compare as tightly as the gradients.
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1.0, "warmup_steps": 0,
         "min_lr_ratio": 0.0}
# Hard negatives in rank order; ranks hold different numbers of them (2 and 1), as real batches do.
NEGATIVES = ["a white circle", "a green star", "a red square"]
NEGATIVE_SLICES = {1: [slice(0, 3)], 2: [slice(0, 2), slice(2, 3)]}
MODES = {  # name -> (base model, its changed keys, optim keys, with hard negatives)
    "full": ("small", {"local_loss": False}, {}, False),
    "full_negatives": ("small", {"local_loss": False}, {}, True),
    "local": ("small", {"local_loss": True}, {}, False),
    "local_negatives": ("small", {"local_loss": True}, {}, True),
    # per rank: images (2, 2), texts (2, 2, 2) or (2, 2, 1): more text than image micro-batches, an uneven last one
    "grad_cache_negatives": ("small", {"local_loss": True}, {"micro_batch_size": 2}, True),
    # the shipped model as load_config([DEFAULT], []) builds it: conv stem (GroupNorm), MiniLM whose two trained layers
    # run dropout, two length groups, the local loss
    "default": ("default", {}, {}, False),
    # the shipped model with its dropout at 0: nothing in the step is random, so the reference is one process's
    # plain step, the whole batch encoded at once (its length groups cut all 8 captions, each rank's cut 4)
    "default_no_dropout": ("default_no_dropout", {}, {}, False),
    "default_no_dropout_full_negatives": ("default_no_dropout", {"local_loss": False}, {}, True),
    "default_no_dropout_grad_cache_negatives": ("default_no_dropout", {}, {"micro_batch_size": 2}, True),
}
SKIP_BATCH = 4  # the `skips` epoch: 4 shards of 9 good samples (8 in whole batches), 2 loader workers per rank


def model_options(mode: str, work: str, devices: int) -> dict:
    base, keys = MODES[mode][:2]
    if base == "small":
        return {**MODEL, **keys}
    # a text cache of each process count's own: DDP's ranks compute their frozen prefix, never read the reference's
    shipped = load_config([DEFAULT], [f"cache_dir={work}/cache-{devices}"]).model
    return {**OmegaConf.to_container(shipped, resolve=True), **keys}


def without_dropout(model: CompClip) -> CompClip:
    """Dropout at 0 everywhere (the trained MiniLM layers): the step holds nothing random."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


class SharedMasks(CompClip):
    """The single-process reference for a model with dropout: each rank's share of the global batch is encoded from
    the random state every rank starts its step in (they are seeded alike), so the dropout masks are the DDP step's;
    the loss is then the whole batch's."""

    def _loss(self, batch, gather: bool = True):
        state, n = rng_state(self.device), len(batch["caption"]) // 2
        images, texts = [], []
        for share in (slice(0, n), slice(n, 2 * n)):
            set_rng_state(state, self.device)
            images.append(self.encode_image(batch["image"][share]))
            texts.append(self.encode_text(batch["caption"][share]))
        image_emb, text_emb = torch.cat(images), torch.cat(texts)  # (B, D) each
        return self._contrastive(image_emb, text_emb, False, gather), image_emb, text_emb


def global_batch(size: int = 16):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, size, size, generator=g)
    captions = [f"a {c} {s}" for c, s in zip("red blue green white red blue green white".split(),
                                             "circle square star cross star circle cross square".split())]
    return images, captions


class RankSlice(IterableDataset):
    """Rank r of w gets the r-th contiguous slice of the global batch, so rank order = single-process order."""

    def __init__(self, negatives: bool, size: int):
        self.negatives, self.size = negatives, size

    def __iter__(self):
        rank, world = rank_and_world()
        images, captions = global_batch(self.size)
        n = GLOBAL_BATCH // world
        batch = {"image": images[rank * n:(rank + 1) * n], "caption": captions[rank * n:(rank + 1) * n], "skipped": {}}
        if self.negatives:
            batch["negatives"] = NEGATIVES[NEGATIVE_SLICES[world][rank]]
        yield batch


class Record(L.Callback):
    def __init__(self):
        self.out, self.buckets = {}, []

    def on_train_start(self, trainer, module):
        if trainer.world_size > 1:  # Lightning registers DDP communication hooks on GPUs only: count the all-reduces
            trainer.strategy.model.register_comm_hook(None, self.counting_allreduce)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # the random state dropout draws from, as each rank starts the step (in rank order)
        state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        self.out["rng"] = [state] * trainer.world_size
        if trainer.world_size > 1:
            torch.distributed.all_gather_object(self.out["rng"], state)

    def counting_allreduce(self, state, bucket):
        self.buckets.append(bucket.index())
        return allreduce_hook(state, bucket)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.out["grads"] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.out["own_loss"] = outputs["loss"].detach().clone()
        self.out["weights"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def run(devices: int, mode: str, work: str) -> dict:
    """One step in float64: the claim is a mathematical equality, so what is left is rounding (~1e-15 of a tensor's
    norm), which no CPU's summation order can push near the test's tolerance."""
    base, _, optim_keys, negatives = MODES[mode]
    options = model_options(mode, work, devices)
    L.seed_everything(0, verbose=False)
    # with dropout, one process must draw each rank's masks to be the DDP step's reference (see SharedMasks)
    kind = SharedMasks if devices == 1 and base == "default" else CompClip
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # every module and tensor built in the step, the cached text prefix too
    try:
        model = kind(options, {**OPTIM, **optim_keys}, total_steps=1).double()
        if base == "default_no_dropout":
            without_dropout(model)
        return step(model, devices, negatives, options)
    finally:
        torch.set_default_dtype(previous)


def step(model, devices: int, negatives: bool, options: dict) -> dict:
    if devices == 1:  # as Lightning's DDP set-up does (reset_seed) after the model is built, so dropout draws alike
        L.seed_everything(0, verbose=False)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, precision="64-true",
                        enable_model_summary=False, callbacks=[record], use_distributed_sampler=False)
    trainer.fit(model, DataLoader(RankSlice(negatives, options["image"]["img_size"]), batch_size=None))
    logged = trainer.callback_metrics["train/loss"].clone()
    return {**record.out, "loss": logged, "allreduced_buckets": len(record.buckets)}


class Keys(L.Callback):
    """The keys this rank trained on; every rank's, in rank order, once training ends."""

    def __init__(self):
        self.mine, self.every_rank = [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.mine += batch["key"]

    def on_train_end(self, trainer, module):
        self.every_rank = [None] * trainer.world_size
        torch.distributed.all_gather_object(self.every_rank, self.mine)


def skips_run(work: str) -> dict:
    """One epoch of the tiny model on WORK/shards (broken samples among them), 2 loader workers per rank."""
    L.seed_everything(0, verbose=False)
    model = CompClip(MODEL, OPTIM, total_steps=4)
    data = WebDataModule(f"{work}/shards", None, {"txt": 1.0}, {}, SKIP_BATCH, 2, 0, True, False,
                         4 * 8, None, 0, model.model.train_transform, model.model.transform)
    keys, run_dir = Keys(), f"{work}/run"
    skips = DataSkips(run_dir)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, log_every_n_steps=1,
                        logger=CSVLogger(run_dir, name="", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[skips, keys], use_distributed_sampler=False)
    trainer.fit(model, data)
    return {"keys": keys.every_rank, "run_dir": run_dir, "skipped": skips.skipped}


def main(out: str, single_modes: list[str], ddp_modes: list[str], work: str):
    # One launch for everything (starting Python and DDP is most of the time): the single-process steps run first,
    # before DDP exists; Lightning then re-runs this script as rank 1 (LOCAL_RANK set), which skips them. The DDP
    # processes and their group outlive each fit, so DDP starts once.
    single = {mode: run(1, mode, work) for mode in single_modes} if "LOCAL_RANK" not in os.environ else {}
    ddp = {mode: run(2, mode, work) for mode in ddp_modes if mode != "skips"}
    if "skips" in ddp_modes:
        ddp["skips"] = skips_run(work)
    if torch.distributed.get_rank() == 0:
        torch.save({"single": single, "ddp": ddp}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4])
