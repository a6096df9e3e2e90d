"""The CLIP-style LightningModule: an image tower and a text tower under the global-batch InfoNCE loss (plus any
hard-negative captions the batch carries)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lit_compclip.losses import info_nce, info_nce_with_negatives
from lit_compclip.towers import build_text_tower
from lit_compclip.towers.image import ImageTower


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process in rank order; gradients flow back to each process's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_varying_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`gather_with_grad` for row counts that differ between processes (even 0): padded to the largest, then cut."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    world = torch.distributed.get_world_size()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    torch.distributed.all_gather(counts, torch.tensor([len(x)], device=x.device))
    counts = [int(c) for c in counts]
    if max(counts) == 0:
        return x  # every rank agrees: nothing to gather
    # x is in the autograd graph even with no rows, so every rank joins the backward all-gather
    padded = torch.cat([x, x.new_zeros(max(counts) - len(x), *x.shape[1:])])  # (max count, D)
    return torch.cat([part[:n] for part, n in zip(dist_fn.all_gather(padded), counts)])


def cosine_schedule(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CompClip(L.LightningModule):
    def __init__(self, model: dict[str, Any], optim: dict[str, Any], total_steps: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.image = ImageTower(embed_dim=model["embed_dim"], **model["image"])
        self.text = build_text_tower(model["text"], embed_dim=model["embed_dim"])
        self.log_logit_scale = nn.Parameter(torch.tensor(float(model["init_logit_scale"])))
        self.max_logit_scale = float(model["max_logit_scale"])
        self.optim = optim
        self.total_steps = total_steps
        self.train_transform, self.eval_transform = self.image.transforms()
        self.skipped = 0
        self.no_negative = 0  # training samples for which the hard-negative source made nothing

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images), dim=-1)  # (B, D)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.text.tokenize(texts).items()}
        return F.normalize(self.text(tokens), dim=-1)  # (B, D)

    def _loss(self, batch, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Only training batches with data.hard_negatives on carry "negatives" (on some ranks maybe an empty list).
        hard = "negatives" in batch
        b = len(batch["caption"])
        image_emb = self.encode_image(batch["image"])
        texts = self.encode_text(list(batch["caption"]) + (list(batch["negatives"]) if hard else []))  # (B + M, D)
        text_emb, negative_emb = texts[:b], texts[b:]  # (B, D), (M, D)
        if gather:
            image_emb, text_emb = gather_with_grad(image_emb), gather_with_grad(text_emb)  # (global B, D)
            negative_emb = gather_varying_with_grad(negative_emb) if hard else negative_emb  # (global M, D)
        if hard:
            return info_nce_with_negatives(image_emb, text_emb, negative_emb, self.logit_scale), image_emb, text_emb
        return info_nce(image_emb, text_emb, self.logit_scale), image_emb, text_emb

    def training_step(self, batch, batch_idx):
        loss, image_emb, text_emb = self._loss(batch)
        self.skipped += int(batch.get("skipped", 0))
        n = len(batch["caption"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", self.logit_scale.detach(), batch_size=n)
        self.log("data/skipped", float(self.skipped), reduce_fx="max", batch_size=n)
        self.log("train/truncated_fraction", self.text.count_truncated(batch["caption"]) / n, batch_size=n)
        if "negatives" in batch:
            self.no_negative += int(batch.get("no_negative", 0))
            self.log("train/negatives_per_sample", len(batch["negatives"]) / n, batch_size=n)
            self.log("data/no_negative", float(self.no_negative), reduce_fx="max", batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        # Per-process batches: ranks may hold different numbers of validation batches, so no collective here.
        loss, image_emb, text_emb = self._loss(batch, gather=False)
        logits = image_emb @ text_emb.T  # (B, B)
        labels = torch.arange(len(logits), device=logits.device)
        n = len(batch["caption"])
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/i2t_batch_acc", (logits.argmax(1) == labels).float().mean(), batch_size=n, sync_dist=True)
        self.log("val/t2i_batch_acc", (logits.argmax(0) == labels).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        o = self.optim
        text_lr = o["text_lr"] if o["text_lr"] is not None else o["lr"]
        groups = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # CLIP's rule: no weight decay on gains, biases, embeddings' norms and the temperature.
            decay = p.ndim >= 2 and "logit_scale" not in name
            pretrained = name.startswith("text.st.")
            key = (decay, pretrained)
            groups.setdefault(key, {"params": [], "weight_decay": o["weight_decay"] if decay else 0.0,
                                    "lr": text_lr if pretrained else o["lr"]})["params"].append(p)
        optimizer = torch.optim.AdamW(list(groups.values()), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = self.total_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the learning-rate schedule needs a length: set trainer.max_steps or "
                             "data.samples_per_epoch")
        frozen = int(o.get("text_frozen_steps", 0))

        def rate(pretrained: bool):
            # Pretrained text layers may wait `frozen` steps (rate 0) so the image tower first learns against
            # their untouched features; then they warm up and decay like the rest.
            if pretrained and frozen:
                return lambda step: 0.0 if step < frozen else cosine_schedule(
                    step - frozen, o["warmup_steps"], max(1, int(total) - frozen), o["min_lr_ratio"])
            return lambda step: cosine_schedule(step, o["warmup_steps"], int(total), o["min_lr_ratio"])

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [rate(pretrained) for _, pretrained in groups])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
