"""`make bench-data`: whether the training loader keeps one GPU fed, on real-size JPEGs at 224 px.

Usage: python -m benchmarks.bench_data [--quick] [--max-workers N] [--gpu-rate S] [--images I] [--batch B]
                                       [--samples-per-worker K] [--rounds R] [--out bench_data.json]
Writes WebDataset shards in img2dataset's layout (KEY.jpg, KEY.txt, KEY.json) with JPEGs of the sizes it writes
(half at 512 px on the short side, as `--resize_mode keep_ratio --image_size 512` leaves most images, half smaller,
256-511 px; four aspect ratios; smooth noise, gradients and grain, quality 95), then streams them through the
project's own training loader (WebDataModule, resampled shards, the schema's shuffle buffer) with the training
transform of a ViT-B/16 at 224 px, with 0 (in-process), 1, 2, 4, ... N loader workers. Every loader row is a ratio
against the in-process row of the same run; the GPU rate (default: the H200 figure of docs/BENCHMARKS.md) gives the
workers one GPU needs. In process, in A B B A blocks: decoding alone against decoding and the transform, and
Pillow's reduced-size JPEG decoding (`data.jpeg_draft`, the product's own `open_image`), with how far its 224 px
tensors are from the plain path's; and the loader again at the most workers with `data.jpeg_draft` set.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time

from lit_compclip.cli_args import ScriptParser

H200_RATE = 1992.0  # samples/s: ViT-B/16 + MiniLM training on one H200, docs/BENCHMARKS.md (2026-12-04)
IMG = 224
ASPECTS = (0.75, 1.0, 4 / 3, 1.5)  # width / height
QUALITY = 95  # img2dataset's default encode_quality


def parse(argv):
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 images, 0 and 1 worker, a 1-block trunk: a smoke test")
    p.add_argument("--max-workers", type=int, default=None,
                   help="most loader workers measured (default: this machine's cores; quick 1)")
    p.add_argument("--gpu-rate", type=float, default=H200_RATE,
                   help=f"samples/s one GPU trains at (default {H200_RATE:.0f}: docs/BENCHMARKS.md's H200)")
    p.add_argument("--images", type=int, default=None, help="distinct JPEGs written (default 256; quick 12)")
    p.add_argument("--batch", type=int, default=None, help="loader batch size (default 32; quick 4)")
    p.add_argument("--samples-per-worker", type=int, default=None,
                   help="samples timed per worker in each loader row (default 768; quick 8)")
    p.add_argument("--rounds", type=int, default=None, help="A B B A blocks in process (default 3; quick 1)")
    p.add_argument("--out", default="bench_data.json")
    args = p.parse_args(argv)
    defaults = {"max_workers": (1, os.cpu_count() or 1), "images": (12, 256), "batch": (4, 32),
                "samples_per_worker": (8, 768), "rounds": (1, 3)}
    for name, (quick, full) in defaults.items():
        value = getattr(args, name)
        if value is None:  # `is None`, not `or`: an explicit 0 is checked, not taken for "unset"
            setattr(args, name, value := quick if args.quick else full)
        if value < (name != "max_workers"):
            p.error(f"--{name.replace('_', '-')} must be >= {int(name != 'max_workers')}, got {value}")
    if not (args.gpu_rate > 0 and math.isfinite(args.gpu_rate)):
        p.error(f"--gpu-rate must be a positive number of samples/s, got {args.gpu_rate}")
    if args.samples_per_worker < args.batch:
        p.error(f"--samples-per-worker ({args.samples_per_worker}) must be at least one batch (--batch {args.batch})")
    if not os.path.isdir(folder := os.path.dirname(os.path.abspath(args.out))):
        p.error(f"--out {args.out!r}: folder {folder!r} does not exist")
    return args


def worker_counts(most: int) -> list[int]:
    """0 (in-process), 1, 2, 4, ... below `most`, and `most` itself."""
    counts, w = [0], 1
    while w < most:
        counts.append(w)
        w *= 2
    return counts + [most] if most > 0 else counts


def transforms(quick: bool):
    """(train transform, eval transform, their std, the crop scale) of a ViT-B/16 at 224 px (patchify stem, class
    token), built as `create_model(image=...)` builds them: the image tower alone (the transforms depend only on the
    input size and timm's data config, so --quick's 1-block trunk gives the same ones)."""
    from lit_compclip.towers.image import ImageTower

    tower = ImageTower(embed_dim=512, model="vit_base_patch16_224", img_size=IMG, patch_size=16,
                       depth=1 if quick else None, width=None, heads=None, pool="model", stem="patch")
    from timm.data import resolve_model_data_config

    return *tower.transforms(), resolve_model_data_config(tower.trunk)["std"], tower.crop_scale


def photo_jpeg(rng, width: int, height: int) -> bytes:
    """A JPEG whose size and entropy are a photograph's (about 20-75 KB at 256-512 px, 50 KB mean): smooth colour
    fields (noise at 1/40 scale, upsampled), two gradients and luminance grain."""
    import numpy as np
    from PIL import Image

    low = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grad = (xx / width)[..., None] * rng.uniform(-80, 80, 3) + (yy / height)[..., None] * rng.uniform(-80, 80, 3)
    grain = rng.normal(0, 1.0, (height, width, 1))  # (H, W, 1): the same in every channel, like sensor noise
    pixels = np.clip(base * 0.7 + grad + grain + 40, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def write_shards(folder: str, images: int, shards: int, seed: int = 0) -> list[bytes]:
    """`images` samples over `shards` tar files in img2dataset's layout; returns the JPEGs' bytes in key order."""
    import numpy as np
    import webdataset as wds

    rng, jpegs = np.random.default_rng(seed), []
    for i in range(images):
        short = 512 if i % 2 == 0 else int(rng.integers(256, 512))
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
        width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        jpegs.append(photo_jpeg(rng, width, height))
    for s in range(shards):
        with wds.TarWriter(os.path.join(folder, f"{s:05d}.tar")) as sink:
            for i in range(s, images, shards):
                key = f"{s:05d}{i:04d}"
                meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "caption": "photo"}
                sink.write({"__key__": key, "jpg": jpegs[i], "txt": b"photo", "json": json.dumps(meta).encode()})
    return jpegs


def loader_row(shards: str, transform, workers: int, batch: int, samples_per_worker: int,
               jpeg_draft: int | None = None) -> dict:
    """Samples/s of the training loader with `workers` workers (and data.jpeg_draft), after each worker's first
    batch (start-up and the shuffle buffer's fill are not counted)."""
    from lit_compclip.training.datamodule import WebDataModule

    skip = max(1, workers)
    timed = max(1, samples_per_worker * max(1, workers) // batch)
    dm = WebDataModule(train_shards=shards, val_shards=None, caption_fields={"txt": 1.0}, sentence_sample=None,
                       batch_size=batch, num_workers=workers, shuffle_buffer=1000, shard_shuffle=True, resampled=True,
                       samples_per_epoch=(skip + timed) * batch, group_key=None, seed=0, train_transform=transform,
                       eval_transform=transform, jpeg_draft=jpeg_draft)
    dm.setup("fit")
    n, start = 0, None
    try:
        for i, b in enumerate(dm.train_dataloader()):
            assert tuple(b["image"].shape[1:]) == (3, IMG, IMG), b["image"].shape
            if i == skip - 1:
                start = time.perf_counter()
            elif i >= skip:
                n += len(b["caption"])
    finally:
        dm.close()
    seconds = time.perf_counter() - start
    return {"workers": workers, "jpeg_draft": jpeg_draft, "samples_per_s": n / seconds, "samples": n,
            "seconds": seconds}


def in_process(jpegs: list[bytes], transform, draft: int, rounds: int) -> dict:
    """Decode alone and decode + transform, plain and drafted, in A B B A blocks on one thread."""
    from benchmarks import timing
    from lit_compclip.data.decode import open_image, transform_seeded

    def arm(size, transformed):
        def run(first):
            start = time.perf_counter()
            for i, data in enumerate(jpegs):
                image = open_image(data, size)
                if transformed:
                    transform_seeded(transform, image, i)
            return {"intervals": [time.perf_counter() - start]}
        return run

    arms = {"decode": arm(None, False), "decode_transform": arm(None, True),
            "draft_decode": arm(draft, False), "draft_decode_transform": arm(draft, True)}
    times = timing.alternate(arms, rounds, "in-process ")["times"]
    out = {f"{name}_per_s": len(jpegs) / timing.step_seconds(times, name) for name in arms}
    out["decode_share"] = timing.spread([statistics.median(d) / statistics.median(t) for d, t in
                                         zip(times["decode"], times["decode_transform"])])
    out["draft_speedup"] = timing.spread(timing.speedups(times, "draft_decode_transform", "decode_transform"))
    out["draft_decode_speedup"] = timing.spread(timing.speedups(times, "draft_decode", "decode"))
    return out


def draft_difference(jpegs: list[bytes], train, evaluate, std, draft: int) -> dict:
    """How far the drafted path's 224 px tensors are from the plain path's, in 8-bit levels: with the training
    transform and the same seeds (square images then also get another random crop position: `randint` over a
    smaller range draws another offset), and with the eval transform (the same geometry: the decoding scale alone)."""
    import torch

    from lit_compclip.data.decode import open_image, transform_seeded

    levels = torch.tensor(std).view(3, 1, 1) * 255  # normalised units -> 0-255 levels, per channel
    diffs: dict[str, list] = {"train": [], "eval": []}
    reduced = 0
    for i, data in enumerate(jpegs):
        plain, drafted = open_image(data, None), open_image(data, draft)
        reduced += drafted.size != plain.size
        for name, transform in (("train", train), ("eval", evaluate)):
            a, b = transform_seeded(transform, plain, i), transform_seeded(transform, drafted, i)
            diffs[name].append(((a - b).abs() * levels).flatten())
    out = {"draft_px": draft, "reduced_fraction": reduced / len(jpegs)}
    for name, parts in diffs.items():
        d = torch.cat(parts)
        out[f"{name}_mean_abs_levels"], out[f"{name}_max_abs_levels"] = d.mean().item(), d.max().item()
    return out


def run(args) -> dict:
    import torch

    from benchmarks import script

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process rows on one core, as a loader worker runs (DataLoader sets 1 there)
    try:
        transform, evaluate, std, crop_scale = script.timed("training transform", transforms, args.quick)
        # the smallest random crop is sqrt(crop_scale[0]) of the short side: drafted to keep it >= 224 px
        draft = math.ceil(IMG / math.sqrt(crop_scale[0]))
        counts = worker_counts(args.max_workers)
        out = {"quick": args.quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": script.machine(), "transform": repr(transform).replace("\n", " "),
               "settings": {"batch": args.batch, "samples_per_worker": args.samples_per_worker,
                            "rounds": args.rounds, "gpu_rate": args.gpu_rate,
                            "gpu_rate_source": "--gpu-rate" if args.gpu_rate != H200_RATE else
                            "docs/BENCHMARKS.md: ViT-B/16 + MiniLM on one H200 (2026-12-04)"}}
        with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
            jpegs = script.timed(f"{args.images} JPEGs in shards", write_shards, folder, args.images,
                                 max(4, max(counts)))
            kb = [len(j) / 1024 for j in jpegs]
            out["images"] = {"count": len(jpegs), "mean_kb": statistics.mean(kb), "min_kb": min(kb),
                             "max_kb": max(kb), "quality": QUALITY}
            rows = [script.timed(f"loader, {w} workers", loader_row, folder, transform, w, args.batch,
                                 args.samples_per_worker) for w in counts]
            # the most workers again with data.jpeg_draft: the product's own option, measured in the loader
            drafted = script.timed(f"loader, {counts[-1]} workers, data.jpeg_draft={draft}", loader_row, folder,
                                   transform, counts[-1], args.batch, args.samples_per_worker, draft)
        base = rows[0]["samples_per_s"]
        for r in rows + [drafted]:
            r["speedup_vs_in_process"] = r["samples_per_s"] / base
            r["per_worker"] = r["samples_per_s"] / max(1, r["workers"])
        drafted["speedup_vs_plain_same_workers"] = drafted["samples_per_s"] / rows[-1]["samples_per_s"]
        out["loader"], out["loader_draft"] = rows, drafted
        out["in_process"] = script.timed("in-process decode rows", in_process, jpegs, transform, draft, args.rounds)
        out["draft"] = script.timed("draft difference", draft_difference, jpegs, transform, evaluate, std, draft)
        out["gpu"] = gpu_figures(rows, args.gpu_rate, drafted)
    finally:
        torch.set_num_threads(threads)
    return out


def gpu_figures(rows: list[dict], gpu_rate: float, drafted: dict) -> dict:
    """Workers one GPU needs: at the per-worker rate of the most workers measured (all cores busy, the realistic
    figure), at the single worker's, and with data.jpeg_draft (the loader's row with it, at the most workers)."""
    top = max(rows, key=lambda r: r["workers"])
    one = next((r for r in rows if r["workers"] == 1), top)
    return {"rate": gpu_rate, "workers_measured": top["workers"], "loader_rate_at_most": top["samples_per_s"],
            "keeps_up": top["samples_per_s"] >= gpu_rate,
            "workers_needed": math.ceil(gpu_rate / top["per_worker"]),
            "workers_needed_single_worker_rate": math.ceil(gpu_rate / one["per_worker"]),
            "workers_needed_with_draft": math.ceil(gpu_rate / drafted["per_worker"])}


def table(r: dict) -> str:
    from benchmarks.timing import describe

    i = r["images"]
    lines = [f"{i['count']} JPEGs, {i['mean_kb']:.0f} KB mean ({i['min_kb']:.0f}-{i['max_kb']:.0f}), to {IMG} px; "
             f"{r['machine']['cpu_count']} cores ({r['machine']['device']})",
             f"{'workers':>7} {'samples/s':>10} {'per worker':>11} {'vs in-process':>14}"]
    for row in r["loader"] + [r["loader_draft"]]:
        lines.append(f"{row['workers']:>7} {row['samples_per_s']:>10.1f} {row['per_worker']:>11.1f} "
                     f"{row['speedup_vs_in_process']:>13.2f}x"
                     + (f"  data.jpeg_draft={row['jpeg_draft']}: {row['speedup_vs_plain_same_workers']:.2f}x the row "
                        "above" if row["jpeg_draft"] else ""))
    p, d, g = r["in_process"], r["draft"], r["gpu"]
    lines += [f"in process, one thread (samples/s): decode {p['decode_per_s']:.1f}, decode + transform "
              f"{p['decode_transform_per_s']:.1f} (decoding {p['decode_share']['median']:.0%} of it); with draft "
              f"({d['draft_px']} px): {p['draft_decode_per_s']:.1f} and {p['draft_decode_transform_per_s']:.1f}",
              f"draft speed-up: decode + transform {describe(p['draft_speedup'])}, decode alone "
              f"{describe(p['draft_decode_speedup'])}; {d['reduced_fraction']:.0%} of images decoded smaller; "
              f"{IMG} px tensors differ by {d['train_mean_abs_levels']:.2f} levels mean, "
              f"{d['train_max_abs_levels']:.0f} max (of 255; eval transform, same geometry: "
              f"{d['eval_mean_abs_levels']:.2f} mean, {d['eval_max_abs_levels']:.0f} max)",
              f"one GPU at {g['rate']:.0f} samples/s ({r['settings']['gpu_rate_source']}): "
              f"{g['workers_needed']} workers at the {g['workers_measured']}-worker rate "
              f"({g['workers_needed_single_worker_rate']} at the 1-worker rate, "
              f"{g['workers_needed_with_draft']} with data.jpeg_draft); {g['workers_measured']} workers here "
              f"{'keep' if g['keeps_up'] else 'do not keep'} up"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks import script

    return script.script_main(argv, parse, run, table, "bench-data")


if __name__ == "__main__":
    sys.exit(main())
