"""Tiny WebDataset shards with a known number of broken samples of each kind (for the exact skip-count tests)."""

from __future__ import annotations

import io
import random
from collections import Counter

import webdataset as wds
from PIL import Image

# kind -> the reason the data module counts it under
KINDS = {"truncated_jpeg": "bad_image", "garbage_jpeg": "bad_image", "bad_json": "bad_json",
         "no_caption": "no_caption", "no_image": "no_image"}


def jpeg(seed: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3)).save(buf, "JPEG")
    return buf.getvalue()


def broken(kind: str, key: str) -> dict:
    if kind == "truncated_jpeg":
        whole = jpeg(len(key))
        return {"__key__": key, "jpg": whole[:len(whole) // 2], "txt": "a cut image"}
    if kind == "garbage_jpeg":
        return {"__key__": key, "jpg": random.Random(key).randbytes(200), "txt": "noise"}
    if kind == "bad_json":
        return {"__key__": key, "jpg": jpeg(1), "json": b'{"txt": "unclosed'}
    if kind == "no_caption":
        return {"__key__": key, "jpg": jpeg(2), "json": b'{"other": 1}'}
    if kind == "no_image":
        return {"__key__": key, "txt": "a caption without its image", "json": b"{}"}
    raise ValueError(kind)


def write_shard(path, good: int, bad: dict[str, int], prefix: str) -> dict[str, int]:
    """`good` good samples with the `bad` ones (kind -> count) spread over the shard: the first sample, between
    batches, and the last ones (after a worker's last full batch). Returns the expected counts by reason."""
    samples = [{"__key__": f"{prefix}_{i:03d}", "jpg": jpeg(i), "txt": f"sample {i} of {prefix}"} for i in range(good)]
    bad_samples = [broken(kind, f"{prefix}_{kind}_{j}") for kind, n in bad.items() for j in range(n)]
    for j, sample in enumerate(bad_samples):
        at = 0 if j == 0 else len(samples) if j % 3 == 1 else (j * 5) % len(samples)
        samples.insert(at, sample)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    expected = Counter()
    for kind, n in bad.items():
        expected[KINDS[kind]] += n
    return dict(expected)


def write_cut_shard(path, good: int, prefix: str) -> dict[str, int]:
    """A shard cut in the middle of its last sample's image: its good samples read, then one truncated_shard."""
    image = jpeg(999, size=48)
    samples = [{"__key__": f"{prefix}_{i:03d}", "jpg": jpeg(i), "txt": f"sample {i} of {prefix}"} for i in range(good)]
    with wds.TarWriter(str(path)) as sink:
        for sample in samples + [{"__key__": f"{prefix}_cut", "jpg": image, "txt": "cut off"}]:
            sink.write(sample)
    data = path.read_bytes()
    path.write_bytes(data[:data.find(image) + len(image) // 2])
    return {"truncated_shard": 1}


def add(*counts: dict[str, int]) -> dict[str, int]:
    return dict(sum((Counter(c) for c in counts), Counter()))
