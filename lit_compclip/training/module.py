"""The LightningModule: the library's CompClipModel (lit_compclip.model) trained under the global-batch InfoNCE loss
(plus any hard-negative captions the batch carries), optionally as each process's share and over micro-batches
(GradCache)."""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy

from lit_compclip.config.schema import ADAMW_IMPLEMENTATIONS
from lit_compclip.losses import info_nce, info_nce_local, info_nce_with_negatives
from lit_compclip.model import CompClipModel


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process in rank order; gradients flow back to each process's own rows."""
    if rank_and_world()[1] == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_varying_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`gather_with_grad` for row counts that differ between processes (even 0): padded to the largest, then cut."""
    world = rank_and_world()[1]
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


def batch_texts(batch) -> list[str]:
    """The captions, then the batch's hard-negative captions (training batches with data.hard_negatives on carry
    "negatives", on some ranks maybe an empty list)."""
    return list(batch["caption"]) + list(batch.get("negatives", []))


def rng_state(device: torch.device) -> tuple:
    """The generators dropout draws from: the CPU's, and the current GPU's on CUDA."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def unwrapped_name(name: str) -> str:
    """A parameter's name without the prefixes FSDP, activation checkpointing and torch.compile wrappers add."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def cosine_schedule(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CompClip(L.LightningModule):
    """Trains a CompClipModel (`self.model`, lit_compclip.model): the loss, GradCache, the optimizer and schedule."""

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], total_steps: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = CompClipModel.from_config(model)
        self.optim = optim
        self.total_steps = total_steps
        self.no_negative = 0  # training samples for which the hard-negative source made nothing
        # The loss and the step, see docs/SCALING.md.
        self.local_loss = bool(model.get("local_loss", True))
        self.micro_batch_size = optim.get("micro_batch_size")
        self.automatic_optimization = not self.micro_batch_size  # GradCache steps the optimizer itself
        self.manual_clip_val: float | None = None  # GradCache's gradient clipping, set by train(): see there
        self._sync_blocked = ExitStack()
        # The matrices (weight decay applies to them), named before any wrapper flattens them (FSDP does).
        self.matrix_names = {n for n, p in self.named_parameters() if p.ndim >= 2}

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    # The training step encodes through these two (GradCache's tests count their calls).
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)  # (B, D)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(texts)  # (B, D)

    def _loss(self, batch, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, this process's image and caption embeddings) of a batch encoded in one go."""
        b = len(batch["caption"])
        image_emb = self.encode_image(batch["image"])  # (b, D)
        text_emb = self.encode_text(batch_texts(batch))  # (b + m, D): captions, then any hard negatives
        return self._contrastive(image_emb, text_emb, "negatives" in batch, gather), image_emb, text_emb[:b]

    def _contrastive(self, image_emb: torch.Tensor, text_emb: torch.Tensor, hard: bool,
                     gather: bool = True) -> torch.Tensor:
        """InfoNCE of this process's (b, D) images and (b + m, D) captions then hard negatives against every
        process's (gather): this process's share of it (model.local_loss) or the whole of it on every process."""
        b = len(image_emb)
        text_emb, negative_emb = text_emb[:b], text_emb[b:]  # (b, D), (m, D)
        rank, world = rank_and_world()
        if gather and world > 1:
            image_all, text_all = gather_with_grad(image_emb), gather_with_grad(text_emb)  # (B, D)
            negative_all = gather_varying_with_grad(negative_emb) if hard else None  # (M, D)
            if self.local_loss:  # ranks hold equal b: training batches are never partial
                return info_nce_local(image_emb, text_emb, image_all, text_all, self.logit_scale, rank * b,
                                      negative_all)
            image_emb, text_emb, negative_emb = image_all, text_all, negative_all
        if hard:
            return info_nce_with_negatives(image_emb, text_emb, negative_emb, self.logit_scale)
        return info_nce(image_emb, text_emb, self.logit_scale)

    def training_step(self, batch, batch_idx):
        loss = self._grad_cache_step(batch) if self.micro_batch_size else self._loss(batch)[0]
        n = len(batch["caption"])
        # A local loss is this process's share; their mean (sync_dist) is the global-batch loss.
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=self.local_loss)
        self.log("train/logit_scale", self.logit_scale.detach(), batch_size=n)
        if self._logs_this_step():  # the count re-tokenizes the captions: only where Lightning writes the value
            self.log("train/truncated_fraction", self.model.text.count_truncated(batch["caption"]) / n,
                     batch_size=n)
        if "negatives" in batch:
            self.no_negative += int(batch.get("no_negative", 0))
            self.log("train/negatives_per_sample", len(batch["negatives"]) / n, batch_size=n)
            self.log("data/no_negative", float(self.no_negative), reduce_fx="max", batch_size=n)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's metrics (every trainer.log_every_n_steps; step values logged in
        between are dropped); True outside a Trainer."""
        trainer = self._trainer
        return trainer is None or (self.global_step + 1) % max(1, trainer.log_every_n_steps) == 0

    def on_train_batch_start(self, batch, batch_idx):
        if self.micro_batch_size and isinstance(self.trainer.strategy, ParallelStrategy):
            # GradCache runs a backward per micro-batch and DDP must sync only the last one: its sync stays off
            # from the forward that Lightning wraps around training_step (where DDP would arm it) until then.
            self._sync_blocked.enter_context(self.trainer.strategy.block_backward_sync())

    def _micro_steps(self, batch) -> list[tuple[torch.Tensor | None, list[str] | None]]:
        """The batch's images and texts in micro-batches, paired into steps; the shorter list is padded with None
        at the front, so that the last step holds both and its backward reaches every parameter."""
        m = self.micro_batch_size
        images, texts = list(batch["image"].split(m)), batch_texts(batch)
        texts = [texts[i:i + m] for i in range(0, len(texts), m)]
        n = max(len(images), len(texts))
        return list(zip([None] * (n - len(images)) + images, [None] * (n - len(texts)) + texts))

    def _encode_steps(self, steps) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
        """GradCache's pass 1 (the caller turns grad off): every step's embeddings and the RNG state it began in."""
        images, texts, states = [], [], []
        for image_chunk, text_chunk in steps:
            states.append(rng_state(self.device))
            if image_chunk is not None:
                images.append(self.encode_image(image_chunk))
            if text_chunk is not None:
                texts.append(self.encode_text(text_chunk))
        return torch.cat(images), torch.cat(texts), states  # (b, D), (b + m, D)

    def _grad_cache_step(self, batch) -> torch.Tensor:
        """One optimizer step (manual optimization) on the whole batch, its gradients from `_grad_cache_backward`."""
        opt, schedule = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        if len(batch["caption"]) <= self.micro_batch_size:  # off: one forward and backward, as without GradCache
            self._sync_blocked.close()
            loss = self._loss(batch)[0]
            self.manual_backward(loss)
        else:
            loss = self._grad_cache_backward(batch)
        if self.manual_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.manual_clip_val, gradient_clip_algorithm="norm")
        opt.step()
        schedule.step()
        return loss.detach()

    def _grad_cache_backward(self, batch) -> torch.Tensor:
        """GradCache (Gao et al. 2021): the whole batch's loss, its parameter gradients accumulated micro-batch by
        micro-batch. (1) embed without grad; (2) the loss's gradient w.r.t. the embeddings and the logit scale;
        (3) embed each micro-batch again, with grad and from the same RNG state, and backpropagate its slice."""
        steps = self._micro_steps(batch)
        with torch.no_grad():
            image_emb, text_emb, states = self._encode_steps(steps)  # (b, D), (b + m, D)
        image_emb.requires_grad_()
        text_emb.requires_grad_()
        loss = self._contrastive(image_emb, text_emb, "negatives" in batch)
        # autograd.grad, not backward: no parameter's .grad (nor DDP's hook) is touched by this pass
        image_grad, text_grad, scale_grad = torch.autograd.grad(loss, [image_emb, text_emb, self.model.log_logit_scale])
        image_grads = iter(image_grad.split([len(images) for images, _ in steps if images is not None]))
        text_grads = iter(text_grad.split([len(texts) for _, texts in steps if texts is not None]))
        for k, ((images, texts), state) in enumerate(zip(steps, states)):
            set_rng_state(state, self.device)  # the dropout masks of pass 1
            # d(surrogate)/d(parameters) = the cached gradients pulled back through this micro-batch's forward
            surrogate = 0.0
            if images is not None:
                surrogate = surrogate + (self.encode_image(images) * next(image_grads)).sum()
            if texts is not None:
                surrogate = surrogate + (self.encode_text(texts) * next(text_grads)).sum()
            if k == len(steps) - 1:
                surrogate = surrogate + (self.model.log_logit_scale * scale_grad).sum()
                self._sync_blocked.close()  # DDP syncs the accumulated gradients in this backward only
            self.manual_backward(surrogate)
        return loss

    # A running total of the whole run: a resumed run goes on counting from the checkpoint's.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.setdefault("data_counts", {})["no_negative"] = self.no_negative  # beside DataSkips' counts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.no_negative = checkpoint.get("data_counts", {}).get("no_negative", 0)

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
        pretrained_names = "model.text." + getattr(self.model.text, "pretrained_prefix", "\0")
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # CLIP's rule: no weight decay on gains, biases, embeddings' norms and the temperature. Shapes are
            # read from the names recorded at build time: FSDP has flattened every parameter to 1-D by now.
            decay = unwrapped_name(name) in self.matrix_names and "logit_scale" not in name
            pretrained = unwrapped_name(name).startswith(pretrained_names)
            key = (decay, pretrained)
            groups.setdefault(key, {"params": [], "weight_decay": o["weight_decay"] if decay else 0.0,
                                    "lr": text_lr if pretrained else o["lr"]})["params"].append(p)
        optimizer = torch.optim.AdamW(list(groups.values()), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                      **ADAMW_IMPLEMENTATIONS[o.get("implementation")])
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

