"""Probe charts (probes.png, compare.png, ablation.png, the notebook's probe curves): one panel per benchmark suite,
chance dashed (chance.py), values printed; no pyplot (figures are plain objects, nothing stays open)."""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from lit_compclip.reports.chance import SUMMARY, chance, order_columns

Points = list[tuple[float, float]]  # (x, value)
CHANCE_COLOUR, CHANCE_STYLE = "0.45", (0, (4, 3))  # grey dashed, in every chart
LABEL_SIZE = 7  # points: end-of-line labels and value labels
MARKERS = "os^Dv<>P*X"
# Line-panel geometry, inches: the plot area, the label margin on its right, the space for title and axis labels.
AXES_W, AXES_H, LABELS_W, PAD_L, PAD_B, PAD_T = 3.0, 2.3, 1.7, 0.55, 0.45, 0.35


class Chart(Figure):
    """A Figure that IPython shows as a PNG by itself (no pyplot)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def colours(n: int) -> list:
    """n distinct colours: tab10, or tab20 (dark and light of ten hues) beyond ten."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors)
    # tab20's light shades, darkened: readable as text on white
    return [c if i % 2 == 0 else tuple(0.8 * v for v in c) for i, c in enumerate(colormaps["tab20"].colors)]


def split_column(column: str) -> tuple[str, str]:
    """'probe/sugarcrepe/swap_att' or 'sugarcrepe/swap_att' -> ('sugarcrepe', 'swap_att')."""
    suite, _, metric = column.removeprefix("probe/").partition("/")
    return suite, metric


def by_suite(columns: Sequence[str]) -> dict[str, list[str]]:
    """suite -> its columns, suites in order of first appearance."""
    out: dict[str, list[str]] = {}
    for c in columns:
        out.setdefault(split_column(c)[0], []).append(c)
    return out


def spread(ys: Sequence[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label heights near `ys`, at least `gap` apart and inside [lo, hi] where room allows (order kept)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [min(max(ys[i], lo), hi) for i in order]
    for k in range(1, len(placed)):  # push up
        placed[k] = max(placed[k], placed[k - 1] + gap)
    if placed and placed[-1] > hi:  # then down from the top
        placed[-1] = hi
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(ys)
    for k, i in enumerate(order):
        out[i] = placed[k]
    return out


def _finite(points: Points) -> Points:
    return [(x, y) for x, y in points if y is not None and math.isfinite(y)]


def y_range(values: Sequence[float], levels: Sequence[float]) -> tuple[float, float]:
    """From a little under min(chance, data) to a little over 1 (or the data's top)."""
    lo = min(list(values) + list(levels) + [1.0])
    hi = max(list(values) + [1.0])
    return max(lo - 0.06 * (hi - lo), lo - 0.05, -0.03), hi + 0.04 * (hi - lo)


def chance_lines(ax, levels: Mapping[str, float]) -> list[tuple[float, str]]:
    """One grey dashed line per distinct chance level; returns their labels (level, text), naming the subsets
    unless all share it."""
    groups: dict[float, list[str]] = {}
    for name, level in levels.items():
        key = next((k for k in groups if abs(k - level) < 0.005), level)  # a label's height apart or less: one
        groups.setdefault(key, []).append(name)
    out = []
    for level, names in groups.items():
        ax.axhline(level, color=CHANCE_COLOUR, linestyle=CHANCE_STYLE, linewidth=1, zorder=1)
        which = ", ".join(names) if len(", ".join(names)) <= 18 else f"{len(names)} subsets"  # fits the margin
        out.append((level, f"chance {level:.2f}" + ("" if len(names) == len(levels) else f" ({which})")))
    return out


def line_panel(ax, lines: Mapping[str, Points], levels: Mapping[str, float], title: str, xlabel: str,
               ylim: tuple[float, float] | None = None) -> None:
    """One suite: a line per subset in its own colour and marker, its final value printed at its end, chance dashed;
    a subset's summary (mean) in black, per-tag subsets (`tag/metric`) thinner."""
    lines = {name: pts for name, pts in ((n, _finite(p)) for n, p in lines.items()) if pts}
    levels = {n: v for n, v in levels.items() if n in lines}
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    if not lines:  # every value NaN
        ax.text(0.5, 0.5, "no finite value", transform=ax.transAxes, ha="center", color=CHANCE_COLOUR)
        return
    xs = sorted({x for pts in lines.values() for x, _ in pts})
    ax.set_ylim(*(ylim or y_range([y for pts in lines.values() for _, y in pts], list(levels.values()))))
    pad = 0.5 if len(xs) < 2 else 0.04 * (xs[-1] - xs[0])
    ax.set_xlim(xs[0] - pad, xs[-1] + pad)
    palette = colours(sum(not SUMMARY.fullmatch(n) for n in lines))
    gap = (ax.get_ylim()[1] - ax.get_ylim()[0]) * (LABEL_SIZE * 1.3 / 72) / AXES_H  # one label's height, in data
    ends, k, m = [], 0, 0
    for name, pts in lines.items():
        summary = bool(SUMMARY.fullmatch(name))
        colour = "black" if summary else palette[k % len(palette)]
        ax.plot(*zip(*pts), color=colour, marker=MARKERS[(m if summary else k) % len(MARKERS)],
                ms=3.5 if "/" not in name else 2.5, lw=2.2 if summary else 1 if "/" in name else 1.5, zorder=3,
                label=name)
        k, m = k + (not summary), m + summary
        ends.append((name, pts[-1], colour, summary))
    # the subsets' labels and the chance levels' share the right margin, nudged apart together
    labels = [(y, f"{name} {y:.2f}", colour, "bold" if summary else "normal", (x, y))
              for name, (x, y), colour, summary in ends]
    labels += [(level, text, CHANCE_COLOUR, "chance", (1.0, level)) for level, text in chance_lines(ax, levels)]
    transform = blended_transform_factory(ax.transAxes, ax.transData)
    lo, hi = ax.get_ylim()
    for (y, text, colour, weight, xy), label_y in zip(labels, spread([lab[0] for lab in labels], gap, lo, hi)):
        chance = weight == "chance"  # its connector starts at the panel's edge
        ax.annotate(text, xy=xy, xycoords=transform if chance else "data", xytext=(1.03, label_y),
                    textcoords=transform, fontsize=LABEL_SIZE - 0.5 * chance, color=colour, va="center", ha="left",
                    annotation_clip=False, fontweight="normal" if chance else weight,
                    style="italic" if chance else "normal",
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.6, shrinkA=0, shrinkB=2))
    ax.set_xlabel(xlabel, fontsize=8)
    if len(xs) <= 8:
        ax.set_xticks(xs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)


def line_grid(panels: Sequence[dict | None], columns: int) -> Chart:
    """Panels (dicts of line_panel's arguments; None leaves a cell empty) in rows of `columns`, each with room for
    its end labels."""
    rows = max(1, math.ceil(len(panels) / columns))
    cell_w, cell_h = PAD_L + AXES_W + LABELS_W, PAD_B + AXES_H + PAD_T
    width, height = columns * cell_w, rows * cell_h
    fig = Chart(figsize=(width, height))
    for i, panel in enumerate(panels):
        if panel is None:
            continue
        r, c = divmod(i, columns)
        ax = fig.add_axes(((c * cell_w + PAD_L) / width, ((rows - 1 - r) * cell_h + PAD_B) / height, AXES_W / width,
                           AXES_H / height))
        line_panel(ax, **panel)
        if c == 0:
            ax.set_ylabel("accuracy / recall", fontsize=8)
    return fig


def suite_levels(final: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """suite -> subset -> chance level, from one set of flat results (counts included, for retrieval)."""
    out: dict[str, dict[str, float]] = {}
    for column, level in chance({"run": {k.removeprefix("probe/"): v for k, v in final.items()}}).items():
        suite, metric = split_column(column)
        out.setdefault(suite, {})[metric] = level
    return out


def _ordered(metrics: Mapping[str, float]) -> dict[str, list[str]]:
    """suite -> its score columns (no counts, ties or seconds), in compare's order (papers' suites first, summary
    last)."""
    return by_suite(order_columns([k.removeprefix("probe/") for k in metrics]))


def history_chart(history: Sequence[Mapping]) -> Chart | None:
    """probes.png of one run: a panel per suite, a line per subset over epochs (steps when epochs repeat or there
    is one probe pass); None without any score."""
    epochs = [h["epoch"] for h in history]
    axis = "epoch" if len(set(epochs)) == len(epochs) > 1 else "step"
    merged = {k: v for h in history for k, v in h["metrics"].items()}  # every key any pass had, its latest value
    suites = _ordered(merged)
    if not suites:
        return None
    levels = suite_levels(merged)
    panels = []
    for suite, cols in suites.items():
        lines = {split_column(c)[1]: [(h[axis], h["metrics"].get(f"probe/{c}")) for h in history] for c in cols}
        panels.append(dict(lines=lines, levels=levels.get(suite, {}), title=suite, xlabel=axis))
    return line_grid(panels, min(3, len(panels)))


def plot_history(history: Sequence[Mapping], path: str | os.PathLike) -> Chart | None:
    """Write probes.png (see history_chart); returns the figure (its axes: one per suite), None when nothing to draw."""
    fig = history_chart(history)
    if fig is not None:
        fig.savefig(path, dpi=110)
    return fig


def curves_chart(curves: Mapping[str, Mapping[str, Points]]) -> Chart:
    """Several runs' probe curves (explore.load_curves): a row per suite, a column per run (same y range along a
    row), a line per subset over steps."""
    if not curves:
        raise ValueError("no run to plot: give at least one run's curves")
    merged = {k: pts[-1][1] for c in curves.values() for k, pts in c.items() if pts}
    suites = _ordered(merged)
    if not suites:
        raise ValueError(f"no curve to plot: the runs have no accuracy metric, only {sorted(merged)}")
    levels = suite_levels(merged)
    panels = []
    for suite, cols in suites.items():
        values = [y for c in curves.values() for col in cols for _, y in _finite(c.get(f"probe/{col}", []))]
        ylim = y_range(values, list(levels.get(suite, {}).values()))
        for run, c in curves.items():
            lines = {split_column(col)[1]: c[f"probe/{col}"] for col in cols if _finite(c.get(f"probe/{col}", []))}
            panels.append(dict(lines=lines, levels=levels.get(suite, {}), title=f"{suite} · {run}", xlabel="step",
                               ylim=ylim) if lines else None)  # a run without this suite: an empty cell
    return line_grid(panels, len(curves))


def bar_panels(table: Mapping[str, Mapping[str, float]], panels: Mapping[str, Sequence[str]],
               levels: Mapping[str, float] | None = None, errors: Mapping[str, Mapping[str, float]] | None = None,
               ticks: Mapping[str, str] | None = None, scale: float = 1.0, ylabel: str = "accuracy / recall",
               digits: int = 2) -> Chart:
    """Grouped bars, a panel per suite (panels: title -> columns): a bar per group (model, ablation cell) and column,
    its value printed above it, `errors` as error bars, chance dashed over each column; rows of panels fill the
    width. Values are multiplied by `scale` (100 for %)."""
    levels, errors, ticks = levels or {}, errors or {}, ticks or {}
    groups = list(table)
    palette = colours(len(groups))
    bar, unit = 0.8 / len(groups), 0.32 * len(groups) + 0.45  # inches per column
    widths = {t: max(len(cols), 1.6) * unit for t, cols in panels.items()}
    row_w = max(max(widths.values()), 11.0)
    label_w = (digits + 3) * 6.5 * 0.6 / 72  # a value label's width, inches
    upright = label_w <= 1.1 * bar * unit
    rows: list[list[str]] = [[]]
    for title in panels:  # pack panels into rows in order
        if rows[-1] and sum(widths[t] + 0.6 for t in rows[-1]) + widths[title] > row_w:
            rows.append([])
        rows[-1].append(title)
    cell_h, legend_h, left = 3.2, 0.45, 0.6
    fig = Chart(figsize=(row_w + left + 0.2, cell_h * len(rows) + legend_h))
    width, height = fig.get_size_inches()
    top = scale * max([1.0] + [v + errors.get(g, {}).get(c, 0) for g in groups for c, v in table[g].items()
                               if not math.isnan(v)])
    for r, titles in enumerate(rows):
        x0 = left
        for title in titles:
            cols = list(panels[title])
            ax = fig.add_axes((x0 / width, (height - legend_h - (r + 1) * cell_h + 0.95) / height,
                               widths[title] / width, (cell_h - 1.35) / height))
            x0 += widths[title] + 0.6
            for i, group in enumerate(groups):
                for j, c in enumerate(cols):
                    x, value = j - 0.4 + bar * (i + 0.5), table[group].get(c)
                    if value is None or math.isnan(value):
                        ax.text(x, 0.02 * top, "-" if value is None else "nan", ha="center", va="bottom", fontsize=7)
                        continue
                    err = errors.get(group, {}).get(c)
                    ax.bar(x, scale * value, bar * 0.9, color=palette[i], label=group if j == 0 else None,
                           yerr=scale * err if err else None, capsize=2, error_kw=dict(lw=0.8))
                    ax.text(x, scale * (value + (err or 0)) + 0.015 * top, f"{scale * value:.{digits}f}",
                            ha="center", va="bottom", fontsize=6.5, rotation=0 if upright else 90, zorder=4,
                            bbox=dict(facecolor="white", edgecolor="none", pad=0.3, alpha=0.8))
            for j, c in enumerate(cols):
                if c in levels:
                    ax.hlines(scale * levels[c], j - 0.45, j + 0.45, colors=CHANCE_COLOUR, linestyles=CHANCE_STYLE,
                              linewidth=1.2, zorder=3, label="chance")
            ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
            ax.set_xticks(range(len(cols)), [ticks.get(c, split_column(c)[1]) for c in cols], fontsize=7.5,
                          rotation=20, ha="right")
            extra = max(0.0, 1.6 - len(cols)) / 2  # a one-column panel: its bars centred
            ax.set_xlim(-0.6 - extra, len(cols) - 0.4 + extra)
            ax.set_ylim(0, top * 1.22)
            ax.tick_params(axis="y", labelsize=7.5)
            ax.grid(axis="y", alpha=0.3)
            if title == rows[r][0]:
                ax.set_ylabel(ylabel, fontsize=8)
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 6), fontsize=8,
               frameon=False)
    return fig
