"""`compclip breakdown RUN ...`: a run's synthetic-world probe results split by what the captions name, read from
its per-example records (<run>/probe_records/, written at the end of fit): SugarCrepe swap-object and
replace-object by the pair of shapes they tell apart, SugarCrepe's two swap subsets by caption form (a plain
list 'a A and a B', or a relation 'a A over a B'), the lists again by whether they name first the object at the
left (top) or the other one (read from the scene that the probe image's world rebuilds), ARO VG-Relation by
relation phrasing. It is how the research log found that the default tells shapes apart by how much of their box
they fill, that its swap errors sit in the plain lists, that it reads a list's first object as the left (top) one,
and that its weak VG-Relation seeds misread one held-out phrasing, not the relation."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from lit_compclip.synth.captions import locations
from lit_compclip.synth.world import SHAPES
from lit_compclip.synth.write import eval_scenes

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


def list_order(record: dict, scenes) -> str | None:
    """Where the object a list caption 'a [size] C S and a ...' names first sits: 'left/top first' or
    'right/bottom first'; None for a relation caption or an image whose scene `scenes(path)` cannot give."""
    m = re.match(r"a (?:(?:small|large) )?(\w+) (\w+) and a ", record["captions"][0].strip().lower())
    scene = scenes(record.get("image", "")) if m else None
    if scene is None:
        return None
    where = [place for obj, place in zip(scene["objects"], locations(scene))
             if (obj["colour"], obj["shape"]) == m.groups()]
    return None if len(where) != 1 else "left/top first" if where[0] in ("left", "top") else "right/bottom first"


class WorldScenes:
    """image path -> its scene: the world folder is the one above probes/ (data/synth/probes/<set>/images/KEY.jpg),
    its scenes rebuilt once per world; None for an image of no rebuildable world."""

    def __init__(self):
        self.worlds: dict[Path, dict | None] = {}

    def __call__(self, image: str) -> dict | None:
        path = Path(image)
        if len(path.parents) < 4 or path.parents[2].name != "probes" or not path.stem.isdigit():
            return None
        world = path.parents[3]
        if world not in self.worlds:
            try:
                self.worlds[world] = eval_scenes(world)
            except ValueError:
                self.worlds[world] = None
        return (self.worlds[world] or {}).get(int(path.stem))


def accuracy_by(records: list[dict], key) -> dict[str, tuple[float, int]]:
    """key(record) -> (fraction correct, count), in descending count order."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(bool(r["correct"]))
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def breakdown(run: str | Path) -> dict[str, dict[str, tuple[float, int]]]:
    """subset -> group -> (accuracy, n) for the subsets whose records the run holds."""
    folder = Path(run) / "probe_records" if (Path(run) / "probe_records").is_dir() else Path(run)
    out, scenes = {}, WorldScenes()
    for subset in SUBSETS:
        path = folder / f"{subset}.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if subset in BY_SHAPE_PAIR:
            out[subset] = accuracy_by(records, lambda r: shape_pair(r["captions"]))
        if subset in BY_FORM:
            out[f"{subset} by caption form"] = accuracy_by(records, lambda r: caption_form(r["captions"][0]))
            ordered = [(r, list_order(r, scenes)) for r in records]
            if any(order for _, order in ordered):
                out[f"{subset} lists by order"] = accuracy_by([{**r, "order": o} for r, o in ordered if o],
                                                             lambda r: r["order"])
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
