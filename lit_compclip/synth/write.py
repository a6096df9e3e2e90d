"""Write the synthetic world: its img2dataset-style shards and, through probesets.py and manifest.py, its probe sets
and manifest, staged so that a failed build leaves nothing half-built."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

from lit_compclip.cli_args import new_folder
from lit_compclip.synth.manifest import OUTPUTS, manifest, refusal, world_args
from lit_compclip.synth.probesets import write_probes
from lit_compclip.synth.samples import Sample, families, image_bytes, record, unit_size
from lit_compclip.synth.world import HELD_OUT, MEMBERS, TWIN_MEMBERS


def generate(out_dir, *, overwrite=False, workers: int | None = None, **kwargs) -> dict:
    """Write shards, probes and manifest.json under `out_dir` from `world_args(**kwargs)`; a no-op when its manifest
    holds the same arguments.

    Everything is written into a hidden folder inside `out_dir` first and moved into place at the end, the manifest
    last: a failed or interrupted build leaves any world there as it was, never a half-built one. The shards' images
    are rendered by `workers` processes (default: one per CPU, at most 8, for worlds of 2,000 training samples or
    more; a process pool costs more than it saves on a small one); the bytes do not depend on it."""
    args = world_args(**kwargs)
    train_families, eval_families, shape_twins = args["train_families"], args["eval_families"], args["shape_twins"]
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    why = None if overwrite else refusal(out, args)
    if why:
        raise ValueError(f"{why}; pass overwrite=True to rebuild it, or choose another out_dir")
    if not overwrite and manifest_path.exists():
        return {**json.loads(manifest_path.read_text()), "out_dir": str(out), "seconds": 0.0, "skipped": True}
    start = time.perf_counter()
    with new_folder(out):  # a failed first build leaves no folder behind
        stage = Path(tempfile.mkdtemp(dir=out, prefix=".building-"))
        try:
            n_train = train_families * unit_size("train", args)
            if workers is None:
                workers = min(8, os.cpu_count() or 1) if n_train >= 2000 else 1
            train = _write_shards(stage / "train", families("train", 0, train_families, 0, args), args, workers)
            evals = list(families("val", train_families, eval_families, n_train, args))
            jpgs: dict[int, bytes] = {}
            val = _write_shards(stage / "val", iter(evals), args, workers, keep=jpgs)
            probes = write_probes(stage / "probes", evals, args, jpgs)
            written = manifest(
                args,
                counts={"train_samples": train["samples"], "train_shards": train["shards"],
                        "val_samples": val["samples"], "val_shards": val["shards"], "train_families": train_families,
                        "eval_families": eval_families, "probes": probes},
                stats={"alt_text_words_mean": round(train["alt_text_words"] / train["samples"], 2),
                       "recaption_words_mean": round(train["recaption_words"] / train["samples"], 2),
                       "held_out_combos": sorted(f"{c} {s}" for c, s in HELD_OUT),
                       "family_members": list(MEMBERS) + list(TWIN_MEMBERS) * shape_twins})
            (stage / "manifest.json").write_text(json.dumps(written, indent=1) + "\n")
            for p in OUTPUTS:  # only what we write: out_dir may hold other things
                path = out / p
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            for p in OUTPUTS[::-1]:  # the manifest last: a crash in between leaves no manifest, which is refused
                os.replace(stage / p, out / p)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return {**written, "out_dir": str(out), "seconds": round(time.perf_counter() - start, 2), "skipped": False}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata so identical arguments give identical bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _files(sample: Sample, args: dict) -> tuple[dict, bytes]:
    """One sample's KEY.json record and KEY.jpg bytes (a pure function of the sample: any process may make them)."""
    return record(sample, args["seed"], args["plain_lists"]), image_bytes(sample, args)


def _made(samples: Iterator[Sample], args: dict, workers: int) -> Iterator[tuple[Sample, dict, bytes]]:
    """(sample, record, jpg) in the samples' order; rendered by `workers` processes when more than 1."""
    if workers <= 1:
        yield from ((s, *_files(s, args)) for s in samples)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    samples = list(samples)
    # spawn, not fork: the caller may be a training process with torch's threads running
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        made = pool.map(_files, samples, [args] * len(samples), chunksize=max(1, min(200, len(samples) // workers)))
        yield from ((s, *m) for s, m in zip(samples, made))


def _write_shards(folder: Path, samples: Iterator[Sample], args: dict, workers: int = 1,
                  keep: dict[int, bytes] | None = None) -> dict:
    """Shards of args["shard_size"] samples; `keep` (if given) collects each sample's JPEG bytes by key."""
    folder.mkdir(parents=True)
    n = shards = alt_words = recap_words = 0
    tar = None
    for sample, rec, jpg in _made(samples, args, workers):
        if n % args["shard_size"] == 0:
            if tar:
                tar.close()
            tar = tarfile.open(folder / f"shard-{shards:06d}.tar", "w", format=tarfile.USTAR_FORMAT)
            shards += 1
        _add(tar, f"{sample.name}.jpg", jpg)
        if keep is not None:
            keep[sample.key] = jpg
        _add(tar, f"{sample.name}.json", json.dumps(rec).encode())
        _add(tar, f"{sample.name}.txt", rec["alt_text"].encode())
        n += 1
        alt_words += len(rec["alt_text"].split())
        recap_words += len(rec["recaption"].split())
    if tar:
        tar.close()
    return {"samples": n, "shards": shards, "alt_text_words": alt_words, "recaption_words": recap_words}
