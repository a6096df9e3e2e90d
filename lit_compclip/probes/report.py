"""What a probe pass leaves in a folder: probes.json, probe_seconds.json, the worst failures as a markdown page, and
per-example records as JSON lines. (Training logs the failures to W&B too: training/callbacks.py.)

Records come from `probe.run(encoder, records=...)`: per subset, dicts with `id`, `image`, `captions` (true one
first), `scores` (same order) and `correct`; see lit_compclip/probes/base.choice_record."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

Records = Mapping[str, Mapping[str, list[dict]]]  # probe name -> subset -> per-example records
# The entries of a probe's results that are counts, not scores: kept out of charts, tables and means.
COUNT_METRICS = {"ties", "n", "n_images", "n_texts", "truncated_fraction", "max_tokens"}


def margin(record: Mapping[str, Any]) -> float:
    """How far the best rival beats the truth (> 0: wrong by that much; a tie is 0 and counts wrong)."""
    rivals = list(record["scores"][1:]) + list(record.get("rival_scores", []))
    return max(rivals) - record["scores"][0] if rivals else float("-inf")


def worst_failures(rows: list[dict], k: int) -> list[dict]:
    """The `k` wrong examples whose rival wins by the most, worst first."""
    return sorted((r for r in rows if not r["correct"]), key=margin, reverse=True)[:k]


def write_records(records: Records, out_dir: str | os.PathLike) -> list[Path]:
    """One JSON-lines file per probe subset, `<out_dir>/<probe>/<subset>.jsonl`; returns the paths written."""
    paths = []
    for probe, subsets in records.items():
        for subset, rows in subsets.items():
            path = Path(out_dir) / probe / f"{subset.replace('/', '_')}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, path)  # a killed run never leaves a half-written dump under the final name
            paths.append(path)
    return paths


def rival(record: Mapping[str, Any]) -> str:
    """The best-scoring wrong candidate, as text (a caption, or an image file for retrieval)."""
    if len(record["captions"]) > 1:
        best = max(range(1, len(record["scores"])), key=lambda i: record["scores"][i])
        return record["captions"][best]
    rivals = record.get("rival_images") or ["-"]
    return f"image {Path(rivals[0]).name}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def failure_page(records: Records, path: str | os.PathLike, k: int = 8, title: str = "Probe failures") -> None:
    """A markdown page: per probe subset, accuracy and the `k` worst failures with their images."""
    page = Path(path)
    lines = [f"# {title}", "", "Worst failures per subset: the rival that beat the true caption by the largest "
             "margin (cosine similarity; a tie counts wrong).", ""]
    for probe, subsets in records.items():
        for subset, rows in subsets.items():
            if not rows:
                continue
            right = sum(r["correct"] for r in rows)
            lines += [f"## {probe} / {subset}: {right}/{len(rows)} right ({right / len(rows):.1%})", ""]
            worst = worst_failures(rows, k)
            if not worst:
                lines += ["No failures.", ""]
                continue
            lines += ["| image | id | true caption | winning rival | margin |", "|---|---|---|---|---|"]
            for r in worst:
                image = os.path.relpath(os.path.abspath(r["image"]), os.path.abspath(page.parent))
                lines.append(f"| ![]({_cell(image)}) | {_cell(r['id'])} | {_cell(r['captions'][0])} | "
                             f"{_cell(rival(r))} | {margin(r):+.4f} |")
            lines.append("")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines), encoding="utf-8")


def write_results(metrics: Mapping[str, float], records: Records | None, out_dir: str, failures: int = 8,
                  records_dir: str | None = None, title: str = "Probe failures") -> None:
    """probes.json (flat metric -> value), probe_seconds.json (each probe's wall seconds) and failures.md (worst
    failures per subset) in `out_dir`, and with `records_dir` the per-example records as
    <records_dir>/<probe>/<subset>.jsonl. Shared by training and `compclip probe`."""
    os.makedirs(out_dir, exist_ok=True)
    # wall-clock seconds go to their own file, so the same seed on the same machine gives the same probes.json
    timed = {k: v for k, v in metrics.items() if k.endswith("/seconds")}
    with open(os.path.join(out_dir, "probes.json"), "w") as f:
        json.dump({k: v for k, v in metrics.items() if k not in timed}, f, indent=1, sort_keys=True)
    with open(os.path.join(out_dir, "probe_seconds.json"), "w") as f:
        json.dump(timed, f, indent=1, sort_keys=True)
    if records:
        failure_page(records, os.path.join(out_dir, "failures.md"), failures, title)
        if records_dir:
            write_records(records, records_dir)
