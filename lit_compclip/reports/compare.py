"""`compclip compare`: several models' final probe results side by side, as one markdown table and one PNG."""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from lit_compclip.cli_args import Parser, UsageError, check_writable_folder, first_line
from lit_compclip.reports.chance import chance, order_columns
from lit_compclip.reports.plots import bar_panels, by_suite
from lit_compclip.reports.runs import RunError, read_results, results_file

Table = dict[str, dict[str, float]]  # model -> column ("<suite>/<metric>") -> value
OUTPUTS = ("compare.md", "compare.png")  # what a comparison writes in --out


class CompareError(RunError):
    """A bad input the user can fix: printed as one line, exit status 2 (as an unreadable probes.json is)."""


def model_names(files: Sequence[Path]) -> list[str]:
    """Each model's name: its folder (a probes.json) or the file's stem, with parents added until names differ."""
    def label(f: Path, depth: int) -> str:
        parts = (f.parent if f.name == "probes.json" else f.with_suffix("")).resolve().parts
        return "/".join(parts[-depth:])

    names = [label(f, 1) for f in files]
    for depth in range(2, 64):
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        names = [label(f, depth) if n in clashes else n for f, n in zip(files, names)]
    return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def load(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """model -> every numeric result of its probes.json (counts included), in the order given."""
    if not paths:
        raise CompareError("name at least one run folder, `compclip probe` output or probes.json")
    files = [results_file(p) for p in paths]
    if names is not None:
        names = [n.strip() for n in names]
        if len(names) != len(files) or len(set(names)) != len(names) or not all(names):
            raise CompareError(f"--names must give {len(files)} distinct non-empty names, one per input; "
                               f"got {list(names)}")
    return dict(zip(names or model_names(files), (read_results(f) for f in files)))


def scores(raw: Mapping[str, Mapping[str, float]]) -> Table:
    """The table: per model, the score columns (counts, ties and seconds left out), suites in papers' order then
    in order of appearance, each suite's subsets sorted and its summary (mean) last (chance.order_columns)."""
    columns = order_columns(list(dict.fromkeys(c for results in raw.values() for c in results)))
    return {model: {c: results[c] for c in columns if c in results} for model, results in raw.items()}


def collect(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> Table:
    """{model: {column: value}} of run folders, probe outputs or probes.json files."""
    return scores(load(paths, names))


def columns_of(table: Table) -> list[str]:
    """Every column present in any model, in table order."""
    return list(dict.fromkeys(c for row in table.values() for c in row))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(table: Table, chance_levels: Mapping[str, float] | None = None,
             sources: Mapping[str, str] | None = None) -> str:
    """One markdown table: a row per model, a column per suite/metric, '-' where a model lacks it, the best value
    of each column in bold, and a last row of chance levels when any is known. Fractions, as in probes.json."""
    columns = columns_of(table)
    lines = [f"# Probe comparison: {', '.join(table)}", ""]
    if sources:
        lines += [f"- **{_cell(m)}**: `{sources[m]}`" for m in table if m in sources] + [""]
    lines += ["| model | " + " | ".join(_cell(c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    best = {c: max((row[c] for row in table.values() if c in row and not math.isnan(row[c])), default=None)
            for c in columns}
    several = len(table) > 1
    for model, row in table.items():
        cells = []
        for c in columns:
            text = f"{row[c]:.3f}" if c in row else "-"
            cells.append(f"**{text}**" if several and c in row and row[c] == best[c] else text)
        lines.append(f"| {_cell(model)} | " + " | ".join(cells) + " |")
    if chance_levels and any(c in chance_levels for c in columns):
        lines.append("| *chance* | " + " | ".join(f"*{chance_levels[c]:.3f}*" if c in chance_levels else ""
                                                 for c in columns) + " |")
    lines += ["", "Accuracies and recalls as fractions (1.000 = every example right); bold: the best per column; "
              "-: the model has no such result; chance: the expected score of random similarities."]
    return "\n".join(lines) + "\n"


def plot(table: Table, path, chance_levels: Mapping[str, float] | None = None):
    """compare.png: grouped bars, a panel per suite, a bar per model and subset, its value printed, chance dashed
    (plots.bar_panels), saved to `path` (a file name or a binary file); returns the figure."""
    fig = bar_panels(table, by_suite(columns_of(table)), chance_levels)
    fig.savefig(path, dpi=110, format="png")
    return fig


def check_out(out: Path) -> None:
    """--out must be a folder this user can make or write: found before any input is read, not after the chart."""
    check_writable_folder(str(out), "--out", CompareError)
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise CompareError(f"--out {str(out)!r} holds a folder {name}, where the comparison's file goes")


def write_all(files: Mapping[Path, bytes]) -> None:
    """Each file under a temporary name, then each renamed into place: a failure leaves no file half-written."""
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            temps[path] = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps[path].write_bytes(data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = Parser(prog="compclip compare", description="Several models' probe results: compare.md and compare.png.")
    parser.add_argument("inputs", nargs="*", metavar="RUN_OR_RESULT",
                        help="a run folder, a `compclip probe` output folder or a probes.json")
    parser.add_argument("--out", default=".", help="folder for compare.md and compare.png (default: here)")
    parser.add_argument("--names", help="comma-separated model names, one per input (default: folder names)")
    return parser.parse_args(list(argv))  # errors raise UsageError; only --help exits


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = parse(sys.argv[1:] if argv is None else argv)
        except SystemExit as done:  # --help was printed
            return int(done.code or 0)
        out = Path(args.out).expanduser()
        check_out(out)
        names = args.names.split(",") if args.names is not None else None
        raw = load(args.inputs, names)
        files = [str(results_file(p)) for p in args.inputs]
        table, levels = scores(raw), chance(raw)
        text = markdown(table, levels, dict(zip(raw, files)))
        chart = io.BytesIO()
        plot(table, chart, levels)
        out.mkdir(parents=True, exist_ok=True)
        write_all({out / "compare.md": text.encode("utf-8"), out / "compare.png": chart.getvalue()})
    except (UsageError, RunError) as err:
        print(f"compclip compare: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # --out could not be made or written after all (a full disk, a race)
        print(f"compclip compare: error: cannot write to {str(err.filename or args.out)!r}: "
              f"{err.strerror or first_line(err)}", file=sys.stderr)
        return 2
    print(text)
    print(f"written: {out / 'compare.md'}, {out / 'compare.png'}")
    return 0
