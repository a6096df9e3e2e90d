"""`compclip breakdown RUN ...`: a run's synthetic-world probe results split by what the captions name, read from
its per-example records (<run>/probe_records/, written at the end of fit): SugarCrepe swap-object and
replace-object by the pair of shapes they tell apart, SugarCrepe's two swap subsets by caption form (a plain
list 'a A and a B', or a relation 'a A over a B'), ARO VG-Relation by relation phrasing. It is how the research
log found that the default tells shapes apart by how much of their box they fill, that its swap errors sit in the
plain lists, and that its weak VG-Relation seeds misread one held-out phrasing, not the relation."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from lit_compclip.synth.world import SHAPES

BY_SHAPE_PAIR = ("sugarcrepe/swap_obj", "sugarcrepe/replace_obj")
BY_PHRASING = ("aro/vg_relation",)
BY_FORM = ("sugarcrepe/swap_att", "sugarcrepe/swap_obj")
SUBSETS = tuple(dict.fromkeys(BY_SHAPE_PAIR + BY_FORM + BY_PHRASING))


def shape_pair(captions: list[str]) -> str:
    """The shapes that tell the true caption from the false one, sorted: 'diamond-triangle'. Replace-object names
    one shape the other lacks; swap-object names the same two shapes in the other order."""
    true, false = ({w for w in re.findall(r"[a-z]+", c.lower()) if w in SHAPES} for c in captions[:2])
    return "-".join(sorted(true ^ false or true))


def phrasing(caption: str) -> str:
    """The relation words of an ARO caption 'the A B is <relation> the C D': 'on the left of', 'over', ..."""
    m = re.fullmatch(r"the \w+ \w+ is (.+?) the \w+ \w+", caption.strip().lower())
    return m.group(1) if m else "?"


def caption_form(caption: str) -> str:
    """'list' for the synthetic world's 'a A and a B' (no place to go by: only which colour, size and shape go
    together), 'relation' for 'a A <relation> a B' (the relation words never contain 'and')."""
    return "list" if " and " in f" {caption.strip().lower()} " else "relation"


def accuracy_by(records: list[dict], key) -> dict[str, tuple[float, int]]:
    """key(record) -> (fraction correct, count), in descending count order."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(bool(r["correct"]))
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def breakdown(run: str | Path) -> dict[str, dict[str, tuple[float, int]]]:
    """subset -> group -> (accuracy, n) for the subsets whose records the run holds."""
    folder = Path(run) / "probe_records" if (Path(run) / "probe_records").is_dir() else Path(run)
    out = {}
    for subset in SUBSETS:
        path = folder / f"{subset}.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if subset in BY_SHAPE_PAIR:
            out[subset] = accuracy_by(records, lambda r: shape_pair(r["captions"]))
        if subset in BY_FORM:
            out[f"{subset} by caption form"] = accuracy_by(records, lambda r: caption_form(r["captions"][0]))
        if subset in BY_PHRASING:
            out[subset] = accuracy_by(records, lambda r: phrasing(r["captions"][0]))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compclip breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (or probe dump folders) holding probe_records/")
    args = parser.parse_args(argv)
    for run in args.runs:
        tables = breakdown(run)
        if not tables:
            print(f"compclip: error: {run}: no probe records of {', '.join(SUBSETS)} "
                  f"(runs write them at the end of fit with probes.dump=true)", file=sys.stderr)
            return 2
        print(f"{run}")
        for subset, groups in tables.items():
            cells = ", ".join(f"{k} {100 * acc:.0f}% ({n})" for k, (acc, n) in groups.items())
            print(f"  {subset}: {cells}")
    return 0
