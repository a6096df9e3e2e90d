"""Our model and its Lightning training loop as a benchmark arm: the model, data and batches as training builds
them, step times of a real `Trainer.fit` taken in the calling process, and random BERT text towers of any size."""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from benchmarks.timing import hit_rate, median_rate, steady


# Ours made comparable to open_clip (`make bench`'s "ours" arm, `make bench-gpu`): open_clip's ViT patchifies and
# pools with its class token, pads every caption of a batch to one length, and has no text cache. The shipped
# default's own stem, pooling, length groups and cache are measured on their own (`make bench`'s "shipped" arms).
LIKE_FOR_LIKE = ["model.image.pool=model", "model.image.stem=patch", "model.length_groups=1",
                 "model.text.cache_dir=null"]


def build_model(cfg: DictConfig, total_steps: int):
    """The CompClip module exactly as `lit_compclip.training.run.train` builds it."""
    from lit_compclip.training.module import CompClip

    return CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=total_steps)


def data_module(cfg: DictConfig, model):
    """The configured WebDataModule with the model's transforms, as training builds it."""
    from lit_compclip.training.datamodule import WebDataModule

    dm = WebDataModule(**OmegaConf.to_container(cfg.data), seed=cfg.seed, train_transform=model.model.train_transform,
                       eval_transform=model.model.transform)
    dm.setup("fit")
    return dm


def collect_batches(dm, n: int) -> list[dict]:
    """The first `n` training batches of the data module's real loader, kept in memory so that both training
    loops see identical inputs and neither pays for decoding."""
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    if len(batches) < n:
        raise ValueError(f"the training data gave {len(batches)} batches, the benchmark needs {n}")
    return batches


class Cycle:
    """`batches` repeated up to `n` items: a fixed-length stream for a training loop."""

    def __init__(self, batches: list, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield self.batches[i % len(self.batches)]


def cache_counts(model) -> tuple[int, int] | None:
    """(hits, misses) of the text tower's prefix cache so far; None without one (or before its first use)."""
    cache = getattr(model.model.text, "cache", None)
    return None if cache is None else (cache.hits, cache.misses)


class StepTimer(L.Callback):
    """Wall time between consecutive training-batch ends: one full step each (data fetch, fwd, bwd, optimizer,
    logging); and the text cache's counts at each end, so that a hit rate covers the timed steps only."""

    def __init__(self):
        self.ends: list[float] = []
        self.counts: list[tuple[int, int] | None] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are queued, not done
        self.ends.append(time.perf_counter())
        self.counts.append(cache_counts(module))

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]  # step k+1 for k = 0, 1, ...


class WindowTimer(L.Callback):
    """The wall time of the steps after batch `first` up to batch `last`, as one window: the device is synced at the
    window's two ends only, so that inside it the host runs ahead of the device as it does in training (StepTimer's
    sync after every step would hide a step's own waits for the device)."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.marks = first, last, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx in (self.first, self.last):
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    @property
    def step_s(self) -> float:
        return (self.marks[1] - self.marks[0]) / (self.last - self.first)


def time_ours(cfg: DictConfig | None, batches: list[dict], steps: int, warmup: int, accelerator: str = "cpu",
              precision: str = "32-true", model=None, window: bool = False) -> dict[str, Any]:
    """Step times of a real `Trainer.fit` of the CompClip module over `batches` (no loggers, checkpoints or
    probes): {"intervals": steady step seconds, "samples_per_s", "model", "cache": the text cache's hits and misses
    in the timed steps (None without a cache)}. `model`: train this one again instead of building one from `cfg`
    (the rounds of `alternate`: a new Trainer and optimizer each time, the weights and the cache kept). `window`:
    the timed steps as one window (WindowTimer): {"step_s": their mean, "samples_per_s", "model"}."""
    assert warmup >= 1, "the first step has no start time"
    # Expected here and noise in the output: no loader workers, frozen text layers in eval mode, no val loop.
    for pattern in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*", ".*treespec.*",
                    ".*no `val_dataloader`.*"):
        warnings.filterwarnings("ignore", pattern)
    total = warmup + steps
    model = model if model is not None else build_model(cfg, total)
    timer = WindowTimer(warmup - 1, total - 1) if window else StepTimer()
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=total, max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=Cycle(batches, total))
    if window:
        return {"step_s": timer.step_s, "samples_per_s": len(batches[0]["caption"]) / timer.step_s, "model": model}
    intervals = steady(timer.intervals, warmup - 1)  # intervals[k] is step k + 1
    start, end = timer.counts[warmup - 1], timer.counts[-1]  # the counts before the first timed step, after the last
    cache = None if end is None else {"hits": end[0] - (start or (0, 0))[0], "misses": end[1] - (start or (0, 0))[1]}
    return {"intervals": intervals, "samples_per_s": median_rate(intervals, len(batches[0]["caption"])),
            "model": model, "cache": cache}


class LoopArm:
    """An arm of our Lightning loop: one model, trained again by a new Trainer on each run. Its first run warms up
    and, with a text cache, first fills the cache with one pass over the batches."""

    def __init__(self, cfg: DictConfig, batches: list[dict], steps: int, warmup: int):
        self.fill = len(batches) if cfg.model.text.get("cache_dir") else 0
        self.batches, self.steps, self.warmup = batches, steps, warmup
        self.model = build_model(cfg, warmup + self.fill + steps)
        self.cache: list[dict] = []  # the text cache's hits and misses in each run's timed steps

    def start(self, first: bool) -> int:
        """Untimed steps before the timed ones: the batches after them are those timed."""
        return self.warmup + self.fill if first else 1  # later runs drop the step a fresh optimizer allocates in

    def __call__(self, first: bool) -> dict:
        out = time_ours(None, self.batches, self.steps, self.start(first), model=self.model)
        if out["cache"] is not None:
            self.cache.append(out["cache"])
        return out

    def hit_rate(self) -> float | None:
        """The text cache's hit rate over every timed step of every run (None without a cache)."""
        return hit_rate(self.cache)


def make_bert_folder(path: str, layers: int, width: int, heads: int, tokenizer_from: str = "all-MiniLM-L6-v2") -> str:
    """A sentence-transformers-shaped text model with random weights in `path` (a BERT of the given size with the
    bundled MiniLM's tokenizer; loaded, sentence-transformers adds mean pooling): text towers of other sizes with
    no hub access."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lit_compclip.towers.sentence_transformers import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_from))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * width, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
