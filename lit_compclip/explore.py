"""What the notebooks call: read run folders and W&B offline runs, embed the held-out set (figures: explore_plots)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import struct
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

Curves = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)], sorted by step
VARIANTS = ("caption", "swapped_attribute", "swapped_relation")
SOURCES = ("auto", "csv", "json", "wandb")
# callbacks.COUNT_METRICS (a test keeps them equal), copied so that comparing runs needs no lightning import
COUNT_METRICS = {"ties", "n", "n_images", "n_texts", "truncated_fraction", "max_tokens"}


def repo_root() -> Path:
    """The checkout holding this package when it is one (setup.cfg beside it), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "setup.cfg").is_file() else Path.cwd()


def resolve(path: str | os.PathLike) -> Path:
    """A relative path is taken from the repo root, so notebooks run alike from the root and from notebooks/."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def run_from_env() -> Path:
    """The run the explore notebook reads: $COMPCLIP_RUN, default runs/default."""
    return resolve(os.environ.get("COMPCLIP_RUN") or "runs/default")


def runs_from_env() -> list[Path]:
    """The runs to compare: $COMPCLIP_RUNS (comma-separated), default every folder under runs/ with a metrics.csv."""
    chosen = [p.strip() for p in os.environ.get("COMPCLIP_RUNS", "").split(",") if p.strip()]
    if chosen:
        return [resolve(p) for p in chosen]
    found = sorted(p.parent for p in resolve("runs").glob("*/metrics.csv"))
    if not found:
        raise FileNotFoundError(f"no run folder with a metrics.csv under {resolve('runs')}; set COMPCLIP_RUNS=a,b")
    return found


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """{name, dir, config (resolved dict), probes (final metrics or {}), checkpoint (path or None), val_shards}."""
    import yaml

    d = resolve(run_dir)
    if not d.is_dir():
        others = sorted(p.name for p in resolve("runs").glob("*/config.yaml")) if resolve("runs").is_dir() else []
        raise FileNotFoundError(f"run folder {str(d)!r} not found; runs with a config.yaml: {others or 'none'}")
    if not (d / "config.yaml").is_file():
        raise FileNotFoundError(f"run folder {str(d)!r} has no config.yaml (not a lit_compclip run folder)")
    config = yaml.safe_load((d / "config.yaml").read_text())
    probes = json.loads((d / "probes.json").read_text()) if (d / "probes.json").is_file() else {}
    ckpt = d / "checkpoints" / "last.ckpt"
    val = (config.get("data") or {}).get("val_shards")
    return {"name": d.name, "dir": d, "config": config, "probes": probes,
            "checkpoint": ckpt if ckpt.is_file() else None, "val_shards": val}


def load_checkpoint(run: dict[str, Any]):
    """The run's checkpoints/last.ckpt as a CompClip on the CPU in eval mode."""
    from lit_compclip.checkpoints import load_module

    if run["checkpoint"] is None:
        found = sorted(p.name for p in (run["dir"] / "checkpoints").glob("*.ckpt"))
        raise FileNotFoundError(f"run {str(run['dir'])!r} has no checkpoints/last.ckpt; checkpoints: {found or 'none'}")
    return load_module(str(run["checkpoint"]))


def caption_field(run: dict[str, Any]) -> str:
    """The caption source the run trained on most ('recaption', 'alt_text', 'txt', ...)."""
    fields = (run["config"].get("data") or {}).get("caption_fields") or {"recaption": 1.0}
    return max(fields, key=fields.get)


# ---- curves: metrics.csv, probes_history.json or a W&B offline run ----

def _number(text) -> float | None:
    """float(text), or None for an empty CSV cell or a JSON object (W&B tables and images are no curves)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _curves(points, prefix: str | tuple[str, ...]) -> Curves:
    """Collect (key, step, value) triples of the keys starting with `prefix`; a later value at a step wins."""
    curves: dict[str, dict[int, float]] = {}
    for key, step, value in points:
        step, value = _number(step), _number(value)
        if key.startswith(prefix) and step is not None and value is not None:
            curves.setdefault(key, {})[int(step)] = value
    return {k: sorted(v.items()) for k, v in sorted(curves.items())}


def _csv_points(path: Path):
    """Lightning's CSVLogger file: one row per logging call, empty cells for the metrics not logged in it."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            yield from ((k, row.get("step"), v) for k, v in row.items() if k not in ("step", "epoch"))


def _json_points(path: Path):
    """probes_history.json: [{epoch, step, metrics: {key: value}}]."""
    history = json.loads(path.read_text())
    if not isinstance(history, list) or not all(isinstance(h, dict) and "metrics" in h for h in history):
        raise ValueError(f"{str(path)!r} is not a probes_history.json (a list of {{epoch, step, metrics}})")
    return [(k, h.get("step"), v) for h in history for k, v in h["metrics"].items()]


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: a LevelDB-style log (7-byte ':W&B' header, 32 KiB blocks of chunks, each
    with crc32, length and type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    raw, block = path.read_bytes(), 32768
    if raw[:4] != b":W&B":
        raise ValueError(f"{str(path)!r} is not a W&B run file (no ':W&B' header)")
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # too little room left for a chunk header: the block is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data = raw[pos + 7:pos + 7 + length]
        if kind == 0 or len(data) < length or zlib.crc32(data, zlib.crc32(bytes([kind]))) != crc:
            break  # padding, or the torn tail of a run still writing
        pos += 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            records.append(pending)
    return records


def _wandb_points(path: Path):
    """History rows of a .wandb file, step = trainer/global_step (as in metrics.csv), else W&B's own _step."""
    from wandb.proto import wandb_internal_pb2 as pb  # the SDK's record schema; the framing is read above

    for data in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            step = row.get("trainer/global_step", row.get("_step"))
            yield from ((k, step, v) for k, v in row.items() if not k.startswith("_"))


def wandb_file(path: Path) -> Path | None:
    """The .wandb file of a W&B offline-run folder, of a run's wandb/ folder (latest run) or of a run folder."""
    if path.suffix == ".wandb":
        return path
    for pattern in ("run-*.wandb", "*run-*/run-*.wandb", "wandb/*run-*/run-*.wandb"):
        found = sorted(path.glob(pattern), key=lambda p: p.parent.name)  # folder names start with the date
        if found:
            return found[-1]
    return None


def probe_curves(path: str | os.PathLike, source: str = "auto", prefix: str | tuple[str, ...] = "probe/") -> Curves:
    """{metric: [(step, value)]} of the metrics starting with `prefix`, from a run folder (its metrics.csv, or with
    source="wandb" its W&B offline run), a metrics.csv, a probes_history.json or a W&B offline-run folder."""
    if source not in SOURCES:
        raise ValueError(f"unknown curve source {source!r}; choose one of {list(SOURCES)}")
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} not found; give a run folder, metrics.csv, probes_history.json or W&B folder")
    table = p / "metrics.csv" if p.is_dir() else p
    if source in ("auto", "csv") and table.suffix == ".csv" and table.is_file():
        return _curves(_csv_points(table), prefix)
    if source in ("auto", "json") and p.suffix == ".json":
        return _curves(_json_points(p), prefix)
    found = wandb_file(p) if source in ("auto", "wandb") else None
    if found is None:
        raise FileNotFoundError(f"{str(p)!r} holds no {'W&B offline run' if source == 'wandb' else 'metrics.csv'}")
    try:
        return _curves(_wandb_points(found), prefix)
    except (ImportError, ValueError, RuntimeError) as err:  # no SDK, or records this SDK cannot parse
        fallback = found.parents[2] / "metrics.csv"  # <run>/wandb/offline-run-*/run-*.wandb
        if not fallback.is_file():
            raise ValueError(f"cannot read W&B file {str(found)!r} ({err}) and no metrics.csv beside it") from None
        warnings.warn(f"cannot read W&B file {found} ({err}); using {fallback}")
        return _curves(_csv_points(fallback), prefix)


def load_curves(paths: Sequence[str | os.PathLike], source: str = "auto",
                prefix: str | tuple[str, ...] = "probe/") -> dict[str, Curves]:
    """{label: curves} of several runs; a label is the run folder's name, marked '(W&B)' or '(file.json)'."""
    out: dict[str, Curves] = {}
    for path in paths:
        p = resolve(path)
        run = next((a for a in [p, *p.parents] if (a / "config.yaml").is_file()), p)
        mark = f" ({p.name})" if p.suffix == ".json" else ""
        if source == "wandb" or "wandb" in p.parts[len(run.parts):] or p.suffix == ".wandb":
            mark = " (W&B)"
        label = run.name + mark
        while label in out:
            label += "'"
        out[label] = probe_curves(p, source, prefix)
    return out


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

    from lit_compclip.shards import expand_shards

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
    from lit_compclip.callbacks import ModuleEncoder

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


def variant_captions(scene: dict, seed: str = "0") -> dict[str, str]:
    """The scene's first relation as a probe-phrased caption, with the colours swapped and with the two objects
    swapped (so the relation is false); the same relation words in all three."""
    from lit_compclip.synth.captions import noun, pair_caption, relation_words

    rel = scene["relations"][0]
    a, b = scene["objects"][rel["subject"]], scene["objects"][rel["object"]]
    words = relation_words(rel["relation"], random.Random(f"explore/{seed}"), "eval")
    return {"caption": pair_caption(noun(a), noun(b), words),
            "swapped_attribute": pair_caption(noun({**a, "colour": b["colour"]}), noun({**b, "colour": a["colour"]}),
                                              words),
            "swapped_relation": pair_caption(noun(b), noun(a), words)}


def variant_similarities(module, samples: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """{variant: {"texts": [...], "scores": (N,) cosine of each image with that variant of its caption}}."""
    bad = next((s["key"] for s in samples if not (s.get("scene") or {}).get("relations")), None)
    if bad is not None:
        raise ValueError(f"held-out sample {bad!r} has no scene graph with a relation (only synthetic shards do)")
    texts = {v: [] for v in VARIANTS}
    for s in samples:
        for v, text in variant_captions(s["scene"], s["key"]).items():
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


def binding_captions(samples: Sequence[dict], families: int = 10) -> tuple[list[str], list[str], list[int]]:
    """(texts, binding labels, family ids): per family, one colour-bound caption per distinct binding
    (a family's colour-swapped members bind the same words the other way)."""
    from lit_compclip.synth.captions import noun, pair_caption

    texts, labels, groups = [], [], []
    for s in samples:
        objs = (s.get("scene") or {}).get("objects", [])[:2]
        if len(objs) < 2 or (s.get("family") not in groups and len(set(groups)) >= families):
            continue
        label = " + ".join(sorted(noun(o) for o in objs))
        if label not in labels:
            texts.append(pair_caption(noun(objs[0]), noun(objs[1]), None))
            labels.append(label)
            groups.append(s.get("family"))
    return texts, labels, groups


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

    root = resolve(run_dir) / "probe_records"
    path = root / probe / f"{subset.replace('/', '_')}.jsonl"
    if not path.is_file():
        found = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.jsonl"))
        hint = "none (an older run: compclip probe --ckpt CKPT --dump " + str(root) + " writes them)"
        raise FileNotFoundError(f"no probe records {str(path)!r}; recorded: {found or hint}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
