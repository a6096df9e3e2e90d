"""Probe results as CLIP_benchmark result files, so they merge with the tables people already keep.

CLIP_benchmark (LAION-AI/CLIP_benchmark, clip_benchmark/cli.py) writes one JSON per (model, dataset):
{"dataset", "model", "pretrained", "task", "metrics", "language"}, and `clip_benchmark build` merges such files
into one CSV (a row per file, the metrics as columns). Here one file per probe suite, `<out>/<suite>.json`; the
metrics are the suite's own (`probe/<suite>/` dropped, wall time left out); `encoder` records what was used."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

# CLIP_benchmark's task names (its get_dataset_default_task: SugarCrepe and Winoground are image_caption_selection);
# every other probe type chooses among captions or texts.
TASKS = {"retrieval": "zeroshot_retrieval", "zeroshot": "zeroshot_classification"}
DEFAULT_TASK = "image_caption_selection"


def clip_benchmark_results(metrics: Mapping[str, float], probe_types: Mapping[str, str], model: str,
                           pretrained: str, encoder: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """suite -> its CLIP_benchmark-style record, from the flat `probe/<suite>/<metric>` -> value of a probe run.

    `probe_types`: suite -> probe type (the registry name: sugarcrepe, retrieval, ...)."""
    out = {}
    for suite, kind in probe_types.items():
        prefix = f"probe/{suite}/"
        found = {k[len(prefix):]: float(v) for k, v in sorted(metrics.items())
                 if k.startswith(prefix) and k != prefix + "seconds"}
        if not found:
            continue
        record = {"dataset": suite, "model": model, "pretrained": pretrained, "task": TASKS.get(kind, DEFAULT_TASK),
                  "metrics": found, "language": "en", "probe": kind}
        if encoder is not None:
            record["encoder"] = dict(encoder)
        out[suite] = record
    return out


def write_clip_benchmark(results: Mapping[str, dict], out_dir: str) -> list[str]:
    """Write each suite's record to `<out_dir>/<suite>.json`; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for suite, record in results.items():
        path = os.path.join(out_dir, f"{suite.replace('/', '_')}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        paths.append(path)
    return paths
