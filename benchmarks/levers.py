"""`make bench-gpu`'s lever table: one model's training step with each speed option on its own, then all together,
each row set against the plain step of the same run.

Every row is a real `Trainer.fit` on the same kind of batches, timed as one window of steps (the device synced at
its two ends only, as training runs); samples/s, the step's counted FLOPs per sample and the utilisation by the
datasheet convention (`benchmarks/peaks.py`). Rows whose step is the plain step's (compile, the optimizer's
implementation, the host-side text bookkeeping) are tested equal to it on the CPU; the others (a larger batch, patch
dropout, the text cache) train something else or skip work, and say so in the table.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch

from benchmarks import our_loop, peaks, script, step_costs


@dataclass(frozen=True)
class Lever:
    overrides: tuple[str, ...] = ()  # config overrides; "{folder}" is the run's temporary folder
    batch_factor: int = 1  # the batch, times this
    tokens_on_device_first: bool = False  # the text path as it ran before its bookkeeping moved to the host
    same_step: bool = True  # the same training step as the plain row, up to float rounding (tested on the CPU)


CACHE_AND_GROUPS = ("model.text.cache_dir={folder}/text_cache", "model.length_groups=2")
LEVERS = {
    "plain": Lever(),
    "model.compile=true": Lever(("model.compile=true",)),
    "optim.implementation=fused": Lever(("optim.implementation=fused",)),
    "optim.implementation=foreach": Lever(("optim.implementation=foreach",)),
    "batch x2 (local loss)": Lever(batch_factor=2, same_step=False),
    "model.image.patch_dropout=0.5": Lever(("model.image.patch_dropout=0.5",), same_step=False),
    "text cache + 2 length groups": Lever(CACHE_AND_GROUPS, same_step=False),
    "  the same, tokens on the device first": Lever(CACHE_AND_GROUPS, tokens_on_device_first=True, same_step=False),
    "all: compile, fused, batch x2, cache + groups": Lever(("model.compile=true", "optim.implementation=fused")
                                                           + CACHE_AND_GROUPS, batch_factor=2, same_step=False),
    # last: autotuning every matmul shape compiles for minutes, and a lease may end before it does
    "model.compile=true, compile_mode=max-autotune-no-cudagraphs": Lever((
        "model.compile=true", "model.compile_mode=max-autotune-no-cudagraphs")),
}


@contextlib.contextmanager
def tokens_on_device_first():
    """The text path before its bookkeeping moved to the host: the tokens go to the device before they are grouped
    by length and keyed for the cache, so each of those reads waits for the device (the baseline of that row)."""
    import torch.nn.functional as F

    from lit_compclip.model import CompClipModel
    from lit_compclip.towers import encode_by_length

    def encode_text(self, texts):
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return F.normalize(encode_by_length(self.text, tokens, self.length_groups), dim=-1)

    original = CompClipModel.encode_text
    CompClipModel.encode_text = encode_text
    try:
        yield
    finally:
        CompClipModel.encode_text = original


def lever_config(experiment: str, base: list[str], lever: Lever, batch: int, folder: str):
    from lit_compclip.config import load_config
    from lit_compclip.config.plugins import prepare

    overrides = base + [o.format(folder=folder) for o in lever.overrides]
    cfg = load_config([experiment], overrides + [f"data.batch_size={batch * lever.batch_factor}"])
    prepare(cfg)
    return cfg


def flops_per_step(cfg, model, batch: dict, device: str) -> float:
    """Counted FLOPs of one step (forward and backward) of the timed `model`; a compiled one is counted on an
    uncompiled build of its config instead (the counter does not see inside compiled graphs; compiling changes no
    FLOP), whose text cache is the timed row's folder, warm from it."""
    from omegaconf import OmegaConf

    if cfg.model.compile:
        model = our_loop.build_model(OmegaConf.merge(cfg, {"model": {"compile": False}}), 1)
    model = model.to(device)
    batch = {**batch, "image": batch["image"].to(device)}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        return step_costs.count_flops(model, batch)["total"]


def lever_table(base: list[str], batch: int, steps: int, warmup: int, folder: str, device: str = "cuda",
                peak: float | None = None, measured: float | None = None, names: list[str] | None = None,
                experiment: str = "experiments/default.yaml", on_row=None) -> dict:
    """name -> its row, for each lever in `names` (all of LEVERS by default; "plain" always first); `on_row(rows)`
    after each row (the script saves what it has: a lease may end mid-table). A row the card has no memory for holds
    its error instead."""
    rows = {}
    for name in ["plain"] + [n for n in (names or LEVERS) if n != "plain"]:
        lever = LEVERS[name]
        row = {"same_step_as_plain": lever.same_step, "overrides": list(lever.overrides), "timed_steps": steps}
        try:
            row.update(measure(name, lever, experiment, base, batch, steps, warmup, folder, device, peak, measured))
        except torch.cuda.OutOfMemoryError as e:  # a row too big for the card (batch x2) leaves the others standing
            row["error"] = script.out_of_memory(e)
        plain = rows.get("plain", row).get("samples_per_s")
        row["samples_per_s_vs_plain"] = row["samples_per_s"] / plain if plain and "error" not in row else None
        rows[name] = row
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if on_row is not None:
            on_row(rows)
    return rows


def measure(name: str, lever: Lever, experiment: str, base: list[str], batch: int, steps: int, warmup: int,
            folder: str, device: str, peak: float | None, measured: float | None) -> dict:
    """One lever's row: a real fit timed as one window, its counted FLOPs and utilisation."""
    cfg = lever_config(experiment, base, lever, batch, os.path.join(folder, "lever"))
    model = our_loop.build_model(cfg, warmup + steps)
    batches = our_loop.collect_batches(our_loop.data_module(cfg, model), 4)
    with tokens_on_device_first() if lever.tokens_on_device_first else contextlib.nullcontext():
        timed = script.timed(f"  {name.strip()}", our_loop.time_ours, cfg, batches, steps, warmup,
                             "gpu" if device == "cuda" else device, "bf16-mixed" if device == "cuda" else "32-true",
                             model, window=True)
    flops = flops_per_step(cfg, timed["model"], batches[0], device)
    use = peaks.utilisation(flops, timed["step_s"], peak, measured)
    n = len(batches[0]["caption"])
    return {"samples_per_s": timed["samples_per_s"], "step_s": timed["step_s"], "batch_size": n,
            "flops_per_sample": flops / n, "mfu": use["mfu"],
            "mfu_of_measured_matmul_peak": use["mfu_of_measured_matmul_peak"]}


def print_table(rows: dict) -> None:
    print(f"{'lever':<48} {'samples/s':>10} {'vs plain':>9} {'batch':>6} {'GFLOP/sample':>13} {'MFU':>7} "
          f"{'of measured':>12} {'same step':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<48} {r['error']}")
            continue
        ratio = "-" if r["samples_per_s_vs_plain"] is None else f"{r['samples_per_s_vs_plain']:.2f}x"
        print(f"{name:<48} {r['samples_per_s']:>10.0f} {ratio:>9} {r['batch_size']:>6} "
              f"{r['flops_per_sample'] / 1e9:>13.1f} {peaks.percent(r['mfu']):>7} "
              f"{peaks.percent(r['mfu_of_measured_matmul_peak']):>12} {'yes' if r['same_step_as_plain'] else 'no':>10}")

