"""Measurements behind `make bench`: our training loop's step time, its cost split and FLOPs, the data pipeline,
the probes, and the A B B A rounds its ratios come from; every figure is taken in the calling process."""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from lit_compclip.losses import info_nce

# Ours made comparable to open_clip (`make bench`'s "ours" arm, `make bench-gpu`): open_clip's ViT patchifies and
# pools with its class token, pads every caption of a batch to one length, and has no text cache. The shipped
# default's own stem, pooling, length groups and cache are measured on their own (`make bench`'s "shipped" arms).
LIKE_FOR_LIKE = ["model.image.pool=model", "model.image.stem=patch", "model.length_groups=1",
                 "model.text.cache_dir=null"]


def steady(intervals: list[float], warmup: int) -> list[float]:
    """The step durations after the first `warmup` steps (compiling, allocator and cache warm-up)."""
    if len(intervals) <= warmup:
        raise ValueError(f"{len(intervals)} timed steps leave nothing after {warmup} warm-up steps")
    return intervals[warmup:]


def median_rate(intervals: list[float], batch_size: int) -> float:
    """Samples per second at the median step time (robust to a busy machine's spikes)."""
    return batch_size / statistics.median(intervals)


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


def time_ours(cfg: DictConfig | None, batches: list[dict], steps: int, warmup: int, accelerator: str = "cpu",
              precision: str = "32-true", model=None) -> dict[str, Any]:
    """Step times of a real `Trainer.fit` of the CompClip module over `batches` (no loggers, checkpoints or
    probes): {"intervals": steady step seconds, "samples_per_s", "model", "cache": the text cache's hits and misses
    in the timed steps (None without a cache)}. `model`: train this one again instead of building one from `cfg`
    (the rounds of `alternate`: a new Trainer and optimizer each time, the weights and the cache kept)."""
    assert warmup >= 1, "the first step has no start time"
    # Expected here and noise in the output: no loader workers, frozen text layers in eval mode, no val loop.
    for pattern in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*", ".*treespec.*",
                    ".*no `val_dataloader`.*"):
        warnings.filterwarnings("ignore", pattern)
    total = warmup + steps
    model = model if model is not None else build_model(cfg, total)
    timer = StepTimer()
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=total, max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=Cycle(batches, total))
    intervals = steady(timer.intervals, warmup - 1)  # intervals[k] is step k + 1
    start, end = timer.counts[warmup - 1], timer.counts[-1]  # the counts before the first timed step, after the last
    cache = None if end is None else {"hits": end[0] - (start or (0, 0))[0], "misses": end[1] - (start or (0, 0))[1]}
    return {"intervals": intervals, "samples_per_s": median_rate(intervals, len(batches[0]["caption"])),
            "model": model, "cache": cache}


def padding(model, batches: list[dict]) -> dict[str, float]:
    """Token positions the text tower runs per batch, padded alike and in `model.length_groups` groups of similar
    length, against the captions' real tokens (batch means)."""
    from lit_compclip.training.module import batch_texts
    from lit_compclip.towers import length_groups

    groups = max(1, model.model.length_groups)
    totals = {"real": 0, "padded": 0, "grouped": 0}
    for batch in batches:
        lengths = model.model.text.tokenize(batch_texts(batch))["attention_mask"].sum(1)
        totals["real"] += int(lengths.sum())
        totals["padded"] += int(lengths.max()) * len(lengths)
        totals["grouped"] += sum(int(lengths[rows].max()) * len(rows) for rows in length_groups(lengths, groups))
    return {k: v / len(batches) for k, v in totals.items()} | {"groups": groups}


def data_rate(dm, batches: int) -> dict[str, float]:
    """Samples/s the data module's real loader decodes and transforms on its own (its configured workers);
    the first batch (worker start, shuffle-buffer fill) is not counted."""
    n, start = 0, None
    for i, batch in enumerate(dm.train_dataloader()):
        if i == 0:
            start = time.perf_counter()
        else:
            n += len(batch["caption"])
        if i == batches:
            break
    if not n:
        raise ValueError("the data pipeline benchmark needs at least 2 training batches")
    seconds = time.perf_counter() - start
    return {"samples_per_s": n / seconds, "samples": n, "seconds": seconds, "num_workers": dm.num_workers}


def cost_split(model, batch: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each part of one training step, run apart: tokenising, image tower fwd+bwd, text tower
    fwd+bwd, the loss fwd+bwd (on the embeddings) and the optimizer step. The first of `repeats` is warm-up."""
    from lit_compclip.towers import encode_by_length

    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    images, captions = batch["image"], list(batch["caption"])
    parts: dict[str, list[float]] = {k: [] for k in ("tokenize", "image", "text", "loss", "optimizer")}
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        t = [time.perf_counter()]
        tokens = model.model.text.tokenize(captions)
        t.append(time.perf_counter())
        image_emb = model.encode_image(images)  # (B, D)
        image_emb.backward(torch.randn_like(image_emb))
        t.append(time.perf_counter())
        # (B, D), as encode_text without its tokenising: in the model's length groups
        text_emb = F.normalize(encode_by_length(model.model.text, tokens, model.model.length_groups), dim=-1)
        text_emb.backward(torch.randn_like(text_emb))
        t.append(time.perf_counter())
        loss = info_nce(image_emb.detach().requires_grad_(), text_emb.detach().requires_grad_(), model.logit_scale)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        for name, a, b in zip(parts, t, t[1:]):
            parts[name].append(b - a)
    optimizer.zero_grad(set_to_none=True)
    return {name: statistics.median(times[1:] or times) for name, times in parts.items()}


def frozen_seconds(model, batch: dict, repeats: int) -> float:
    """Median seconds of the text tower's frozen part alone on this batch (what its prefix cache saves): the
    layers below the first trained one, or the whole tower when none is trained, in the model's length groups as
    its step runs them. The first repeat is warm-up."""
    from lit_compclip.towers import length_groups

    text = model.model.text
    tokens = text.tokenize(list(batch["caption"]))
    lengths = tokens["attention_mask"].sum(1)
    parts = []  # each group cut to its own longest caption, as encode_by_length cuts it
    for rows in length_groups(lengths, max(1, model.model.length_groups)):
        n = int(lengths[rows].max())
        parts.append({k: v[rows][:, :n] for k, v in tokens.items()})
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for part in parts:
                text.frozen_output(part)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times)


def count_flops(model, batch: dict) -> dict[str, float]:
    """FLOPs of one training step's forward and backward (torch's FlopCounterMode: matmuls, convolutions,
    attention), in total and of each tower alone (a joint backward cannot be split between the towers)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(loss_fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            loss_fn().backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    model.train()
    return {"total": count(lambda: model._loss(batch)[0]),
            "image": count(lambda: model.encode_image(batch["image"]).sum()),
            "text": count(lambda: model.encode_text(list(batch["caption"])).sum())}


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu", repeats: int = 10) -> float:
    """This machine's practical peak in FLOP/s: the best of `repeats` n x n matmuls of `dtype` on `device`."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up: library initialisation
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


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


def probe_passes(cfg: DictConfig, model):
    """The probe passes a run of `cfg` makes (one per `probes.every_n_epochs` epochs), as the probe callback runs
    them: yields one callable per pass, which runs it and returns its results. What does not change with the
    weights (token counts, image inputs) is carried from one pass to the next; give `cfg` a fresh text-cache folder
    and the first pass computes the probe captions' frozen prefix, the later ones read it."""
    from lit_compclip.training.callbacks import build_probes, run_probes
    from lit_compclip.encoders.memo import TransformedImages, TruncationCounts

    probes = build_probes(cfg.probes.suites, cfg.probes.get("limit"))
    carried = TruncationCounts(), TransformedImages()
    for _ in range(max(1, int(cfg.trainer.max_epochs) // int(cfg.probes.every_n_epochs))):
        yield lambda: run_probes(probes, model, None, *carried)


def probe_seconds(cfg: DictConfig, model) -> dict[str, float]:
    """Wall time of each of `probe_passes`. `seconds` is the mean pass; `per_probe` the last pass's seconds per
    probe."""
    passes, results = [], {}
    for run in probe_passes(cfg, model):
        start = time.perf_counter()
        results = run()
        passes.append(time.perf_counter() - start)
    per_probe = {k.split("/")[1]: v for k, v in results.items() if k.endswith("/seconds")}
    return {"seconds": statistics.mean(passes), "passes": passes, "per_probe": per_probe}


def probe_flops(cfg: DictConfig, model) -> list[float]:
    """FLOPs of each of `probe_passes` (torch's FlopCounterMode), counted on passes of their own: the counter slows
    what it counts."""
    from torch.utils.flop_counter import FlopCounterMode

    passes = []
    for run in probe_passes(cfg, model):
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        passes.append(float(counter.get_total_flops()))
    return passes


def frozen_flops(model, batch: dict) -> float:
    """FLOPs of the text tower's frozen part on one batch (`frozen_parts`): what a warm text cache saves a step."""
    from torch.utils.flop_counter import FlopCounterMode

    parts = frozen_parts(model, batch)
    counter = FlopCounterMode(display=False)
    with counter:
        frozen_step(model)(parts)
    return float(counter.get_total_flops())


def steps_per_epoch(cfg: DictConfig) -> int:
    """Optimizer steps in one epoch of the configured training data on one process."""
    from lit_compclip.training.run import total_steps

    one = OmegaConf.merge(cfg, {"trainer": {"max_epochs": 1, "max_steps": -1}})
    return total_steps(one)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os
    import platform

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": platform.processor() or platform.machine(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        with open("/proc/cpuinfo") as f:
            info["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def timed(label: str, fn, *args, **kwargs):
    """Run fn and print one progress line with its wall time (the full run takes minutes)."""
    start = time.perf_counter()
    print(f"[bench] {label} ...", flush=True)
    out = fn(*args, **kwargs)
    print(f"[bench] {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


# -- rounds: every ratio's two sides in A B B A order ------------------------------------------------------------

def abba_order(arms: list[str], rounds: int) -> list[tuple[int, str]]:
    """(block, arm) in run order: each block runs the arms forwards, then backwards (A B B A for two arms), so that
    any two arms' runs sit symmetrically in it and a load that rises or falls steadily slows both alike."""
    if rounds < 1 or not arms or len(set(arms)) != len(arms):
        raise ValueError(f"abba_order needs rounds >= 1 and distinct arms, got {rounds} and {arms}")
    return [(block, arm) for block in range(rounds) for arm in [*arms, *reversed(arms)]]


def alternate(arms: dict, rounds: int, label: str = "") -> dict[str, dict]:
    """Run `arms` (name -> a callable taking `first`, true on the arm's first run, and returning {"intervals": step
    seconds, ...}) in `abba_order`. Returns {"times": {arm: [block 0's step seconds (its two runs pooled), ...]},
    "last": {arm: its last run's result}}."""
    times: dict[str, list[list[float]]] = {name: [[] for _ in range(rounds)] for name in arms}
    last: dict[str, dict] = {}
    for block, name in abba_order(list(arms), rounds):
        start = time.perf_counter()
        last[name] = arms[name](name not in last)
        times[name][block].extend(last[name]["intervals"])
        print(f"[bench] {label}block {block + 1}/{rounds} {name}: {statistics.median(last[name]['intervals']):.3f} "
              f"s/step ({time.perf_counter() - start:.1f} s)", flush=True)
    return {"times": times, "last": last}


def speedups(times: dict[str, list[list[float]]], fast: str, slow: str) -> list[float]:
    """Per block: `slow`'s median step time over `fast`'s (above 1: `fast` is faster), both from the same block."""
    return [statistics.median(s) / statistics.median(f) for f, s in zip(times[fast], times[slow])]


def spread(values: list[float]) -> dict[str, Any]:
    """A ratio over rounds: its median, min and max, and every value."""
    if not values:
        raise ValueError("a spread needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": len(values),
            "values": list(values)}


def step_seconds(times: dict[str, list[list[float]]], arm: str) -> float:
    """An arm's median step time over every block."""
    return statistics.median([x for block in times[arm] for x in block])


def describe(s: dict[str, Any]) -> str:
    """A spread as the table prints it: `1.02x (0.98-1.05, 3 rounds)`."""
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}, {s['rounds']} round{'s' * (s['rounds'] != 1)})"


# -- decoder text towers (`make bench-decoder`, `make bench-gpu-decoder`) ---------------------------------------

def time_steps(step, items: list, steps: int, start: int = 0) -> dict[str, list[float]]:
    """Wall time of `step(item)` on `items` cycled, from item `start` on: {"intervals": `steps` seconds}. With
    `start` equal to time_ours' warm-up, the same batches are timed as in a Trainer run of that warm-up."""
    intervals = []
    for k in range(start, start + steps):
        began = time.perf_counter()
        step(items[k % len(items)])
        intervals.append(time.perf_counter() - began)
    return {"intervals": intervals}


def text_step(model):
    """One training step of the text tower alone, optimizer excluded: tokenising the captions, the forward in the
    model's length groups (through its prefix cache, where it has one) and the backward."""
    def step(batch: dict) -> None:
        model.zero_grad(set_to_none=True)
        emb = model.encode_text(list(batch["caption"]))  # (B, D)
        emb.backward(torch.ones_like(emb))
    return step


def frozen_parts(model, batch: dict) -> list[dict[str, torch.Tensor]]:
    """The batch's token ids in the model's length groups, each cut to its own longest caption: what the frozen
    part of the text tower runs on in a step (tokenised here, so that timing them leaves tokenising out)."""
    from lit_compclip.towers import length_groups

    tokens = model.model.text.tokenize(list(batch["caption"]))
    mask = tokens["attention_mask"]
    lengths = mask.sum(1)
    parts = []
    for rows in length_groups(lengths, max(1, model.model.length_groups)):
        columns = mask[rows].bool().any(0)  # the group's real columns, as encode_by_length keeps them
        parts.append({k: v[rows][:, columns] for k, v in tokens.items()})
    return parts


def frozen_step(model):
    """The text tower's frozen part alone on one batch's `frozen_parts` (what its prefix cache saves)."""
    def step(parts: list[dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for part in parts:
                model.model.text.frozen_output(part)
    return step


def cache_figures(times: dict[str, list[list[float]]], on: str, off: str, frozen: str) -> dict[str, Any]:
    """A text cache's figures, each per block of `alternate`: the speed-up (off over on), its bound off / (off -
    frozen) (no cache can beat it: it removes the frozen part and adds nothing) and the speed-up over the bound,
    which is (off - frozen) / on; with the median step seconds of the three arms."""
    med = {arm: [statistics.median(b) for b in times[arm]] for arm in (on, off, frozen)}
    speed = [o / n for o, n in zip(med[off], med[on])]
    bound = [o / max(1e-9, o - f) for o, f in zip(med[off], med[frozen])]
    return {"speedup": spread(speed), "bound": spread(bound),
            "speedup_over_bound": spread([s / b for s, b in zip(speed, bound)]),
            "on_s": step_seconds(times, on), "off_s": step_seconds(times, off),
            "frozen_s": step_seconds(times, frozen)}


def time_interleaved(steps_by_arm: dict, items_by_arm: dict[str, list], steps: int,
                     start: int = 0) -> dict[str, list[float]]:
    """Several step functions timed step by step in turn: on item k (k = start, start + 1, ...) each arm runs once,
    in the given order on even k and in reverse on odd k (A B C, C B A, ...), so that a load lasting a few seconds
    slows every arm alike. Returns {arm: `steps` seconds}."""
    names = list(steps_by_arm)
    out: dict[str, list[float]] = {name: [] for name in names}
    for k in range(start, start + steps):
        for name in names if k % 2 == 0 else reversed(names):
            items = items_by_arm[name]
            began = time.perf_counter()
            steps_by_arm[name](items[k % len(items)])
            out[name].append(time.perf_counter() - began)
    return out


def timing_args(parser, args):
    """--steps and --rounds filled in (3 each, 1 with --quick) and checked: `parser.error` when below 1."""
    default = 1 if args.quick else 3
    # `is None`, not `or`: an explicit 0 is refused, not taken for "unset"
    args.steps = default if args.steps is None else args.steps
    args.rounds = default if args.rounds is None else args.rounds
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    return args


def hit_rate(counts: list[dict]) -> float | None:
    """The text cache's hit rate over runs' {"hits", "misses"} counts (None when nothing was looked up)."""
    seen = sum(c["hits"] + c["misses"] for c in counts)
    return sum(c["hits"] for c in counts) / seen if seen else None


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


@contextlib.contextmanager
def quiet():
    """Each of a benchmark's many runs would print Lightning's banner and the Hugging Face load report: warnings
    only while the benchmark runs (restored after: tests call the scripts' main in their own process)."""
    import logging

    import lightning.pytorch  # noqa: F401  (importing it sets its loggers' levels: first, so that ours hold)
    from transformers.utils import logging as hf_logging

    # Lightning's rank-zero messages go through whichever of these two loggers was imported last
    lightning = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [x.level for x in lightning]
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    for x in lightning:
        x.setLevel(logging.WARNING)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for x, level in zip(lightning, levels):
            x.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def save(result: dict, path: str, tag: str) -> None:
    """A benchmark's figures as sorted JSON at `path`, and one line saying where (`[tag] wrote PATH`)."""
    import json

    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"[{tag}] wrote {path}")


def script_main(argv, parse, run, table, tag: str = "bench") -> int:
    """A CPU benchmark script's main: parse, run quietly, print its table, save its JSON to --out."""
    args = parse(argv)
    with quiet():
        result = run(args)
    print(table(result), flush=True)
    save(result, args.out, tag)
    return 0
