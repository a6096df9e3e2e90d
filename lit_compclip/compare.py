"""`compclip compare`: several models' final probe results side by side, as one markdown table and one PNG."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

Table = dict[str, dict[str, float]]  # model -> column ("<suite>/<metric>") -> value

# callbacks.COUNT_METRICS (a test keeps them equal), copied so that comparing needs no lightning import
COUNT_METRICS = {"ties", "n", "n_images", "n_texts", "truncated_fraction", "max_tokens"}
NOT_SCORES = COUNT_METRICS | {"seconds"}
SUMMARY = re.compile(r"(.*_)?mean")  # a suite's average of its subsets (mean, itt_mean): shown after them
SUITE_ORDER = ("sugarcrepe", "sugarcrepe_pp", "aro", "winoground", "whatsup")  # as papers' tables; others follow
# Chance under random scores, (suite pattern, metric pattern, level); a suite is matched by its name, so a suite
# renamed in the config (probes.suites.mine.type=sugarcrepe) gets no chance line. Retrieval: see retrieval_chance.
CHANCE_RULES = (
    (r"sugarcrepe_?pp|scpp", r".*", 1 / 3),  # ITT and TOT: both positives beat the negative, 1 in 3 orderings
    (r"sugarcrepe", r".*", 1 / 2),  # the true caption or the negative
    (r"aro", r"vg_(relation|attribution).*", 1 / 2),
    (r"aro", r"(coco|flickr)\w*order.*", 1 / 5),  # the caption and four word-order perturbations
    (r"winoground", r"(.*/)?(text|image)", 1 / 4),  # both captions (images) right: 1 in 4
    (r"winoground", r"(.*/)?group", 1 / 6),  # text and image right together: 4 of the 24 orderings
    # What'sUp (probes/whatsup.py): Controlled four placements, one true; pair = two opposite images both right;
    # set = all four placements of an object pair right; QA two options; `mean` averages the subsets present
    (r"whatsup", r"controlled(_[ab])?(_official)?", 1 / 4),
    (r"whatsup", r"controlled_[ab]_pair", 1 / 4 ** 2),
    (r"whatsup", r"controlled_[ab]_set", 1 / 4 ** 4),
    (r"whatsup", r"(coco|vg)_qa(_one|_two)?(_official)?", 1 / 2),
)
WHATSUP_SUBSETS = ("controlled_a", "controlled_b", "coco_qa_one", "coco_qa_two", "vg_qa_one", "vg_qa_two")
RECALL = re.compile(r"(t2i|i2t)_r(\d+)")


class CompareError(ValueError):
    """A bad input the user can fix: printed as one line, exit status 2."""


def results_file(path: str | os.PathLike) -> Path:
    """The probes.json a path names: the file itself, or the one in a run folder / `compclip probe` output."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise CompareError(f"{str(p)!r} not found (expected a run folder, a `compclip probe` output or a probes.json)")
    if (p / "probes.json").is_file():
        return p / "probes.json"
    inside = sorted(q.parent.name for q in p.glob("*/probes.json"))
    hint = f"; its subfolders {inside} have one: name them" if inside else ""
    raise CompareError(f"{str(p)!r} holds no probes.json (not a finished run folder or `compclip probe` output){hint}")


def read_results(path: Path) -> dict[str, float]:
    """A probes.json's numeric entries: `probe/<suite>/<metric>` -> value (`probe/` optional)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CompareError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a JSON object of metric -> value, got a {type(data).__name__}")
    # Numbers only: a bool, a string or a nested record (what the encoder was, say) is not a score.
    out = {k.removeprefix("probe/"): float(v) for k, v in data.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" in k.removeprefix("probe/")}
    if not out:
        raise CompareError(f"{path}: holds no probe metric (keys like 'probe/sugarcrepe/swap_att')")
    return out


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
    """The table: per model, the score columns (counts, ties and seconds left out), suites in order of appearance,
    each suite's subsets sorted and its summary (mean) last."""
    suites: dict[str, list[str]] = {}
    for results in raw.values():
        for column in results:
            suite, metric = column.split("/", 1)
            if metric.rsplit("/", 1)[-1] not in NOT_SCORES and column not in suites.setdefault(suite, []):
                suites[suite].append(column)
    def order(column: str) -> tuple:  # overall metrics, then per-tag ones; a summary last; r5 before r10
        metric = column.split("/", 1)[1]
        return metric.count("/"), bool(SUMMARY.fullmatch(metric)), natural_key(metric)

    known = [s for s in SUITE_ORDER if s in suites] + [s for s in suites if s not in SUITE_ORDER]
    columns = [c for suite in known for c in sorted(suites[suite], key=order)]
    return {model: {c: results[c] for c in columns if c in results} for model, results in raw.items()}


def natural_key(text: str) -> tuple:
    """Sort key putting 'r5' before 'r10'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def collect(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> Table:
    """{model: {column: value}} of run folders, probe outputs or probes.json files."""
    return scores(load(paths, names))


def columns_of(table: Table) -> list[str]:
    """Every column present in any model, in table order."""
    return list(dict.fromkeys(c for row in table.values() for c in row))


def retrieval_chance(metric: str, n_images: float, n_texts: float) -> float | None:
    """Recall@k of random scores: t2i k / n_images; i2t 1 - C(T - m, k) / C(T, k) with m = T / I captions per image
    (None when images hold different numbers of captions)."""
    way, k = RECALL.fullmatch(metric).groups()
    k, n_images, n_texts = int(k), int(n_images), int(n_texts)
    if way == "t2i":
        return min(1.0, k / n_images)
    if n_texts % n_images:
        return None
    m = n_texts // n_images
    return 1.0 - math.comb(n_texts - m, k) / math.comb(n_texts, k) if k < n_texts else 1.0


def chance_of(suite: str, metric: str) -> float | None:
    """The rule's chance level of one suite metric, or None."""
    return next((lv for s, m, lv in CHANCE_RULES if re.search(s, suite) and re.fullmatch(m, metric)), None)


def chance(raw: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """column -> chance level where known: the benchmark's rule, or for recall the suite's image and text counts
    (shown only when every model that has the column agrees)."""
    out: dict[str, float] = {}
    for column in columns_of(scores(raw)):
        suite, metric = column.split("/", 1)
        if RECALL.fullmatch(metric):
            levels = {retrieval_chance(metric, r[f"{suite}/n_images"], r[f"{suite}/n_texts"])
                      for r in raw.values() if column in r and f"{suite}/n_images" in r and f"{suite}/n_texts" in r}
            if len(levels) == 1 and None not in levels:
                out[column] = levels.pop()
            continue
        level = chance_of(suite, metric)
        if level is None and "whatsup" in suite and metric == "mean":  # the average of its subsets' levels
            present = {tuple(w for w in WHATSUP_SUBSETS if f"{suite}/{w}" in r) for r in raw.values() if column in r}
            if len(present) == 1 and (subsets := present.pop()):
                level = sum(chance_of(suite, w) for w in subsets) / len(subsets)
        if level is not None:
            out[column] = level
    return out


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


def plot(table: Table, path: str | os.PathLike, chance_levels: Mapping[str, float] | None = None) -> None:
    """A grouped bar chart, one panel per suite: a bar per model and subset, its value printed, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chance_levels = chance_levels or {}
    columns = columns_of(table)
    suites: dict[str, list[str]] = {}
    for c in columns:
        suites.setdefault(c.split("/", 1)[0], []).append(c)
    models = list(table)
    colours = plt.get_cmap("tab10" if len(models) <= 10 else "tab20").colors
    bar = 0.8 / len(models)
    widest = max(len(cols) for cols in suites.values())
    fig, axes = plt.subplots(len(suites), 1, squeeze=False,
                             figsize=(max(7.0, 1.5 + widest * (0.35 * len(models) + 0.35)), 2.9 * len(suites) + 0.8))
    top = max([1.0] + [v for row in table.values() for v in row.values() if not math.isnan(v)])
    for ax, (suite, cols) in zip(axes[:, 0], suites.items()):
        for i, model in enumerate(models):
            for j, c in enumerate(cols):
                x = j - 0.4 + bar * (i + 0.5)
                value = table[model].get(c)
                if value is None or math.isnan(value):
                    ax.text(x, 0.02 * top, "-" if value is None else "nan", ha="center", va="bottom", fontsize=7)
                    continue
                ax.bar(x, value, bar * 0.92, color=colours[i % len(colours)], label=model if j == 0 else None)
                # on a white patch, so a chance line through it leaves it readable
                ax.text(x, value + 0.015 * top, f"{value:.2f}", ha="center", va="bottom", fontsize=6.5,
                        rotation=0 if len(models) <= 4 else 90, zorder=4,
                        bbox=dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.8))
        for j, c in enumerate(cols):
            if c in chance_levels:
                ax.hlines(chance_levels[c], j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1, zorder=3,
                          label="chance" if c == next(k for k in cols if k in chance_levels) else None)
        ax.set_title(suite, fontsize=10, loc="left")
        ax.set_xticks(range(len(cols)), [c.split("/", 1)[1] for c in cols], fontsize=8, rotation=20, ha="right")
        ax.set_xlim(-0.6, max(len(cols), 3) - 0.4)
        ax.set_ylim(0, top * 1.18)
        ax.set_ylabel("accuracy / recall", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles = {}
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)
    fig.supxlabel("benchmark subset (metric)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise CompareError(message)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="compclip compare", description="Several models' probe results: compare.md and compare.png.")
    parser.add_argument("inputs", nargs="*", metavar="RUN_OR_RESULT",
                        help="a run folder, a `compclip probe` output folder or a probes.json")
    parser.add_argument("--out", default=".", help="folder for compare.md and compare.png (default: here)")
    parser.add_argument("--names", help="comma-separated model names, one per input (default: folder names)")
    return parser.parse_args(list(argv))  # errors raise CompareError; only --help exits


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = parse(sys.argv[1:] if argv is None else argv)
        except SystemExit as done:  # --help was printed
            return int(done.code or 0)
        names = args.names.split(",") if args.names is not None else None
        raw = load(args.inputs, names)
        files = [str(results_file(p)) for p in args.inputs]
        table, levels = scores(raw), chance(raw)
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise CompareError(f"--out {str(out)!r} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(table, levels, dict(zip(raw, files)))
        (out / "compare.md").write_text(text, encoding="utf-8")
        plot(table, out / "compare.png", levels)
    except CompareError as err:
        print(f"compclip compare: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --out
        print(f"compclip compare: error: cannot write to {str(err.filename or args.out)!r}: {err.strerror}",
              file=sys.stderr)
        return 2
    print(text)
    print(f"written: {out / 'compare.md'}, {out / 'compare.png'}")
    return 0
