"""`make bench-gpu`: samples/s and model FLOP utilisation on one GPU (bf16-mixed), ours beside open_clip.

Usage: python -m benchmarks.bench_gpu [--steps N] [--batch B] [--out bench_gpu.json] [--only cases|levers] [key=value ...]
Two cases, each trained by our Lightning loop and by open_clip's own `train_one_epoch` on the same batches:
ViT-B/16 at 224 px with the bundled MiniLM (last 2 layers trained), and ViT-B/16 with a larger
sentence-transformers-shaped tower (a 12-layer, 768-wide BERT with random weights and MiniLM's tokenizer, built in a
temporary folder: nothing is downloaded). MFU is model FLOPs per step / step time / the card's dense bf16 peak from
its data sheet (`benchmarks/peaks.py`; omitted, with the reason, for a card not listed there); beside it the same
FLOP rate over a large bf16 matmul measured in the same run. The counted FLOPs of the image tower are checked
against an analytic count of the same ViT (`peaks.vit_train_flops`). Then the lever table (`benchmarks/levers.py`):
the ViT-B/16 + MiniLM step with each speed option on its own row (compile, the fused and foreach AdamW, a doubled
batch, patch dropout, the text cache with length groups and its host-side bookkeeping), then all together.
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile

from lit_compclip.cli_args import ScriptParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The shipped conv stem at patch 16 (four halvings), with the default's stride-1 convolutions after the last two.
VIT_B16_224 = ["model.image.width=768", "model.image.depth=12", "model.image.heads=12", "model.image.patch_size=16",
               "model.image.img_size=224", "model.image.stem_convs=[0,0,1,1]"]
LARGE_TEXT = {"layers": 12, "width": 768, "heads": 12}


def cases(folder: str, text: dict = LARGE_TEXT) -> dict[str, list[str]]:
    """name -> overrides of each benchmarked model; builds the larger text tower's folder inside `folder`."""
    from benchmarks.our_loop import make_bert_folder

    bert = make_bert_folder(os.path.join(folder, "bert"), text["layers"], text["width"], text["heads"])
    return {"vit_b16_minilm": VIT_B16_224,
            f"vit_b16_bert{text['layers']}x{text['width']}": VIT_B16_224 + [f"model.text.model={bert}"]}


def run_case(cfg, steps: int, warmup: int, peak: float | None, device: str = "cuda",
             measured: float | None = None) -> dict:
    """One model trained by both loops in bf16-mixed: samples/s, step times, FLOPs per step (counted, and the image
    tower's beside its analytic count) and utilisation: MFU over `peak`, the card's data-sheet peak (None: omitted),
    and over `measured`, the run's matmul peak (`device="cpu"` only to test this code where there is no GPU)."""
    import torch
    from omegaconf import OmegaConf

    from benchmarks import our_loop, peaks, script, step_costs
    from benchmarks.open_clip_baseline import build_open_clip, time_open_clip

    model = our_loop.build_model(cfg, 1)
    batches = script.timed("  collect batches", our_loop.collect_batches, our_loop.data_module(cfg, model), 4)
    ours = script.timed("  ours", our_loop.time_ours, cfg, batches, steps, warmup,
                        "gpu" if device == "cuda" else device, "bf16-mixed")
    oc_model, tokenizer = build_open_clip(cfg)
    theirs = script.timed("  open_clip", time_open_clip, oc_model, tokenizer, batches, steps, warmup,
                          OmegaConf.to_container(cfg.optim), device, "amp_bf16")
    del oc_model
    model = ours["model"].to(device)
    batch = {**batches[0], "image": batches[0]["image"].to(device)}
    with torch.autocast(device, dtype=torch.bfloat16):
        flops = step_costs.count_flops(model, batch)
    step_s, oc_step_s = statistics.median(ours["intervals"]), statistics.median(theirs["intervals"])
    mine = peaks.utilisation(flops["total"], step_s, peak, measured)
    theirs_mfu = peaks.utilisation(flops["total"], oc_step_s, peak, measured)  # open_clip's padded text undercounted
    batch_size = len(batches[0]["caption"])
    return {"ours_samples_per_s": ours["samples_per_s"], "open_clip_samples_per_s": theirs["samples_per_s"],
            "train_vs_open_clip": ours["samples_per_s"] / theirs["samples_per_s"],
            "ours_step_s": step_s, "open_clip_step_s": oc_step_s, "flops_per_step": flops["total"],
            "image_flops_check": peaks.image_flops_check(model.model.image, batch_size, flops["image"]),
            "ours_mfu": mine["mfu"], "ours_mfu_of_measured_matmul_peak": mine["mfu_of_measured_matmul_peak"],
            "open_clip_mfu_same_flops": theirs_mfu["mfu"],
            "open_clip_mfu_of_measured_matmul_peak_same_flops": theirs_mfu["mfu_of_measured_matmul_peak"],
            "batch_size": batch_size, "timed_steps": steps,
            "open_clip_changed": theirs["changed"]}


def main(argv=None) -> int:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default="bench_gpu.json")
    p.add_argument("--only", choices=["cases", "levers"], help="run one part: the cases beside open_clip, or the levers")
    p.add_argument("overrides", nargs="*", help="key=value config overrides of the default experiment")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); `make bench` measures the CPU",
              file=sys.stderr)
        return 1
    from benchmarks import levers, our_loop, peaks, script, step_costs
    from lit_compclip.config import load_config
    from lit_compclip.config.plugins import prepare

    measured = script.timed("bf16 matmul peak", step_costs.matmul_peak, 8192, torch.bfloat16, "cuda", 20)
    record = peaks.peak_record(torch.cuda.get_device_name(0), measured)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": script.machine(), **record, "precision": "bf16-mixed", "cases": {}}
    peak = record["datasheet_bf16_dense_peak_per_s"]
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in (cases(folder).items() if args.only != "levers" else ()):
            cfg = load_config(["experiments/default.yaml"], our_loop.LIKE_FOR_LIKE + list(args.overrides) + extra
                              + [f"data.batch_size={args.batch}"])
            prepare(cfg)
            print(f"[bench-gpu] {name}", flush=True)
            out["cases"][name] = run_case(cfg, args.steps, 5, peak, measured=measured)
            script.save(out, args.out, "bench-gpu")  # each case kept as it ends: a lease may run out mid-run
        if args.only != "cases":
            print("[bench-gpu] levers: ViT-B/16 + MiniLM", flush=True)
            out["levers"] = levers.lever_table(
                our_loop.LIKE_FOR_LIKE + list(args.overrides) + VIT_B16_224, args.batch, args.steps, 5, folder, "cuda",
                peak, measured, on_row=lambda rows: script.save({**out, "levers": rows}, args.out, "bench-gpu"))
    if out["cases"]:
        print(f"{'case':<26} {'ours samples/s':>15} {'open_clip':>10} {'ratio':>6} {'ours MFU':>9} {'of measured':>12} "
              f"{'open_clip MFU':>14} {'of measured':>12} {'GFLOP/sample':>13} {'counted/analytic image':>23}")
        for name, c in out["cases"].items():
            check = c["image_flops_check"].get("counted_vs_analytic")
            print(f"{name:<26} {c['ours_samples_per_s']:>15.0f} {c['open_clip_samples_per_s']:>10.0f} "
                  f"{c['train_vs_open_clip']:>5.2f}x {peaks.percent(c['ours_mfu']):>9} "
                  f"{peaks.percent(c['ours_mfu_of_measured_matmul_peak']):>12} "
                  f"{peaks.percent(c['open_clip_mfu_same_flops']):>14} "
                  f"{peaks.percent(c['open_clip_mfu_of_measured_matmul_peak_same_flops']):>12} "
                  f"{c['flops_per_step'] / c['batch_size'] / 1e9:>13.1f} {'-' if check is None else f'{check:.3f}':>23}")
    if "levers" in out:
        levers.print_table(out["levers"])
    print(peaks.peak_line(record))
    script.save(out, args.out, "bench-gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
