"""`make bench-gpu-decoder`: decoder text towers at real sizes on one GPU (bf16-mixed): samples/s, peak memory and
model FLOP utilisation of ViT-B/16 at 224 px with a Qwen3-Embedding-0.6B-sized or a Gemma-2-2B-sized decoder (4
layers trained, the frozen ones in bfloat16), with the text cache warm and with the frozen layers recomputed.

Usage: python benchmarks/bench_gpu_decoder.py [--steps N] [--batch B] [--cases qwen3_0.6b,gemma2_2b]
                                           [--out bench_gpu_decoder.json] [key=value ...]
The decoders have random weights (built on the GPU from their configuration, saved to a temporary folder: nothing
is downloaded) and the bundled MiniLM's 30,522-token vocabulary, so their embedding tables are smaller than the
real models' (151,669 and 256,000 rows): peak memory is below theirs by that table. MFU is model FLOPs per step
(torch.utils.flop_counter, under bf16 autocast) / step time / the card's dense bf16 peak from its data sheet
(`benchmarks/peaks.py`; omitted, with the reason, for a card not listed there); beside it the same FLOP rate over
the best large bf16 matmul measured in this run.
"""

from __future__ import annotations

import datetime
import gc
import os
import statistics
import sys
import tempfile

from lit_compclip.cli_args import ScriptParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NO_GPU = 2  # the exit status without a CUDA device
# ViT-B/16 at 224 px with its own patchify and class-token pooling
VIT_B16_224 = ["model.image.width=768", "model.image.depth=12", "model.image.heads=12", "model.image.patch_size=16",
               "model.image.img_size=224", "model.image.stem=patch", "model.image.pool=model"]
# name -> (family, random_lm.random_config sizes, pooling): the published configurations' layer shapes
CASES = {
    "qwen3_0.6b": ("qwen3", {"layers": 28, "width": 1024, "heads": 16, "kv_heads": 8, "intermediate_size": 3072,
                             "head_dim": 128}, "eos"),  # Qwen3-Embedding pools at the last (EOS) token
    "gemma2_2b": ("gemma2", {"layers": 26, "width": 2304, "heads": 8, "kv_heads": 4, "intermediate_size": 9216,
                             "head_dim": 256}, "mean"),
}
TRAINED = 4


def save_decoder(folder: str, family: str, sizes: dict, device: str = "cuda", seed: int = 0) -> str:
    """A random decoder of `sizes` saved in `folder` in bfloat16, initialised on `device` (a 2 B model initialised
    on the CPU takes minutes), with the family's tokenizer conventions on the MiniLM vocabulary."""
    import torch
    from transformers import AutoModel

    from lit_compclip.towers.random_lm import family_tokenizer, random_config

    torch.manual_seed(seed)
    with torch.device(device):
        lm = AutoModel.from_config(random_config(family, **sizes), dtype=torch.bfloat16)
    lm.save_pretrained(folder)
    family_tokenizer(family).save_pretrained(folder)
    del lm
    return folder


def text_overrides(folder: str, pooling: str, cache_dir: str | None, trained: int = TRAINED) -> list[str]:
    return ["model.text.tower=transformers", f"model.text.model={folder}", f"model.text.unfreeze_layers={trained}",
            f"model.text.pooling={pooling}", "model.text.frozen_dtype=bfloat16",
            f"model.text.cache_dir={cache_dir or 'null'}"]


def run_case(cfg, steps: int, warmup: int, device: str = "cuda") -> dict:
    """One model trained by our Lightning loop in bf16-mixed: samples/s, step time, peak memory, FLOPs per step
    (`device="cpu"` only to test this code where there is no GPU; no memory figure there)."""
    import torch

    from benchmarks import our_loop, peaks, script, step_costs

    cuda, collected = device == "cuda", 4
    fill = collected if cfg.model.text.get("cache_dir") else 0  # one pass over the batches first fills a cache
    model = our_loop.build_model(cfg, warmup + fill + steps)
    batches = script.timed("  collect batches", our_loop.collect_batches, our_loop.data_module(cfg, model), collected)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ours = script.timed("  train", our_loop.time_ours, None, batches, steps, warmup + fill,
                        "gpu" if cuda else device, "bf16-mixed", model=model)
    peak_memory = torch.cuda.max_memory_allocated() if cuda else None
    model = ours["model"].to(device)
    batch = {**batches[0], "image": batches[0]["image"].to(device)}
    with torch.autocast(device, dtype=torch.bfloat16):
        flops = step_costs.count_flops(model, batch)  # with a warm cache: the trained tail's FLOPs only
    return {"samples_per_s": ours["samples_per_s"], "step_s": statistics.median(ours["intervals"]),
            "peak_memory_bytes": peak_memory, "flops_per_step": flops["total"], "text_flops_per_step": flops["text"],
            "image_flops_check": peaks.image_flops_check(model.model.image, len(batches[0]["caption"]), flops["image"]),
            "cache": ours["cache"], "batch_size": len(batches[0]["caption"]), "timed_steps": steps}


def parse(argv):
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--out", default="bench_gpu_decoder.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides of the default experiment")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        p.error(f"--cases: unknown {unknown[0] if unknown else '(none given)'}; choose from {', '.join(CASES)}")
    return args


def arm_line(name: str, arm: str, r: dict) -> str:
    """One arm's row of the table: samples/s, peak memory, MFU (and of the measured peak), and for the cached arm
    the MFU its step would have with the uncached step's FLOPs."""
    from benchmarks import peaks

    if "error" in r:
        return f"{name + ' ' + arm:<22} {r['error']}"
    own = (r["mfu"], r["mfu_of_measured_matmul_peak"])
    uncached = (r.get("mfu_of_uncached_flops", own[0]), r.get("mfu_of_uncached_flops_of_measured_matmul_peak", own[1]))
    return (f"{name + ' ' + arm:<22} {r['samples_per_s']:>10.0f} {r['peak_memory_bytes'] / 2 ** 30:>9.1f} "
            f"{peaks.percent(own[0]):>7} {peaks.percent(own[1]):>12} {peaks.percent(uncached[0]):>21} "
            f"{peaks.percent(uncached[1]):>12}")


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_decoder: no CUDA GPU here (torch.cuda.is_available() is False); `make bench-decoder` "
              "measures the CPU", file=sys.stderr)
        return NO_GPU
    import shutil

    from benchmarks import peaks, script, step_costs
    from lit_compclip.config import load_config
    from lit_compclip.config.plugins import prepare

    card = torch.cuda.get_device_name(0)
    measured = script.timed("bf16 matmul peak", step_costs.matmul_peak, 8192, torch.bfloat16, "cuda", 20)
    record = peaks.peak_record(card, measured)
    peak = record["datasheet_bf16_dense_peak_per_s"]  # None for a card not listed: MFU omitted
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": script.machine(), **record, "precision": "bf16-mixed", "trained_layers": TRAINED, "cases": {}}
    base = VIT_B16_224 + list(args.overrides) + [f"data.batch_size={args.batch}"]
    prepare(load_config(["experiments/default.yaml"], base))
    folder = tempfile.mkdtemp(prefix="bench_gpu_decoder_")
    try:
        for name in args.cases:
            family, sizes, pooling = CASES[name]
            lm = script.timed(f"save a random {name}", save_decoder, os.path.join(folder, name), family, sizes)
            case = out["cases"][name] = {"family": family, **sizes, "pooling": pooling}
            for arm, cache in (("no_cache", None), ("cache", os.path.join(folder, f"{name}_cache"))):
                print(f"[bench-gpu-decoder] {name}, {arm}", flush=True)
                cfg = load_config(["experiments/default.yaml"], base + text_overrides(lm, pooling, cache))
                try:
                    r = run_case(cfg, args.steps, 5)
                    r.update(peaks.utilisation(r["flops_per_step"], r["step_s"], peak, measured))
                except torch.cuda.OutOfMemoryError as e:
                    r = {"error": script.out_of_memory(e)}
                case[arm] = r
                # each arm kept and printed as it ends: a lease may end inside the next one (the 2 B case's did)
                script.save(out, args.out, "bench-gpu-decoder")
                print(arm_line(name, arm, r), flush=True)
                gc.collect()  # the arm's model, optimizer and Trainer, before the next one is built
                torch.cuda.empty_cache()
            if "error" not in case["no_cache"] and "error" not in case["cache"]:
                # the cached step as work done: the FLOPs of the step it replaces, over its own time
                uncached = peaks.utilisation(case["no_cache"]["flops_per_step"], case["cache"]["step_s"], peak,
                                             measured)
                case["cache"]["mfu_of_uncached_flops"] = uncached["mfu"]
                case["cache"]["mfu_of_uncached_flops_of_measured_matmul_peak"] = uncached["mfu_of_measured_matmul_peak"]
                case["cache_speedup"] = case["no_cache"]["step_s"] / case["cache"]["step_s"]
                script.save(out, args.out, "bench-gpu-decoder")
            shutil.rmtree(lm, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{'case':<22} {'samples/s':>10} {'peak GiB':>9} {'MFU':>7} {'of measured':>12} "
          f"{'MFU (uncached FLOPs)':>21} {'of measured':>12}")
    for name, case in out["cases"].items():
        for arm in ("no_cache", "cache"):
            print(arm_line(name, arm, case[arm]))
        if "cache_speedup" in case:
            print(f"{'':<22} text cache speed-up {case['cache_speedup']:.2f}x")
    print(peaks.peak_line(record))
    script.save(out, args.out, "bench-gpu-decoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
