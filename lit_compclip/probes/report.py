"""Failure analysis: per-example probe records to JSON lines, the worst failures as a markdown page and W&B tables.

Records come from `probe.run(encoder, records=...)`: per subset, dicts with `id`, `image`, `captions` (true one
first), `scores` (same order) and `correct`; see lit_compclip/probes/base.choice_record."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

Records = Mapping[str, Mapping[str, list[dict]]]  # probe name -> subset -> per-example records


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


def _rival(record: Mapping[str, Any]) -> str:
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
                             f"{_cell(_rival(r))} | {margin(r):+.4f} |")
            lines.append("")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines), encoding="utf-8")


def log_wandb_tables(records: Records, loggers, k: int = 8) -> int:
    """Log the worst failures per subset as W&B tables (image, id, captions, margin) to every WandbLogger."""
    from lightning.pytorch.loggers import WandbLogger

    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets:
        return 0
    import wandb

    from lit_compclip.probes.base import ImageRef, load_image

    tables = 0
    for probe, subsets in records.items():
        for subset, rows in subsets.items():
            data = []
            for r in worst_failures(rows, k):
                ref = ImageRef(Path(r["image"]), tuple(r["box"]) if "box" in r else None, f"{probe} record {r['id']}")
                data.append([wandb.Image(load_image(ref)), r["id"], r["captions"][0], _rival(r), margin(r)])
            if data:
                for lg in targets:
                    lg.log_table(key=f"failures/{probe}/{subset}",
                                 columns=["image", "id", "true caption", "winning rival", "margin"], data=data)
                tables += 1
    return tables
