"""The notebooks' figures: matplotlib Figures made without pyplot, each shown once by IPython."""

from __future__ import annotations

import io
import os
import textwrap
from typing import Any, Sequence

from matplotlib.figure import Figure
from torch import Tensor

from lit_compclip.reports.explore import VARIANTS, accuracy_metrics, failure_gallery, nearest, variant_summary
from lit_compclip.reports.runs import Curves


class ShownFigure(Figure):
    """A Figure that IPython shows as a PNG by itself: no pyplot, so nothing stays open or shows twice."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def _figure(rows: int, cols: int, width: float, height: float):
    fig = ShownFigure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _wrap(lines: Sequence[str], width: int = 34) -> str:
    return "\n".join(textwrap.fill(line, width) for line in lines)


def plot_curves(curves: dict[str, Curves], metrics: Sequence[str] | None = None, columns: int = 4):
    """One panel per metric, one line per run (x = optimizer step)."""
    known = sorted({k for c in curves.values() for k in c})
    metrics = list(metrics or accuracy_metrics(curves))
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; the runs have: {known}")
    if not metrics:
        raise ValueError(f"no curve to plot: the runs have no accuracy metric, only {known}")
    cols = min(columns, len(metrics))
    fig, axes = _figure((len(metrics) + cols - 1) // cols, cols, 3.6, 2.6)
    for ax, m in zip(axes.flat, metrics):
        for i, (label, c) in enumerate(curves.items()):
            if c.get(m):  # one colour per run in every panel
                ax.plot(*zip(*c[m]), marker="o", ms=3, label=label, color=f"C{i % 10}")
        ax.set_title(m.removeprefix("probe/"), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_axis_off()
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=4, fontsize=8)
    return fig


def plot_neighbours(images: Sequence, texts: Sequence[str], image_emb: Tensor, text_emb: Tensor,
                    query: str = "image", n: int = 4, k: int = 3):
    """The first n queries and their k nearest neighbours: image -> captions, or caption -> images (query="text").
    Pair i is (images[i], texts[i]); a ✓ marks the query's own pair."""
    if query not in ("image", "text"):
        raise ValueError(f"unknown query {query!r}; choose 'image' or 'text'")
    q, keys = (image_emb, text_emb) if query == "image" else (text_emb, image_emb)
    scores, idx = nearest(q[:n], keys, k)
    if query == "image":
        fig, axes = _figure(n, 2, 3.4, 2.0)
        for i, (left, right) in enumerate(axes):
            left.imshow(images[i])
            right.text(0, 0.5, _wrap([f"{'✓' if j == i else '✗'} {s:.3f} {texts[j]}"
                                      for s, j in zip(scores[i].tolist(), idx[i].tolist())], 60),
                       va="center", fontsize=7)
            left.set_axis_off(), right.set_axis_off()
        return fig
    fig, axes = _figure(n, k, 1.8, 2.0)
    for i, row in enumerate(axes):
        row[0].set_title(_wrap([texts[i]], 48), fontsize=7, loc="left")
        for ax, s, j in zip(row, scores[i].tolist(), idx[i].tolist()):
            ax.imshow(images[j])
            ax.set_xlabel(f"{'✓' if j == i else '✗'} {s:.3f}", fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
    return fig


def plot_variant_similarities(sims: dict[str, dict[str, Any]]):
    """Cosine of each image with its caption (x) against a swapped variant (y): a point above the diagonal fails."""
    fig, axes = _figure(1, 2, 4.0, 3.8)
    x = sims["caption"]["scores"]
    share = variant_summary(sims)
    for ax, v in zip(axes[0], VARIANTS[1:]):
        y = sims[v]["scores"]
        ax.scatter(x, y, s=8, c=(y >= x).tolist(), cmap="coolwarm", vmin=0, vmax=1)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_title(f"{v.replace('_', ' ')}: caption wins {share[v]:.1%}", fontsize=9)
        ax.set_xlabel("sim(image, caption)"), ax.set_ylabel(f"sim(image, {v.replace('_', ' ')})")
    return fig


def plot_projection(points: Tensor, labels: Sequence[str], groups: Sequence | None = None):
    """A 2-D scatter coloured by label; points of one group (a family) joined by a line."""
    fig, axes = _figure(1, 1, 8.0, 6.0)
    ax = axes[0, 0]
    if groups is not None:
        for g in dict.fromkeys(groups):
            members = [i for i, h in enumerate(groups) if h == g]
            ax.plot(points[members, 0], points[members, 1], color="grey", lw=0.6, zorder=1)
    from matplotlib import colormaps

    colours = {label: colormaps["tab20"](i % 20) for i, label in enumerate(dict.fromkeys(labels))}
    for label, colour in colours.items():
        at = [i for i, lab in enumerate(labels) if lab == label]
        ax.scatter(points[at, 0], points[at, 1], color=colour, label=label, s=30, zorder=2)
    ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2")
    if len(colours) <= 24:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig


def plot_gallery(items: Sequence[dict], title: str = "", columns: int = 4):
    """Images in a grid, each with its title and wrapped text lines (items from *_failures / failure_gallery)."""
    cols = max(1, min(columns, len(items)))
    fig, axes = _figure(max(1, (len(items) + cols - 1) // cols), cols, 2.8, 3.4)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, item in zip(axes.flat, items):
        ax.imshow(item["image"])
        ax.set_title(_wrap([item["title"], *item["lines"]]), fontsize=6, loc="left")
    if not items:
        axes[0, 0].text(0.5, 0.5, "no failures", ha="center")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_probe_failures(run_dir: str | os.PathLike, probe: str, subset: str, k: int = 8):
    """plot_gallery of failure_gallery; a run without probe records gets a figure saying how to make them."""
    try:
        return plot_gallery(failure_gallery(run_dir, probe, subset, k), f"worst {probe}/{subset} failures")
    except FileNotFoundError as err:
        fig, axes = _figure(1, 1, 8.0, 1.0)
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0, 0.5, _wrap([str(err)], 110), va="center", fontsize=8)
        return fig
