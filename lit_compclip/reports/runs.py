"""The one reader of run folders: where a run keeps each file, and what reading it gives (compare, explore, the
ablation report and the sweep all read through here).

A run folder, as `compclip train` leaves it (lit_compclip/training/):
  config.yaml             the resolved config          probes.json           the final probe results: metric -> value
  metrics.csv             Lightning's CSV rows         probes_history.json   every probe pass: [{epoch, step, metrics}]
  checkpoints/last.ckpt   the latest checkpoint        probe_records/<probe>/<subset>.jsonl  per-example results
  wandb/[offline-]run-*/run-*.wandb   the W&B run      sweep_run.json        `compclip sweep`'s mark of a finished run
A `compclip probe` output folder holds a probes.json (and failures.md, records) too."""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from lit_compclip.errors import first_line

CONFIG, PROBES, METRICS, HISTORY = "config.yaml", "probes.json", "metrics.csv", "probes_history.json"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
RECORDS = "probe_records"
SWEEP_RECORD = "sweep_run.json"
Curves = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)], sorted by step
SOURCES = ("auto", "csv", "json", "wandb")


class RunError(ValueError):
    """A results file that cannot be read as asked: printed as one line."""


def repo_root() -> Path:
    """The checkout holding this package when it is one (setup.cfg beside it), else the working directory."""
    here = Path(__file__).resolve().parents[2]
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
    found = sorted(p.parent for p in resolve("runs").glob(f"*/{METRICS}"))
    if not found:
        raise FileNotFoundError(f"no run folder with a metrics.csv under {resolve('runs')}; set COMPCLIP_RUNS=a,b")
    return found


def read_config(folder: Path) -> dict[str, Any]:
    """A run's resolved config.yaml as plain dicts and lists."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(folder) / CONFIG))


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """{name, dir, config (resolved dict), probes (final metrics or {}), checkpoint (path or None), val_shards}."""
    d = resolve(run_dir)
    if not d.is_dir():
        others = sorted(p.name for p in resolve("runs").glob(f"*/{CONFIG}")) if resolve("runs").is_dir() else []
        raise FileNotFoundError(f"run folder {str(d)!r} not found; runs with a config.yaml: {others or 'none'}")
    if not (d / CONFIG).is_file():
        raise FileNotFoundError(f"run folder {str(d)!r} has no config.yaml (not a lit_compclip run folder)")
    config = read_config(d)
    probes = json.loads((d / PROBES).read_text()) if (d / PROBES).is_file() else {}
    ckpt = d / CHECKPOINT
    val = (config.get("data") or {}).get("val_shards")
    return {"name": d.name, "dir": d, "config": config, "probes": probes,
            "checkpoint": ckpt if ckpt.is_file() else None, "val_shards": val}


def sweep_runs(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished runs of a sweep folder: {dir, record (sweep_run.json), probes, config} each, by folder name."""
    runs = []
    for done in sorted(Path(out).glob(f"*/{SWEEP_RECORD}")):
        folder = done.parent
        runs.append({"dir": folder, "record": json.loads(done.read_text()),
                     "probes": json.loads((folder / PROBES).read_text()), "config": read_config(folder)})
    return runs


# ---- final results: a probes.json ----

def results_file(path: str | os.PathLike) -> Path:
    """The probes.json a path names: the file itself, or the one in a run folder / `compclip probe` output."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise RunError(f"{str(p)!r} not found (expected a run folder, a `compclip probe` output or a probes.json)")
    if (p / PROBES).is_file():
        return p / PROBES
    inside = sorted(q.parent.name for q in p.glob(f"*/{PROBES}"))
    hint = f"; its subfolders {inside} have one: name them" if inside else ""
    raise RunError(f"{str(p)!r} holds no probes.json (not a finished run folder or `compclip probe` output){hint}")


def read_results(path: Path) -> dict[str, float]:
    """A probes.json's numeric entries: `probe/<suite>/<metric>` -> value (`probe/` optional), every one finite."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({first_line(err)})") from None
    except OSError as err:
        raise RunError(f"{path}: cannot be read ({err.strerror or first_line(err)})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object of metric -> value, got a {type(data).__name__}")
    # Numbers only: a bool, a string or a nested record (what the encoder was, say) is not a score.
    out = {}
    for key, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" in key.removeprefix("probe/"):
            try:
                number = float(value)
            except OverflowError:  # a whole number too large for a float
                number = math.inf
            if not math.isfinite(number):  # json reads Infinity and NaN
                raise RunError(f"{path}: {key!r} is {number}, not a finite number")
            out[key.removeprefix("probe/")] = number
    if not out:
        raise RunError(f"{path}: holds no probe metric (keys like 'probe/sugarcrepe/swap_att')")
    return out


def probe_records(run_dir: str | os.PathLike, probe: str, subset: str) -> tuple[Path, list[dict]]:
    """(file, rows) of <run>/probe_records/<probe>/<subset>.jsonl (see probes/report.write_records)."""
    root = resolve(run_dir) / RECORDS
    path = root / probe / f"{subset.replace('/', '_')}.jsonl"
    if not path.is_file():
        found = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.jsonl"))
        hint = "none (an older run: compclip probe --ckpt CKPT --dump " + str(root) + " writes them)"
        raise FileNotFoundError(f"no probe records {str(path)!r}; recorded: {found or hint}")
    return path, [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    from lit_compclip.reports.wandb_runs import history_points

    if source not in SOURCES:
        raise ValueError(f"unknown curve source {source!r}; choose one of {list(SOURCES)}")
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} not found; give a run folder, metrics.csv, probes_history.json or W&B folder")
    table = p / METRICS if p.is_dir() else p
    if source in ("auto", "csv") and table.suffix == ".csv" and table.is_file():
        return _curves(_csv_points(table), prefix)
    if source in ("auto", "json") and p.suffix == ".json":
        return _curves(_json_points(p), prefix)
    found = wandb_file(p) if source in ("auto", "wandb") else None
    if found is None:
        raise FileNotFoundError(f"{str(p)!r} holds no {'W&B offline run' if source == 'wandb' else 'metrics.csv'}")
    try:
        return _curves(history_points(found), prefix)
    except (ImportError, ValueError, RuntimeError) as err:  # no SDK, or records this SDK cannot parse
        fallback = found.parents[2] / METRICS  # <run>/wandb/offline-run-*/run-*.wandb
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
        run = next((a for a in [p, *p.parents] if (a / CONFIG).is_file()), p)
        mark = f" ({p.name})" if p.suffix == ".json" else ""
        if source == "wandb" or "wandb" in p.parts[len(run.parts):] or p.suffix == ".wandb":
            mark = " (W&B)"
        label = run.name + mark
        while label in out:
            label += "'"
        out[label] = probe_curves(p, source, prefix)
    return out
