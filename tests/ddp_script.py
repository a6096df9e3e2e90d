"""Run as a subprocess by test_ddp.py: one training step of a tiny CompClip on 1 or 2 CPU processes (gloo).

Writes the step's loss, the synchronised gradients and the updated weights, as rank 0 sees them, to OUT.
"""

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_compclip.model import CompClip

GLOBAL_BATCH = 8
MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
# A large eps makes AdamW's first step linear in the gradient, so the weights compare as tightly as the gradients.
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1.0, "warmup_steps": 0,
         "min_lr_ratio": 0.0}


def global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    captions = [f"a {c} {s}" for c, s in zip("red blue green white red blue green white".split(),
                                             "circle square star cross star circle cross square".split())]
    return images, captions


class RankSlice(IterableDataset):
    """Rank r of w gets the r-th contiguous slice of the global batch, so rank order = single-process order."""

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        images, captions = global_batch()
        n = GLOBAL_BATCH // world
        yield {"image": images[rank * n:(rank + 1) * n], "caption": captions[rank * n:(rank + 1) * n], "skipped": 0}


class Record(L.Callback):
    def __init__(self):
        self.out = {}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.out["grads"] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.out["loss"] = outputs["loss"].detach().clone()
        self.out["weights"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def main(devices: int, out: str):
    L.seed_everything(0, verbose=False)
    model = CompClip(MODEL, OPTIM, total_steps=1)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[record], use_distributed_sampler=False)
    trainer.fit(model, DataLoader(RankSlice(), batch_size=None))
    if trainer.is_global_zero:
        torch.save(record.out, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
