"""Training throughput against open_clip, the shipped default's own speed-ups, the cost split of one step, FLOP/s,
data vs model and probe overhead.

Usage: python benchmarks/bench.py [--quick] [--steps N] [--rounds R] [--out bench.json] [key=value ...]
Every figure is taken in this one process and every key figure is a ratio of two loops ("arms") timed in the same
run. The arms of a ratio run in blocks of A B B A order (`benchmarks.timing.abba_order`), each block gives one value
of every ratio, and each ratio is reported as its median over the blocks with its min-max spread. Overrides
(key=value) apply to the default experiment (`load_config(["experiments/default.yaml"], overrides)`), which every
arm starts from. docs/BENCHMARKS.md says what each arm and row is; `benchmarks.arms` names the arms of each ratio.
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time

from lit_compclip.cli_args import ScriptParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled MiniLM only: never wait on the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A ViT-B/16 image tower (width 768, depth 12, heads 12, patch 16) at the synthetic world's 64 px (16 patches
# instead of 196 at 224 px) and batch 16, so that a step takes seconds on 2 CPU cores.
VIT_B16 = ["model.image.width=768", "model.image.depth=12", "model.image.heads=12", "model.image.patch_size=16",
           "model.image.img_size=64", "data.batch_size=16"]
QUICK_VIT = ["model.image.width=64", "model.image.depth=1", "model.image.heads=2"]  # --quick: the code path only
PATCH_DROPOUT = 0.5  # the ViT-B/16-sized case's patch-dropout arm: half the patch tokens dropped (FLIP's 50%)
COLLECTED = 8  # distinct batches held in memory and cycled through


def parse(argv):
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one block, one step per run, toy second model: a smoke test")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run (default 3, the ViT-B/16-sized case half that; quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="A B B A blocks per ratio (default 3; quick 1)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides of the default experiment")
    from benchmarks import script

    # 3 steps x 2 runs per arm and block x 3 blocks, ~50 runs in all: few steps per run keep the whole run short
    return script.timing_args(p, p.parse_args(argv))


def run(args) -> dict:
    import torch

    from benchmarks import our_loop, probe_costs, script, step_costs, timing
    from benchmarks.arms import (MAIN_ARMS, MAIN_RATIOS, VIT_ARMS, VIT_RATIOS, arm_summary, cache_pairs,
                                 open_clip_arms, ratios, with_bound)
    from benchmarks.open_clip_baseline import same_token_ids
    from lit_compclip.config import load_config
    from lit_compclip.config.plugins import prepare

    def shipped(extra=()):  # the default experiment as shipped
        return load_config(["experiments/default.yaml"], list(args.overrides) + list(extra))

    def like(extra=()):  # ours made comparable to open_clip (our_loop.LIKE_FOR_LIKE)
        return load_config(["experiments/default.yaml"], our_loop.LIKE_FOR_LIKE + list(args.overrides) + list(extra))

    began = time.perf_counter()
    cfg = shipped()
    prepare(cfg)
    first = 1 if args.quick else 3  # warm-up steps of an arm's first run; later runs drop only their first step
    out = {"quick": args.quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": script.machine(), "open_clip_loop": "open_clip_train.train.train_one_epoch",
           "steps_per_run": args.steps, "rounds": args.rounds}
    folder = tempfile.mkdtemp(prefix="bench_text_cache_")  # the cache arms' caches, fresh for this run
    try:
        print("[bench] 1. the default model: ours against open_clip, and the shipped default's own settings",
              flush=True)
        model = our_loop.build_model(cfg, 1)
        dm = our_loop.data_module(cfg, model)
        del model
        batches = script.timed("collect batches", our_loop.collect_batches, dm, min(COLLECTED, args.steps + first))
        oc = open_clip_arms(like(), batches, args.steps, first, MAIN_ARMS)
        loop = {"ours_shipped": [f"model.text.cache_dir={folder}"],
                "ours_shipped_no_cache": ["model.text.cache_dir=null"],
                "ours_shipped_one_group": ["model.text.cache_dir=null", "model.length_groups=1"]}
        arms = {**oc, **{name: our_loop.LoopArm(shipped(o), batches, args.steps, first) for name, o in loop.items()}}
        times = timing.alternate({name: arms[name] for name in MAIN_ARMS}, args.rounds, "1. ")["times"]
        main = ratios(times, MAIN_RATIOS)
        no_cache = arms["ours_shipped_no_cache"]
        shipped_model = no_cache.model  # the shipped default, frozen layers recomputed: parts 2, 4 and 5
        raw = {"arms": arm_summary(times, arms),
               "open_clip_tokens": {"same_token_ids": same_token_ids(oc["open_clip_shipped"].own_tokenizer,
                                                                     oc["open_clip_like_for_like"].tokenizer,
                                                                     batches),
                                    "ours_per_batch": oc["open_clip_like_for_like"].summary()["positions_per_batch"],
                                    "open_clip_per_batch": oc["open_clip_shipped"].summary()["positions_per_batch"]},
               "length_groups_tokens": step_costs.padding(shipped_model, batches),
               "text_cache_by_trained_layers": {str(cfg.model.text.unfreeze_layers): with_bound(
                   times, arms, "ours_shipped", "ours_shipped_no_cache", batches)}}
        product = [a * b * c for a, b, c in zip(*(main[k]["values"] for k in (
            "train_vs_open_clip_like_for_like", "open_clip_padding_factor", "open_clip_dropout_factor")))]
        raw["open_clip_factors_product"] = timing.spread(product)
        del oc
        for name in list(arms):
            if name != "ours_shipped_no_cache":
                del arms[name]

        print("[bench] 1b. a ViT-B/16-sized image tower: ours against open_clip", flush=True)
        large_cfg = like(VIT_B16 + (QUICK_VIT if args.quick else []))
        large_model = our_loop.build_model(large_cfg, 1)
        large_batches = script.timed("collect batches", our_loop.collect_batches,
                                     our_loop.data_module(large_cfg, large_model), min(COLLECTED, args.steps + first))
        del large_model
        large_steps = max(1, args.steps // 2)
        large_arms = open_clip_arms(large_cfg, large_batches, large_steps, max(1, first - 1), VIT_ARMS)
        large_arms["ours_patch_dropout"] = our_loop.LoopArm(  # the same step with half the patch tokens dropped
            like(VIT_B16 + (QUICK_VIT if args.quick else []) + [f"model.image.patch_dropout={PATCH_DROPOUT}"]),
            large_batches, large_steps, max(1, first - 1))
        large_times = timing.alternate({n: large_arms[n] for n in VIT_ARMS}, args.rounds, "1b. ")["times"]
        large = ratios(large_times, VIT_RATIOS)
        raw["vit_b16"] = {"arms": arm_summary(large_times, large_arms),
                          "batch_size": len(large_batches[0]["caption"]), "steps_per_run": large_steps,
                          "image_tower": {k: large_cfg.model.image[k] for k in
                                          ("width", "depth", "heads", "patch_size", "img_size")}}
        del large_arms

        print("[bench] 2. cost split, FLOPs and the matmul peak (the shipped default, frozen layers recomputed)",
              flush=True)
        # The split's parts are set against a whole step timed just before them: on a shared machine the load
        # changes within minutes.
        reference = script.timed("  reference steps", no_cache, False)
        step_s = statistics.median(reference["intervals"])
        split = script.timed("cost split", step_costs.cost_split, shipped_model, batches[0], 2 if args.quick else 6)
        flops = script.timed("count FLOPs", step_costs.count_flops, shipped_model, batches[0])
        peak = script.timed("matmul peak", step_costs.matmul_peak, 256 if args.quick else 2048)
        achieved = flops["total"] / step_s

        if not args.quick:
            print("[bench] 3. text cache with fewer trained layers", flush=True)
            raw["text_cache_by_trained_layers"].update(
                cache_pairs(shipped, folder, batches, args.steps, first, args.rounds))
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    print("[bench] 4. data pipeline alone", flush=True)
    data = script.timed("data pipeline", step_costs.data_rate, dm, 2 if args.quick else 20)
    split = {"data": cfg.data.batch_size / data["samples_per_s"], **split}
    split["other (loop, logging)"] = step_s - sum(v for k, v in split.items() if k != "data")

    print("[bench] 5. probe overhead", flush=True)
    # the shipped model as a run has it: the text cache on, in a fresh folder (a run's first pass fills it)
    from omegaconf import OmegaConf

    probe_cache = tempfile.mkdtemp(prefix="bench_probe_cache_")
    try:
        probe_cfg = OmegaConf.merge(cfg, {"model": {"text": {"cache_dir": probe_cache}}})
        probe_model = our_loop.build_model(probe_cfg, 1)
        probe_model.load_state_dict(shipped_model.state_dict())
        probes = script.timed("probes", probe_costs.probe_seconds, probe_cfg, probe_model)
        # the FLOP passes start cold too: a model of their own on a cache folder of their own
        flop_cfg = OmegaConf.merge(cfg, {"model": {"text": {"cache_dir": f"{probe_cache}/flops"}}})
        flop_model = our_loop.build_model(flop_cfg, 1)
        flop_model.load_state_dict(shipped_model.state_dict())
        probe_pass_flops = script.timed("probe FLOPs", probe_costs.probe_flops, flop_cfg, flop_model)
        del flop_model
    finally:
        shutil.rmtree(probe_cache, ignore_errors=True)
    step_frozen_flops = step_costs.frozen_flops(shipped_model, batches[0])
    per_epoch = step_costs.steps_per_epoch(cfg)  # from the configured data and batch size
    no_cache_step = raw["arms"]["ours_shipped_no_cache"]["step_s"]
    # the loader runs beside the model, so an epoch lasts as long as the slower of the two; a fresh clone's default
    # run fills its text cache in epoch 1 (steps of the no-cache arm) and reads it in epoch 2 (the cached arm's)
    cached_step = raw["arms"]["ours_shipped"]["step_s"]
    epoch_s = per_epoch * max((no_cache_step + cached_step) / 2, split["data"])
    shipped_rate = cfg.data.batch_size / raw["arms"]["ours_shipped"]["step_s"]
    # FLOPs: the probes' share of a run's compute, whatever the machine. A fresh run computes every step's frozen text
    # layers in epoch 1 and reads them in the later epochs (a hit rate of 1 assumed), its first probe pass computes
    # the probe captions' prefix; the floor is the most favourable case for the probes (every pass reads a warm cache,
    # training recomputes everything): no probe pass at training's FLOP rate can cost less than it.
    epochs = int(cfg.trainer.max_epochs)
    run_flops = per_epoch * (flops["total"] + (epochs - 1) * (flops["total"] - step_frozen_flops))
    warm_pass = min(probe_pass_flops)
    probe_flops = {"passes": probe_pass_flops, "run_training": run_flops, "step": flops["total"],
                   "step_frozen": step_frozen_flops, "epochs": epochs,
                   "floor_fraction": warm_pass * len(probe_pass_flops) / (per_epoch * epochs * flops["total"]),
                   # FLOP/s of the timed passes against the reference step's: above 1, probes compute faster
                   "rate_vs_training": (sum(probe_pass_flops) / sum(probes["passes"])) / achieved}

    spreads = {**main, **large}
    out.update({key: s["median"] for key, s in spreads.items()})
    out.update({
        "spread": spreads,
        "data_vs_model": data["samples_per_s"] / shipped_rate,
        "probe_overhead_fraction": probes["seconds"] / epoch_s,
        "probe_flops_fraction": sum(probe_pass_flops) / run_flops,
        "flop_utilisation": achieved / peak,
        "torch_threads": torch.get_num_threads(),
    })
    raw.update({"batch_size": len(batches[0]["caption"]), "cost_split_s": split, "reference_step_s": step_s,
                "flops": {"per_step": flops["total"], "image_per_step": flops["image"], "text_per_step": flops["text"],
                          "achieved_per_s": achieved, "matmul_peak_per_s": peak},
                "data": {**data, "ours_shipped_samples_per_s": shipped_rate},
                "probes": {**probes, "steps_per_epoch": per_epoch, "step_s": (no_cache_step + cached_step) / 2,
                   "epoch_s": epoch_s, "flops": probe_flops}})
    out["raw"] = raw
    out["wall_s"] = time.perf_counter() - began
    return out


def table(r: dict) -> str:
    from benchmarks.timing import describe

    raw, s, lines = r["raw"], r["spread"], []
    arms = raw["arms"]

    def ms(arm, where=arms):
        return f"{where[arm]['step_s'] * 1000:.0f} ms"

    lines.append(f"every ratio: median over {r['rounds']} A B B A block(s) (min-max), {r['steps_per_run']} timed "
                 f"steps per run; above 1 = the first-named side is faster")
    lines.append(f"the default model (batch {raw['batch_size']}), ours against open_clip:")
    rows = [("ours vs open_clip, like for like (the loops)", "train_vs_open_clip_like_for_like",
             f"{ms('ours_like_for_like')} vs {ms('open_clip_like_for_like')}"),
            ("  open_clip padding factor (64 tokens vs ours)", "open_clip_padding_factor",
             f"{ms('open_clip_pad64_eval')} vs {ms('open_clip_like_for_like')}"),
            ("  open_clip dropout factor (locked layers train mode)", "open_clip_dropout_factor",
             f"{ms('open_clip_shipped')} vs {ms('open_clip_pad64_eval')}"),
            ("ours vs open_clip as it ships", "train_vs_open_clip",
             f"product of the three {raw['open_clip_factors_product']['median']:.2f}x"),
            ("ours as shipped (cache warm) vs open_clip as shipped", "train_vs_open_clip_as_shipped",
             f"{ms('ours_shipped')} vs {ms('open_clip_shipped')}; hit rate "
             f"{arms['ours_shipped']['cache_hit_rate']:.2f}"),
            ("text cache (warm) vs frozen layers recomputed", "text_cache_speedup",
             f"{ms('ours_shipped')} vs {ms('ours_shipped_no_cache')}"),
            ("length groups vs one padded group", "length_groups_speedup",
             f"{ms('ours_shipped_no_cache')} vs {ms('ours_shipped_one_group')}")]
    v = raw["vit_b16"]
    rows += [("ViT-B/16-sized: ours vs open_clip, like for like", "train_vs_open_clip_vit_b16_like_for_like",
              f"{ms('ours_like_for_like', v['arms'])} vs {ms('open_clip_like_for_like', v['arms'])}, batch "
              f"{v['batch_size']}"),
             ("ViT-B/16-sized: ours vs open_clip as it ships", "train_vs_open_clip_vit_b16",
              f"{ms('ours_like_for_like', v['arms'])} vs {ms('open_clip_shipped', v['arms'])}"),
             (f"ViT-B/16-sized: patch dropout {PATCH_DROPOUT:g} vs none (ours)", "patch_dropout_speedup_vit_b16",
              f"{ms('ours_patch_dropout', v['arms'])} vs {ms('ours_like_for_like', v['arms'])}")]
    for label, key, detail in rows:
        lines.append(f"  {label:<54} {describe(s[key]):<26} {detail}")
    t = raw["open_clip_tokens"]
    lines.append(f"  text positions per batch: open_clip {t['open_clip_per_batch']:.0f}, ours {t['ours_per_batch']:.0f}"
                 f"; open_clip's ids are ours padded further: {t['same_token_ids']}")
    g = raw["length_groups_tokens"]
    lines.append(f"  length groups: positions per batch {g['padded']:.0f} in one group -> {g['grouped']:.0f} in "
                 f"{g['groups']} (real tokens {g['real']:.0f})")
    lines.append("text cache by trained MiniLM layers (bound = step / (step - the frozen layers' own time)):")
    for trained, c in sorted(raw["text_cache_by_trained_layers"].items(), reverse=True):
        lines.append(f"  {trained} of 6 trained: {c['off_step_s'] * 1000:.0f} ms recomputed, "
                     f"{c['on_step_s'] * 1000:.0f} ms cached = {describe(c['speedup'])}, bound {c['bound']:.2f}x; "
                     f"hit rate {c['hit_rate']:.2f}")
    step = raw["reference_step_s"]
    lines.append(f"one step of the shipped default, frozen layers recomputed ({step * 1000:.0f} ms; data runs beside "
                 f"it in the loader):")
    for part, sec in raw["cost_split_s"].items():
        lines.append(f"  {part:<24} {sec * 1000:>8.1f} ms  {sec / step:>6.1%}")
    f = raw["flops"]
    lines.append(f"model FLOPs per step {f['per_step'] / 1e9:.1f} G (image {f['image_per_step'] / 1e9:.1f} G, text "
                 f"{f['text_per_step'] / 1e9:.1f} G); achieved {f['achieved_per_s'] / 1e9:.1f} GFLOP/s of a measured "
                 f"fp32 matmul peak {f['matmul_peak_per_s'] / 1e9:.1f} GFLOP/s = {r['flop_utilisation']:.1%}")
    d, p = raw["data"], raw["probes"]
    lines.append(f"data pipeline: {d['samples_per_s']:.0f} samples/s with {d['num_workers']} worker(s) = "
                 f"{r['data_vs_model']:.2f}x the shipped default's training rate, cache warm (>1: the model is the "
                 f"bottleneck)")
    lines.append(f"probes: {p['seconds']:.1f} s per pass = {r['probe_overhead_fraction']:.1%} of an epoch "
                 f"({p['steps_per_epoch']} steps x {p['step_s']:.2f} s = {p['epoch_s']:.0f} s)")
    pf = p["flops"]
    lines.append(f"probe FLOPs: {' + '.join(f'{x / 1e12:.2f}' for x in pf['passes'])} TFLOP in the passes = "
                 f"{r['probe_flops_fraction']:.1%} of the run's training ({pf['run_training'] / 1e12:.1f} TFLOP); "
                 f"floor {pf['floor_fraction']:.1%} (every pass on a warm cache, training recomputing all); probe "
                 f"FLOP/s = {pf['rate_vs_training']:.2f}x training's")
    m = r["machine"]
    lines.append(f"machine: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']}, load average "
                 f"{m['load_average']:.2f} at the start; {r['date']}; the run took {r['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks import script

    return script.script_main(argv, parse, run, table)


if __name__ == "__main__":
    sys.exit(main())
