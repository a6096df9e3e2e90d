"""What the notebooks call: a run and its curves (read by runs.py), the held-out set embedded, its swapped-caption
variants, the probes' recorded failures (figures: explore_plots)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from lit_compclip.probes.report import COUNT_METRICS
# the notebooks call these as explore.*
from lit_compclip.reports.runs import (Curves, load_curves, load_run, probe_curves, probe_records,  # noqa: F401
                                       resolve, run_from_env, runs_from_env)

VARIANTS = ("caption", "swapped_attribute", "swapped_relation")


def load_checkpoint(run: dict[str, Any]):
    """The run's checkpoints/last.ckpt as a CompClipModel (lit_compclip.load) on the CPU in eval mode."""
    from lit_compclip.factory import load

    if run["checkpoint"] is None:
        found = sorted(p.name for p in (run["dir"] / "checkpoints").glob("*.ckpt"))
        raise FileNotFoundError(f"run {str(run['dir'])!r} has no checkpoints/last.ckpt; checkpoints: {found or 'none'}")
    return load(str(run["checkpoint"]))


def caption_field(run: dict[str, Any]) -> str:
    """The caption source the run trained on most ('recaption', 'alt_text', 'txt', ...)."""
    fields = (run["config"].get("data") or {}).get("caption_fields") or {"recaption": 1.0}
    return max(fields, key=fields.get)


# ---- curves (read by runs.py) ----

def accuracy_metrics(curves: dict[str, Curves]) -> list[str]:
    """The metrics worth a curve: accuracies and recalls, not counts, ties or seconds."""
    keys = {k for c in curves.values() for k in c}
    return sorted(k for k in keys if k.rsplit("/", 1)[-1] not in COUNT_METRICS | {"seconds"})


def final_table(curves: dict[str, Curves], metrics: Sequence[str] | None = None) -> str:
    """A markdown table of each run's last value per metric."""
    metrics = list(metrics or accuracy_metrics(curves))
    lines = ["| metric | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for m in metrics:
        cells = [f"{c[m][-1][1]:.3f}" if c.get(m) else "-" for c in curves.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the held-out set and its embeddings ----

def read_heldout(shards: str, limit: int | None = 256) -> list[dict[str, Any]]:
    """The first `limit` samples of WebDataset shards: {key, image (PIL), txt, and the KEY.json fields}."""
    from PIL import Image

    from lit_compclip.data.shards import expand_shards

    if not shards:
        raise ValueError("no held-out shards: the run's config has no data.val_shards; pass a shard spec")
    spec = "::".join(str(resolve(s)) for s in str(shards).split("::"))
    samples: dict[str, dict[str, Any]] = {}
    for url in expand_shards(spec):
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if not member.isfile() or (key not in samples and limit is not None and len(samples) >= limit):
                    continue
                data, sample = tar.extractfile(member).read(), samples.setdefault(key, {"key": key})
                if ext in ("jpg", "jpeg", "png", "webp"):
                    sample["image"] = Image.open(io.BytesIO(data)).convert("RGB")
                elif ext == "txt":
                    sample["txt"] = data.decode("utf-8")
                elif ext == "json":
                    sample.update({k: v for k, v in json.loads(data).items() if k != "key"})
    return [s for s in samples.values() if "image" in s]


def captions(samples: Sequence[dict], field: str) -> list[str]:
    """Each sample's caption from `field` ('txt' = KEY.txt, else a KEY.json field)."""
    missing = next((s["key"] for s in samples if not isinstance(s.get(field), str)), None)
    if missing is not None:
        raise ValueError(f"held-out sample {missing!r} has no caption field {field!r}; "
                         f"fields: {sorted(k for k, v in samples[0].items() if isinstance(v, str))}")
    return [s[field] for s in samples]


@torch.no_grad()
def embed(module, items: Sequence, batch_size: int = 64) -> Tensor:
    """L2-normalised fp32 CPU embeddings (N, D) of PIL images or of strings, as the probes compute them."""
    from lit_compclip.encoders.compclip import ModuleEncoder

    if not items:
        raise ValueError("embed needs at least one image or text")
    encoder = ModuleEncoder(module)
    encode = encoder.encode_text if isinstance(items[0], str) else encoder.encode_image
    return torch.cat([encode(list(items[i:i + batch_size])) for i in range(0, len(items), batch_size)])


def nearest(query: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(scores, indices), each (Q, k): the k keys most cosine-similar to each query, best first, ties by index."""
    sims = query @ keys.T  # (Q, K)
    scores, idx = torch.sort(sims, dim=1, descending=True, stable=True)
    return scores[:, :k], idx[:, :k]


def variant_similarities(module, samples: Sequence[dict], variants) -> dict[str, dict[str, Any]]:
    """{variant: {"texts": [...], "scores": (N,) cosine of each image with that variant of its caption}}, the variants
    of each sample made by `variants(scene, key)` -> {variant: text} (the synthetic world's:
    lit_compclip.synth.explore.variant_captions)."""
    bad = next((s["key"] for s in samples if not (s.get("scene") or {}).get("relations")), None)
    if bad is not None:
        raise ValueError(f"held-out sample {bad!r} has no scene graph with a relation (only synthetic shards do)")
    texts = {v: [] for v in VARIANTS}
    for s in samples:
        for v, text in variants(s["scene"], s["key"]).items():
            texts[v].append(text)
    images = embed(module, [s["image"] for s in samples])  # (N, D)
    return {v: {"texts": t, "scores": (images * embed(module, t)).sum(-1)} for v, t in texts.items()}


def variant_summary(sims: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Share of images whose caption beats each swapped variant strictly (a tie is wrong, as in the probes)."""
    true = sims["caption"]["scores"]
    return {v: (true > sims[v]["scores"]).float().mean().item() for v in VARIANTS[1:]}


def heldout_failures(samples: Sequence[dict], sims: dict[str, dict[str, Any]], variant: str, k: int = 8) -> list[dict]:
    """Gallery items of the k images whose swapped `variant` beats (or ties) their caption by the most."""
    if variant not in VARIANTS[1:]:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS[1:])}")
    gap = sims[variant]["scores"] - sims["caption"]["scores"]  # (N,) > 0: the swap wins
    order = [i for i in torch.argsort(gap, descending=True, stable=True).tolist() if gap[i] >= 0][:k]
    return [{"image": samples[i]["image"], "title": f"{samples[i]['key']}  margin {gap[i]:+.3f}",
             "lines": ["true: " + sims["caption"]["texts"][i], "won: " + sims[variant]["texts"][i]]} for i in order]


def project_2d(emb: Tensor) -> Tensor:
    """PCA to 2-D (N, 2): centred, on the top two principal axes, each axis's sign fixed (largest loading > 0)."""
    x = emb.double() - emb.double().mean(0)  # (N, D)
    _, _, vt = torch.linalg.svd(x, full_matrices=False)  # (min(N, D), D)
    axes = vt[:2]
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))  # (2, D)
    return (x @ axes.T).float()


# ---- failures recorded by the probes ----

def failure_gallery(run_dir: str | os.PathLike, probe: str, subset: str, k: int = 8) -> list[dict]:
    """Gallery items of the k worst failures in <run>/probe_records/<probe>/<subset>.jsonl (see probes/report)."""
    from lit_compclip.probes.base import ImageRef, load_image
    from lit_compclip.probes.report import margin, worst_failures

    path, rows = probe_records(run_dir, probe, subset)
    items = []
    for r in worst_failures(rows, k):
        if len(r["captions"]) > 1:  # a choice probe: the best-scoring wrong caption
            rival = max(zip(r["scores"][1:], r["captions"][1:]))[1]
        else:  # retrieval: the image that outranked the true one
            rival = "image " + Path((r.get("rival_images") or ["-"])[0]).name
        ref = ImageRef(resolve(r["image"]), tuple(r["box"]) if r.get("box") else None, f"record {r['id']} of {path}")
        items.append({"image": load_image(ref), "title": f"{r['id']}  margin {margin(r):+.3f}",
                      "lines": ["true: " + r["captions"][0], "won: " + rival]})
    return items
