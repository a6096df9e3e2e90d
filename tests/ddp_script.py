"""Run as a subprocess by test_ddp.py: one training step of a tiny CompClip per mode, in one process and then in two
DDP processes (CPU, gloo).

Usage: ddp_script.py OUT SINGLE_MODE[,...] DDP_MODE[,...]. Writes {"single": {mode: ...}, "ddp": {mode: ...}} with,
as rank 0 sees them: the logged train/loss, rank 0's own step loss, the synchronised gradients, the updated weights
and how many gradient buckets DDP all-reduced.
"""

import os
import sys

import lightning as L
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, IterableDataset

from lit_compclip.model import CompClip, rank_and_world

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
MODES = {  # name -> (model keys, optim keys, with hard negatives)
    "full": ({"local_loss": False}, {}, False),
    "full_negatives": ({"local_loss": False}, {}, True),
    "local": ({"local_loss": True}, {}, False),
    "local_negatives": ({"local_loss": True}, {}, True),
    # per rank: images (2, 2), texts (2, 2, 2) or (2, 2, 1): more text than image micro-batches, an uneven last one
    "grad_cache_negatives": ({"local_loss": True}, {"micro_batch_size": 2}, True),
}


def global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    captions = [f"a {c} {s}" for c, s in zip("red blue green white red blue green white".split(),
                                             "circle square star cross star circle cross square".split())]
    return images, captions


class RankSlice(IterableDataset):
    """Rank r of w gets the r-th contiguous slice of the global batch, so rank order = single-process order."""

    def __init__(self, negatives: bool):
        self.negatives = negatives

    def __iter__(self):
        rank, world = rank_and_world()
        images, captions = global_batch()
        n = GLOBAL_BATCH // world
        batch = {"image": images[rank * n:(rank + 1) * n], "caption": captions[rank * n:(rank + 1) * n], "skipped": 0}
        if self.negatives:
            batch["negatives"] = NEGATIVES[NEGATIVE_SLICES[world][rank]]
        yield batch


class Record(L.Callback):
    def __init__(self):
        self.out, self.buckets = {}, []

    def on_train_start(self, trainer, module):
        if trainer.world_size > 1:  # Lightning registers DDP communication hooks on GPUs only: count the all-reduces
            trainer.strategy.model.register_comm_hook(None, self.counting_allreduce)

    def counting_allreduce(self, state, bucket):
        self.buckets.append(bucket.index())
        return allreduce_hook(state, bucket)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.out["grads"] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.out["own_loss"] = outputs["loss"].detach().clone()
        self.out["weights"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def run(devices: int, mode: str) -> dict:
    model_keys, optim_keys, negatives = MODES[mode]
    L.seed_everything(0, verbose=False)
    model = CompClip({**MODEL, **model_keys}, {**OPTIM, **optim_keys}, total_steps=1)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[record], use_distributed_sampler=False)
    trainer.fit(model, DataLoader(RankSlice(negatives), batch_size=None))
    logged = trainer.callback_metrics["train/loss"].clone()
    return {**record.out, "loss": logged, "allreduced_buckets": len(record.buckets)}


def main(out: str, single_modes: list[str], ddp_modes: list[str]):
    # One launch for everything (starting Python and DDP is most of the time): the single-process steps run first,
    # before DDP exists; Lightning then re-runs this script as rank 1 (LOCAL_RANK set), which skips them. The DDP
    # processes and their group outlive each fit, so DDP starts once.
    single = {mode: run(1, mode) for mode in single_modes} if "LOCAL_RANK" not in os.environ else {}
    ddp = {mode: run(2, mode) for mode in ddp_modes}
    if torch.distributed.get_rank() == 0:
        torch.save({"single": single, "ddp": ddp}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","))
