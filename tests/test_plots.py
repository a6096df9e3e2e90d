"""The probe charts: a panel per benchmark suite, chance dashed, final values printed (probes.png, ablation.png,
compare.png, the notebook's curves)."""

from pathlib import Path

import pytest

from lit_compclip.reports import ablation
from lit_compclip.reports import compare
from lit_compclip.reports import plots
from lit_compclip.reports.plots import plot_history

SUITES = {"sugarcrepe": ["swap_att", "swap_obj", "mean"], "aro": ["vg_relation", "coco_order"],
          "winoground": ["text", "image", "group", "object/text"], "docci": ["t2i_r1", "i2t_r1"],
          "my_new_probe": ["top1"]}


def tiny_history(epochs: int = 3) -> list[dict]:
    """What ProbeCallback.history holds: counts, ties and seconds beside the scores, which rise a little each pass."""
    history = []
    for epoch in range(1, epochs + 1):
        metrics = {}
        for suite, subsets in SUITES.items():
            for i, subset in enumerate(subsets):
                metrics[f"probe/{suite}/{subset}"] = min(1.0, 0.3 + 0.05 * i + 0.1 * epoch)
            metrics.update({f"probe/{suite}/n": 8.0, f"probe/{suite}/ties": 0.0, f"probe/{suite}/seconds": 0.1})
        metrics.update({"probe/docci/n_images": 10.0, "probe/docci/n_texts": 10.0})
        history.append({"epoch": epoch, "step": 7 * epoch, "metrics": metrics})
    return history


def drawn(fig) -> list:
    return [ax for ax in fig.axes if ax.lines]


def test_probes_png_has_one_panel_per_suite(tmp_path):
    path = tmp_path / "probes.png"
    history = tiny_history()
    fig = plot_history(history, str(path))
    assert path.stat().st_size > 10_000
    axes = drawn(fig)
    assert len(axes) == len(SUITES) == len(fig.axes)
    assert [ax.get_title(loc="left") for ax in axes] == list(SUITES)  # papers' suites first, any other after
    for ax, (suite, subsets) in zip(axes, SUITES.items()):
        solid = [line for line in ax.lines if line.get_linestyle() == "-"]
        assert sorted(line.get_label() for line in solid) == sorted(subsets)  # no counts, ties or seconds
        for line in solid:  # each line is its own subset's history (every subset's values differ)
            assert list(line.get_xdata()) == [h["epoch"] for h in history]
            assert list(line.get_ydata()) == [h["metrics"][f"probe/{suite}/{line.get_label()}"] for h in history]
        colours = [line.get_color() for line in solid if line.get_color() != "black"]  # the summary (mean) is black
        assert len(set(map(str, colours))) == len(colours)
        texts = [t.get_text() for t in ax.texts]
        assert {f"{line.get_label()} {line.get_ydata()[-1]:.2f}" for line in solid} <= set(texts)  # final values
        assert list(ax.get_xticks()) == [1, 2, 3] and ax.get_xlabel() == "epoch"
        assert ax.get_ylim()[1] >= 1.0
    sugarcrepe, aro, winoground, docci, new = axes
    dashed = lambda ax: sorted({round(line.get_ydata()[0], 4) for line in ax.lines if line.get_linestyle() != "-"})
    assert dashed(sugarcrepe) == [0.5] and "chance 0.50" in [t.get_text() for t in sugarcrepe.texts]
    assert dashed(aro) == [0.2, 0.5]
    assert dashed(winoground) == [round(1 / 6, 4), 0.25]
    assert dashed(docci) == [0.1]  # recall@1 of 10 images, from the counts the history keeps
    assert dashed(new) == []  # no known chance level
    assert winoground.get_ylim()[0] < 1 / 6


def test_a_single_probe_pass_is_drawn_over_steps(tmp_path):
    fig = plot_history(tiny_history(1), str(tmp_path / "probes.png"))
    assert len(drawn(fig)) == len(SUITES)
    assert all(ax.get_xlabel() == "step" and list(ax.get_xticks()) == [7] for ax in fig.axes)


def test_a_history_without_scores_draws_nothing(tmp_path):
    assert plot_history([{"epoch": 1, "step": 1, "metrics": {"probe/aro/n": 4.0}}], str(tmp_path / "p.png")) is None
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("ys", [[0.5, 0.5, 0.5, 0.51], [0.99, 1.0, 1.0, 0.2], [0.1, 0.4, 0.7]])
def test_spread_keeps_labels_a_gap_apart_in_range_and_in_order(ys):
    out = plots.spread(ys, 0.05, 0.0, 1.0)
    ranked = sorted(range(len(ys)), key=lambda i: ys[i])
    heights = [out[i] for i in ranked]
    assert all(b - a >= 0.05 - 1e-9 for a, b in zip(heights, heights[1:]))
    assert 0.0 <= min(out) and max(out) <= 1.0
    assert all(abs(a - b) < 0.16 for a, b in zip(out, ys))  # near their lines


def test_ablation_png_has_one_panel_per_benchmark(tmp_path, monkeypatch):
    figures = []
    draw = plots.bar_panels
    monkeypatch.setattr(plots, "bar_panels", lambda *a, **k: figures.append(draw(*a, **k)) or figures[-1])
    table = {cell: {m: (0.5 + 0.1 * i, 0.02, 2) for m in (ablation.COMPOSITE,) + ablation.ORDER_METRICS}
             for i, cell in enumerate(ablation.PAPER_ORDER)}
    path = ablation.bar_chart(table, tmp_path / "ablation.png")
    assert path == tmp_path / "ablation.png" and path.stat().st_size > 10_000
    (fig,) = figures
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["summary (mean of 5)", "sugarcrepe", "aro", "winoground", "docci"]
    bars = fig.axes[1]
    assert len(bars.patches) == 3 * len(ablation.PAPER_ORDER)  # a bar per cell and subset
    assert "50.0" in [t.get_text() for t in bars.texts]  # each mean printed, in %
    chance = [c for c in bars.collections if c.get_label() == "chance"]
    assert len(chance) == 3 and all(c.get_segments()[0][0][1] == pytest.approx(50.0) for c in chance)  # in %
    assert all(c.get_linestyle()[0][1] is not None for c in chance)  # dashed
    labels = [t.get_text() for t in fig.legends[0].texts]
    assert set(labels) == set(ablation.PAPER_ORDER) | {"chance"}  # a small legend: the cells, and chance


def test_compare_png_has_one_panel_per_suite(tmp_path):
    raw = {"a": {"sugarcrepe/swap_att": 0.6, "aro/vg_relation": 0.7, "iiw/t2i_r1": 0.2, "iiw/n_images": 5.0,
                 "iiw/n_texts": 5.0}, "b": {"sugarcrepe/swap_att": 0.4, "aro/vg_relation": 0.5}}
    fig = compare.plot(compare.scores(raw), tmp_path / "compare.png", compare.chance(raw))
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["sugarcrepe", "aro", "iiw"]
    assert {t.get_text() for t in fig.axes[0].texts} == {"0.60", "0.40"}
    assert Path(tmp_path / "compare.png").stat().st_size > 5_000


def test_curves_chart_has_a_row_per_suite_and_a_column_per_run():
    a = {f"probe/{s}/{m}": [(10, 0.4 + 0.01 * i), (20, 0.6 - 0.01 * i)]  # every subset's curve its own
         for s, subsets in SUITES.items() for i, m in enumerate(subsets)}
    b = {k: [(x, y + 0.05) for x, y in v] for k, v in a.items() if not k.startswith("probe/aro/")}
    curves = {"a": a, "b": b, "counts": {"probe/aro/n": [(10, 4.0)]}}
    fig = plots.curves_chart(curves)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[:3] == ["sugarcrepe · a", "sugarcrepe · b", "aro · a"]  # b has no aro: its cell stays empty
    assert len(fig.axes) == 2 * len(SUITES) - 1
    for ax, title in zip(fig.axes, titles):
        suite, run = title.split(" · ")
        solid = [line for line in ax.lines if line.get_linestyle() == "-"]
        assert sorted(line.get_label() for line in solid) == sorted(SUITES[suite])
        for line in solid:  # each line is its own run's curve of its own subset
            want = curves[run][f"probe/{suite}/{line.get_label()}"]
            assert list(zip(line.get_xdata(), line.get_ydata())) == want
    with pytest.raises(ValueError, match="no curve"):
        plots.curves_chart({"counts": {"probe/aro/n": [(10, 4.0)]}})


def test_a_suite_of_nan_scores_gets_an_empty_panel(tmp_path):
    history = tiny_history(2)
    for h in history:
        h["metrics"]["probe/aro/vg_relation"] = h["metrics"]["probe/aro/coco_order"] = float("nan")
    fig = plot_history(history, str(tmp_path / "probes.png"))
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(SUITES)
    assert [t.get_text() for t in fig.axes[1].texts] == ["no finite value"]
