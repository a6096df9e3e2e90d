"""`compclip breakdown RUN ...`: a run's synthetic-world probe results split by what the captions name, read from
its per-example records (<run>/probe_records/, written at the end of fit): SugarCrepe swap-object and
replace-object by the pair of shapes they tell apart, SugarCrepe's two swap subsets by caption form (a plain
list 'a A and a B', or a relation 'a A over a B'), ARO VG-Relation by relation phrasing. It is how the research log
found that the default tells shapes apart by how much of their box they fill, that its swap errors sit in the plain
lists, and that its weak VG-Relation seeds misread one held-out phrasing, not the relation."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from lit_compclip.cli_args import Parser, UsageError, first_line
from lit_compclip.synth.world import SHAPES

BY_SHAPE_PAIR = ("sugarcrepe/swap_obj", "sugarcrepe/replace_obj")
BY_PHRASING = ("aro/vg_relation",)
BY_FORM = ("sugarcrepe/swap_att", "sugarcrepe/swap_obj")
SUBSETS = tuple(dict.fromkeys(BY_SHAPE_PAIR + BY_FORM + BY_PHRASING))


class BreakdownError(ValueError):
    """A run or record the breakdown cannot read, or one not of the synthetic world: one line, exit status 2."""


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


def read_records(path: Path) -> list[dict]:
    """A subset's per-example records, each checked: a JSON object with `captions` (the true one first, then its
    rivals) and `correct`, whose true caption names the synthetic world's shapes: every split groups by what the
    world's captions name, so another benchmark's records would give a table of nothing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BreakdownError(f"{path}: cannot be read ({first_line(err)})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BreakdownError(f"{where}: not valid JSON ({first_line(err)})") from None
        captions = record.get("captions") if isinstance(record, dict) else None
        if not (isinstance(captions, list) and len(captions) >= 2 and all(isinstance(c, str) for c in captions)
                and isinstance(record.get("correct"), bool) and isinstance(record.get("image", ""), str)):
            raise BreakdownError(f"{where}: not a probe record (it needs 'captions', the true one first and at least "
                                 f"one rival, and 'correct', true or false)")
        if not set(re.findall(r"[a-z]+", captions[0].lower())) & set(SHAPES):
            raise BreakdownError(f"{where}: the caption {captions[0][:80]!r} names none of the synthetic world's "
                                 f"shapes; breakdown splits only probes of the synthetic world")
        records.append(record)
    if not records:
        raise BreakdownError(f"{path}: holds no records")
    return records


def records_folder(run: str | Path) -> Path:
    """The folder of a run's per-example records: <run>/probe_records/, or the run argument itself (a --dump)."""
    run = Path(run)
    if not run.exists():
        raise BreakdownError(f"{str(run)!r} not found (expected a run folder or a probe dump folder)")
    if not run.is_dir():
        raise BreakdownError(f"{str(run)!r} is a file, not a run folder or a probe dump folder")
    return run / "probe_records" if (run / "probe_records").is_dir() else run


def breakdown(run: str | Path) -> dict[str, dict[str, tuple[float, int]]]:
    """subset -> group -> (accuracy, n) for the subsets whose records the run holds."""
    folder = records_folder(run)
    out = {}
    for subset in SUBSETS:
        path = folder / f"{subset}.jsonl"
        if not path.is_file():
            continue
        records = read_records(path)
        if subset in BY_SHAPE_PAIR:
            out[subset] = accuracy_by(records, lambda r: shape_pair(r["captions"]))
        if subset in BY_FORM:
            out[f"{subset} by caption form"] = accuracy_by(records, lambda r: caption_form(r["captions"][0]))
        if subset in BY_PHRASING:
            out[subset] = accuracy_by(records, lambda r: phrasing(r["captions"][0]))
    if not out:
        raise BreakdownError(f"{run}: no probe records of {', '.join(SUBSETS)} (runs write them to probe_records/ "
                             f"at the end of fit with probes.dump=true)")
    return out


def main(argv: list[str]) -> int:
    parser = Parser(prog="compclip breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (or probe dump folders) holding probe_records/")
    try:
        args = parser.parse_args(argv)
        tables = [(run, breakdown(run)) for run in args.runs]  # every run read before any is printed
    except SystemExit as done:  # --help was printed
        return int(done.code or 0)
    except (UsageError, BreakdownError) as err:
        print(f"compclip breakdown: error: {err}", file=sys.stderr)
        return 2
    for run, table in tables:
        print(f"{run}")
        for subset, groups in table.items():
            cells = ", ".join(f"{k} {100 * acc:.0f}% ({n})" for k, (acc, n) in groups.items())
            print(f"  {subset}: {cells}")
    return 0
