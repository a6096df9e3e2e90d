"""Training throughput against open_clip, the cost split of one step, FLOP/s, data vs model and probe overhead.

Usage: python scripts/bench.py [--quick] [--steps N] [--rounds R] [--out bench.json] [key=value ...]
Every figure is taken in this one process and every key figure is a ratio against a baseline measured in the same
run: our Lightning loop against open_clip's own `train_one_epoch` on the same model sizes and the same batches,
rounds alternating so that a busy machine slows both alike. Overrides (key=value) apply to the default experiment.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled MiniLM only: never wait on the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A ViT-B/16 image tower (width 768, depth 12, heads 12, patch 16) at the synthetic world's 64 px (16 patches
# instead of 196 at 224 px) and batch 16, so that a step takes seconds on 2 CPU cores.
VIT_B16 = ["model.image.width=768", "model.image.depth=12", "model.image.heads=12", "model.image.patch_size=16",
           "model.image.img_size=64", "data.batch_size=16"]
QUICK_VIT = ["model.image.width=64", "model.image.depth=1", "model.image.heads=2"]  # --quick: the code path only
COLLECTED = 8  # distinct batches held in memory and cycled through


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few steps and a toy second model: a smoke test")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop and round (default 20; quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds of ours/open_clip (default 2)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides of the default experiment")
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")
    return args


def compare(cfg, batches, steps: int, warmup: int, rounds: int) -> dict:
    """Our Trainer.fit and open_clip's train_one_epoch on the same batches, `rounds` times each, alternating."""
    from lit_compclip import bench
    from omegaconf import OmegaConf

    from lit_compclip.bench_open_clip import build_open_clip, time_open_clip

    ours, theirs = [], []
    optim = OmegaConf.to_container(cfg.optim)
    for r in range(rounds):
        ours.append(bench.timed(f"  ours, round {r + 1}/{rounds}", bench.time_ours, cfg, batches, steps, warmup))
        model, tokenizer = build_open_clip(cfg)
        theirs.append(bench.timed(f"  open_clip, round {r + 1}/{rounds}", time_open_clip, model, tokenizer,
                                  batches, steps, warmup, optim))
    b = len(batches[0]["caption"])
    ours_s, theirs_s = bench.pooled(ours), bench.pooled(theirs)
    return {"ours_samples_per_s": bench.median_rate(ours_s, b),
            "open_clip_samples_per_s": bench.median_rate(theirs_s, b),
            "ours_step_s": statistics.median(ours_s), "open_clip_step_s": statistics.median(theirs_s),
            "batch_size": b, "timed_steps": len(ours_s), "warmup_steps": warmup, "rounds": rounds,
            "open_clip_changed": {k: all(t["changed"][k] for t in theirs) for k in theirs[0]["changed"]},
            "open_clip_steps_run": sum(t["steps"] for t in theirs), "model": ours[-1]["model"]}


def text_cache(cfg_for, batches, steps: int, warmup: int, off: dict, unfrozen: int | None = None) -> dict:
    """Step time with the text tower's prefix cache warm against `off` (the same batches, frozen layers recomputed);
    `unfrozen` trains that many MiniLM layers instead of the default's (then `off` is measured here too).

    Also the bound the cache cannot beat: a step without it, over the same step minus the frozen part's own time."""
    from lit_compclip import bench

    base = [] if unfrozen is None else [f"model.text.unfreeze_layers={unfrozen}"]
    if off is None:
        off = bench.timed(f"  text cache off ({unfrozen} trained layers)", bench.time_ours,
                          cfg_for(base + ["model.text.cache_dir=null"]), batches, steps, warmup)
    with tempfile.TemporaryDirectory() as folder:
        cached = cfg_for(base + [f"model.text.cache_dir={folder}"])
        # the first pass over the batches fills the cache; every timed step after it reads it
        label = "  text cache on" + ("" if unfrozen is None else f" ({unfrozen} trained layers)")
        on = bench.timed(label, bench.time_ours, cached, batches, steps, warmup + len(batches))
        stats = on["model"].text.cache_stats()
    off_s, on_s = statistics.median(off["intervals"]), statistics.median(on["intervals"])
    frozen_s = bench.frozen_seconds(off["model"], batches[0], 4)
    return {"off_step_s": off_s, "on_step_s": on_s, "speedup": off_s / on_s, "stats": stats,
            "frozen_part_s": frozen_s, "bound": off_s / max(1e-9, off_s - frozen_s),
            "trained_layers": off["model"].hparams["model"]["text"]["unfreeze_layers"]}


def length_groups(cfg_for, groups: int, batches, steps: int, warmup: int, rounds: int) -> dict:
    """Step time of the default experiment with its captions encoded in `model.length_groups` groups of similar
    length, against the same model padding every caption of a batch alike; rounds alternate (cache off both)."""
    from lit_compclip import bench

    if groups <= 1:
        raise ValueError("model.length_groups=1 encodes captions in one padded batch: nothing to compare")
    alike, grouped = [], []
    for r in range(rounds):
        alike.append(bench.timed(f"  padded alike, round {r + 1}/{rounds}", bench.time_ours,
                                 cfg_for(["model.text.cache_dir=null"]), batches, steps, warmup))
        grouped.append(bench.timed(f"  {groups} length groups, round {r + 1}/{rounds}", bench.time_ours,
                                   cfg_for(["model.text.cache_dir=null", f"model.length_groups={groups}"]),
                                   batches, steps, warmup))
    alike_s, grouped_s = statistics.median(bench.pooled(alike)), statistics.median(bench.pooled(grouped))
    return {"padded_step_s": alike_s, "grouped_step_s": grouped_s, "speedup": alike_s / grouped_s,
            "tokens": bench.padding(grouped[-1]["model"], batches)}


def run(args) -> dict:
    import torch

    from lit_compclip import bench
    from lit_compclip.config import load_config
    from lit_compclip.train import ensure_synth

    def cfg_for(extra):
        return load_config([], bench.LIKE_FOR_LIKE + list(args.overrides) + list(extra))

    # Like for like with open_clip, which has no such cache: the frozen text layers are recomputed every step.
    # The cache is measured on its own in part 3.
    cfg = cfg_for(["model.text.cache_dir=null"])
    ensure_synth(cfg)
    warmup = 1 if args.quick else 3
    n = min(COLLECTED, args.steps + warmup)
    out = {"quick": args.quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": bench.machine(), "open_clip_loop": "open_clip_train.train.train_one_epoch"}

    print("[bench] 1. training throughput: the default experiment", flush=True)
    model = bench.build_model(cfg, 1)
    dm = bench.data_module(cfg, model)
    batches = bench.timed("collect batches", bench.collect_batches, dm, n)
    default = compare(cfg, batches, args.steps, warmup, args.rounds)
    trained = default.pop("model")

    print("[bench] 1b. training throughput: a ViT-B/16-sized image tower", flush=True)
    large_cfg = cfg_for(VIT_B16 + (QUICK_VIT if args.quick else []))
    large_model = bench.build_model(large_cfg, 1)
    large_batches = bench.timed("collect batches", bench.collect_batches, bench.data_module(large_cfg, large_model),
                                n)
    del large_model
    large = compare(large_cfg, large_batches, max(1, args.steps // 2), max(1, warmup - 1), args.rounds)
    large.pop("model")
    large["image_tower"] = {k: large_cfg.model.image[k] for k in ("width", "depth", "heads", "patch_size", "img_size")}

    print("[bench] 2. cost split, FLOPs and the matmul peak", flush=True)
    # The split's parts are set against a whole step timed just before them: on a shared machine the load
    # changes within minutes. The same run is the text cache's "off" figure.
    reference = bench.timed("  ours, reference steps", bench.time_ours, cfg, batches, args.steps, warmup)
    step_s = statistics.median(reference["intervals"])
    split = bench.timed("cost split", bench.cost_split, model, batches[0], 2 if args.quick else 6)
    flops = bench.timed("count FLOPs", bench.count_flops, model, batches[0])
    peak = bench.timed("matmul peak", bench.matmul_peak, 256 if args.quick else 2048)
    achieved = flops["total"] / step_s

    print("[bench] 3. text-tower prefix cache", flush=True)
    cache = text_cache(cfg_for, batches, args.steps, warmup, reference)
    # fewer trained layers leave more to the cache: 1 of 6 is the paper's share (4 of Gemma-2-2B's 26), 0 is
    # LLM2CLIP's fully frozen tower, whose final embedding is cached
    by_trained = {str(cache["trained_layers"]): cache}
    if not args.quick:
        for unfrozen in (1, 0):
            by_trained[str(unfrozen)] = text_cache(cfg_for, batches, args.steps, warmup, None, unfrozen)

    print("[bench] 3b. captions encoded in groups of similar length", flush=True)
    # the default experiment's own setting (LIKE_FOR_LIKE turns it off for the comparison with open_clip)
    groups = load_config([], list(args.overrides)).model.length_groups
    grouped = length_groups(cfg_for, groups, batches, args.steps, warmup, args.rounds)

    print("[bench] 4. data pipeline alone", flush=True)
    data = bench.timed("data pipeline", bench.data_rate, dm, 2 if args.quick else 20)
    split = {"data": cfg.data.batch_size / data["samples_per_s"], **split}
    split["other (loop, logging)"] = step_s - sum(v for k, v in split.items() if k != "data")

    print("[bench] 5. probe overhead", flush=True)
    probes = bench.timed("probes", bench.probe_seconds, cfg, trained)
    per_epoch = bench.steps_per_epoch(cfg)
    # the loader runs beside the model, so an epoch lasts as long as the slower of the two
    epoch_s = per_epoch * max(default["ours_step_s"], split["data"])

    out.update({
        "train_vs_open_clip": default["ours_samples_per_s"] / default["open_clip_samples_per_s"],
        "train_vs_open_clip_vit_b16": large["ours_samples_per_s"] / large["open_clip_samples_per_s"],
        "text_cache_speedup": cache["speedup"],
        "length_groups_speedup": grouped["speedup"],
        "train_vs_open_clip_cached": cache["off_step_s"] / cache["on_step_s"] * default["ours_samples_per_s"]
        / default["open_clip_samples_per_s"],
        "data_vs_model": data["samples_per_s"] / default["ours_samples_per_s"],
        "probe_overhead_fraction": probes["seconds"] / epoch_s,
        "flop_utilisation": achieved / peak,
        "raw": {"default": default, "vit_b16": large, "cost_split_s": split, "reference_step_s": step_s,
                "flops": {"per_step": flops["total"], "image_per_step": flops["image"], "text_per_step": flops["text"],
                          "achieved_per_s": achieved, "matmul_peak_per_s": peak},
                "text_cache": cache, "length_groups": grouped,
                "text_cache_by_trained_layers": {k: {x: v for x, v in c.items()} for k, c in by_trained.items()},
                "data": data,
                "probes": {**probes, "steps_per_epoch": per_epoch, "epoch_s": epoch_s}},
        "torch_threads": torch.get_num_threads(),
    })
    return out


def table(r: dict) -> str:
    raw, lines = r["raw"], []
    lines.append(f"{'case':<28} {'ours samples/s':>15} {'open_clip samples/s':>20} {'ratio':>7}")
    for key, label in (("default", "default experiment (no cache)"), ("vit_b16", "ViT-B/16-sized image tower")):
        c = raw[key]
        lines.append(f"{label:<28} {c['ours_samples_per_s']:>15.1f} {c['open_clip_samples_per_s']:>20.1f} "
                     f"{c['ours_samples_per_s'] / c['open_clip_samples_per_s']:>6.2f}x")
    lines.append("")
    step = raw["reference_step_s"]
    lines.append(f"one step of the default experiment ({step * 1000:.0f} ms, batch {raw['default']['batch_size']}; "
                 f"data runs beside it in the loader):")
    for part, s in raw["cost_split_s"].items():
        lines.append(f"  {part:<24} {s * 1000:>8.1f} ms  {s / step:>6.1%}")
    f = raw["flops"]
    lines.append(f"model FLOPs per step {f['per_step'] / 1e9:.1f} G (image {f['image_per_step'] / 1e9:.1f} G, text "
                 f"{f['text_per_step'] / 1e9:.1f} G); achieved {f['achieved_per_s'] / 1e9:.1f} GFLOP/s of a measured "
                 f"fp32 matmul peak {f['matmul_peak_per_s'] / 1e9:.1f} GFLOP/s = {r['flop_utilisation']:.1%}")
    lines.append("text cache (frozen MiniLM layers cached; bound = step / (step - the frozen layers' own time)):")
    for trained, c in sorted(raw["text_cache_by_trained_layers"].items(), reverse=True):
        lines.append(f"  {trained} of 6 layers trained: {c['off_step_s'] * 1000:.0f} ms/step recomputed, "
                     f"{c['on_step_s'] * 1000:.0f} ms/step cached (warm) = {c['speedup']:.2f}x (bound "
                     f"{c['bound']:.2f}x); hit rate {c['stats']['hit_rate']:.2f}")
    g = raw["length_groups"]
    t = g["tokens"]
    lines.append(f"captions in {t['groups']} length groups: {g['padded_step_s'] * 1000:.0f} ms/step padded alike, "
                 f"{g['grouped_step_s'] * 1000:.0f} ms/step grouped = {g['speedup']:.2f}x; text-tower positions per "
                 f"batch {t['padded']:.0f} -> {t['grouped']:.0f} (real tokens {t['real']:.0f})")
    lines.append(f"the default experiment as shipped (cache warm) against open_clip: "
                 f"{r['train_vs_open_clip_cached']:.2f}x")
    d, p = raw["data"], raw["probes"]
    lines.append(f"data pipeline: {d['samples_per_s']:.0f} samples/s with {d['num_workers']} worker(s) = "
                 f"{r['data_vs_model']:.2f}x the model's training rate (>1: the model is the bottleneck)")
    lines.append(f"probes: {p['seconds']:.1f} s per pass = {r['probe_overhead_fraction']:.1%} of an epoch "
                 f"({p['steps_per_epoch']} steps, {p['epoch_s']:.0f} s)")
    m = r["machine"]
    lines.append(f"machine: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']}, load average "
                 f"{m['load_average']:.2f} at the start; {r['date']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    result = run(args)
    print(table(result), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
