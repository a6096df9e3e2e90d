"""The ablation report: finished sweep runs grouped by cell, mean and std over seeds, the paper's ordering checked.

A run's cell is read from its resolved config.yaml: the caption source with the largest weight (recaption, or
alt-text for `alt_text` / `txt`) and the text tower (pretrained: `sentence_transformers`, `transformers`; or `scratch`). Runs whose
other parameters differ (beyond `seed`) form separate groups."""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_compclip.errors import first_line
from lit_compclip.probes.report import COUNT_METRICS
from lit_compclip.reports.runs import sweep_runs

# The paper's 2x2 (PAPER.md, DOCCI text-to-image R@1): both > recaption only > tower only > neither.
PAPER_ORDER = ("both", "recaption only", "tower only", "neither")
PAPER_DOCCI_R1 = {"both": 91.6, "recaption only": 75.6, "tower only": 67.2, "neither": 53.5}
# The binding/relation probes the ordering is checked on, and DOCCI retrieval as in the paper.
ORDER_METRICS = ("probe/sugarcrepe/swap_att", "probe/sugarcrepe/swap_obj", "probe/sugarcrepe/replace_rel",
                 "probe/aro/vg_relation", "probe/aro/vg_attribution", "probe/winoground/text",
                 "probe/docci/t2i_r1")
COMPOSITE = "binding/relation mean"  # mean of the first five: one number per run for the ordering
# The default's bar (README): every seed >= 80% on swap-att, swap-obj, replace-rel and ARO VG-Relation.
PASS_METRICS = ORDER_METRICS[:4]
PASS_BAR = 0.80


def cell_of(cfg: dict[str, Any]) -> str:
    """'both' | 'recaption only' | 'tower only' | 'neither', from a resolved config."""
    fields = cfg["data"]["caption_fields"]
    main = max(fields, key=fields.get)
    recaption = main not in ("alt_text", "txt")
    pretrained = cfg["model"]["text"].get("tower", "sentence_transformers") != "scratch"  # any pretrained tower
    return {(True, True): "both", (True, False): "recaption only", (False, True): "tower only",
            (False, False): "neither"}[(recaption, pretrained)]


def collect(out: str | Path) -> list[dict[str, Any]]:
    """Every finished run under `out`: id, parameters, cell, group (the cell plus any other parameter that varies
    between the runs, seed aside), metrics."""
    runs = []
    for found in sweep_runs(out):
        record, metrics, cfg = found["record"], found["probes"], found["config"]
        if all(m in metrics for m in ORDER_METRICS[:5]):
            metrics[COMPOSITE] = statistics.fmean(metrics[m] for m in ORDER_METRICS[:5])
        runs.append({"id": record["id"], "params": record["params"], "seed": record["params"].get("seed", cfg["seed"]),
                     "cell": cell_of(cfg), "metrics": metrics, "seconds": record.get("seconds")})
    keys = {k for r in runs for k in r["params"]} - {"seed", "experiment"}
    varying = sorted(k for k in keys if len({json.dumps(r["params"].get(k)) for r in runs}) > 1)
    experiments: dict[str, set] = {}
    for run in runs:
        experiments.setdefault(run["cell"], set()).add(run["params"].get("experiment"))
    for run in runs:
        # two experiment files of one cell (the default and whole_captions) are two groups, named by their files
        own = [Path(str(run["params"]["experiment"])).stem] if len(experiments[run["cell"]]) > 1 else []
        others = ", ".join(own + [f"{k}={run['params'].get(k)}" for k in varying])
        run["group"] = run["cell"] + (f" ({others})" if others else "")
    return runs


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """group -> metric -> (mean, sample std (0 for one seed), number of seeds), over the scores runs share."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["group"], []).append(run)
    table = {}
    for group, members in groups.items():
        names = set.intersection(*(set(r["metrics"]) for r in members))
        names = [n for n in sorted(names) if n.rsplit("/", 1)[-1] not in COUNT_METRICS | {"seconds"}]
        table[group] = {}
        for name in names:
            values = [float(r["metrics"][name]) for r in members]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[group][name] = (statistics.fmean(values), std, len(values))
    return table


def beyond_spread(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Cell a's mean exceeds cell b's by more than the seeds' spread: the larger of their two sample stds."""
    return a[0] - b[0] > max(a[1], b[1])


def check_order(table: dict[str, dict[str, tuple]], metrics=(COMPOSITE,) + ORDER_METRICS) -> list[dict[str, Any]]:
    """Per metric: the four cells' means and stds, whether each adjacent pair of the paper's order holds (a > b), and
    whether each step is larger than the seeds' spread (a - b > the larger of the two stds): only then is the order
    more than seed noise."""
    if not all(cell in table for cell in PAPER_ORDER):
        return []
    rows = []
    for metric in metrics:
        if not all(metric in table[c] for c in PAPER_ORDER):
            continue
        cells = [table[c][metric] for c in PAPER_ORDER]
        means, stds, seeds = (list(v) for v in zip(*cells))
        pairs = [means[i] > means[i + 1] for i in range(3)]
        clear = [beyond_spread(cells[i], cells[i + 1]) for i in range(3)]
        rows.append({"metric": metric, "means": means, "stds": stds, "seeds": seeds, "pairs": pairs,
                     "holds": all(pairs), "clear": clear, "holds_clearly": all(clear)})
    return rows


def compare_two(table: dict[str, dict[str, tuple]], metrics=(COMPOSITE,) + ORDER_METRICS) -> list[dict[str, Any]]:
    """A report of exactly two groups (a refinement against its reference): per metric the second group's mean minus
    the first's, and whether that difference is larger than the seeds' spread (the larger of the two stds)."""
    if len(table) != 2:
        return []
    first, second = sorted(table)
    rows = []
    for metric in metrics:
        if metric in table[first] and metric in table[second]:
            a, b = table[first][metric], table[second][metric]
            rows.append({"metric": metric, "groups": [first, second], "diff": b[0] - a[0],
                         "clear": beyond_spread(a, b) or beyond_spread(b, a)})
    return rows


def _short(metric: str) -> str:
    return metric.removeprefix("probe/")


def bar_chart(table: dict[str, dict[str, tuple]], path: Path, metrics=(COMPOSITE,) + ORDER_METRICS) -> Path | None:
    """ablation.png: a panel per benchmark (the composite first), a bar per cell (paper's order first) with its mean
    printed and the std over seeds as error bar, chance dashed (plots.bar_panels)."""
    from lit_compclip.reports.chance import chance
    from lit_compclip.reports.plots import bar_panels, by_suite

    groups = [c for c in PAPER_ORDER if c in table] + sorted(g for g in table if g not in PAPER_ORDER)
    metrics = [m for m in metrics if all(m in table[g] for g in groups)]
    if not groups or not metrics:
        return None
    panels = {"summary (mean of 5)": [m for m in metrics if m == COMPOSITE],
              **by_suite([m for m in metrics if m != COMPOSITE])}
    panels = {title: cols for title, cols in panels.items() if cols}
    # the benchmarks' rules (retrieval needs image counts, which the table does not keep: no line there)
    levels = {f"probe/{k}": v for k, v in chance({"m": {_short(m): table[groups[0]][m][0] for m in metrics
                                                         if m != COMPOSITE}}).items()}
    parts = [levels.get(m) for m in ORDER_METRICS[:5]]
    if None not in parts:
        levels[COMPOSITE] = statistics.fmean(parts)
    fig = bar_panels({g: {m: table[g][m][0] for m in metrics} for g in groups}, panels, levels,
                     errors={g: {m: table[g][m][1] for m in metrics} for g in groups},
                     ticks={COMPOSITE: COMPOSITE}, scale=100,
                     ylabel="% (mean over seeds; bar: std)", digits=1)
    fig.savefig(path, dpi=110)
    return path


def _fmt(cell: tuple[float, float, int] | None) -> str:
    if cell is None:
        return ""
    mean, std, n = cell
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def render(table, order_rows, runs, spec_path: str | None, failed: list[str], chart: Path | None,
           compared: list[dict[str, Any]] = ()) -> str:
    groups = [c for c in PAPER_ORDER if c in table] + sorted(g for g in table if g not in PAPER_ORDER)
    seeds = {g: max(v[2] for v in table[g].values()) for g in groups}
    lines = ["# Ablation report" if order_rows else "# Sweep report", "",
             f"{len(runs)} finished run(s) from `{spec_path or 'a sweep'}`, written "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Scores in %, mean ± sample std over seeds "
             f"(seeds per cell: {', '.join(f'{g} {seeds[g]}' for g in groups)}).", ""]
    if failed:
        lines += [f"**Failed runs (not in the table; see logs/):** {', '.join(failed)}", ""]
    if order_rows:
        lines += ["## The paper's ordering: both > recaption only > tower only > neither", "",
                  "| metric | " + " | ".join(PAPER_ORDER) + " | order of the means | each step > seeds' spread |",
                  "|---" * 7 + "|"]
        for row in order_rows:
            marks = " > ".join("✓" if ok else "✗" for ok in row["pairs"])
            clear = " > ".join("✓" if ok else "✗" for ok in row["clear"])
            lines.append(f"| {_short(row['metric'])} | " + " | ".join(map(_fmt, zip(row["means"], row["stds"],
                                                                                  row["seeds"])))
                         + f" | {'yes' if row['holds'] else 'no'} ({marks}) "
                         f"| {'yes' if row['holds_clearly'] else 'no'} ({clear}) |")
        lines += ["", "A step is larger than the seeds' spread when the two cells' means differ by more than the "
                  "larger of their two sample stds. The paper's DOCCI text-to-image R@1 for the same cells: "
                  + ", ".join(f"{c} {v}" for c, v in PAPER_DOCCI_R1.items()) + ". `" + COMPOSITE
                  + "` is the mean of swap-att, swap-obj, replace-rel, VG-Relation and VG-Attribution.", ""]
    elif compared:
        first, second = compared[0]["groups"]
        lines += [f"## {second} against {first}", "",
                  f"| metric | {first} | {second} | difference | larger than the seeds' spread |", "|---" * 5 + "|"]
        for row in compared:
            m = row["metric"]
            lines.append(f"| {_short(m)} | {_fmt(table[first][m])} | {_fmt(table[second][m])} | "
                         f"{100 * row['diff']:+.1f} | {'yes' if row['clear'] else 'no'} |")
        lines += ["", "The spread is the larger of the two groups' sample stds over seeds.", ""]
    else:
        lines += ["(The paper's ordering is checked when all four cells are present.)", ""]
    if chart:
        lines += [f"![ablation]({chart.name})", ""]
    metrics = sorted(set().union(*(table[g] for g in groups)), key=lambda m: (m != COMPOSITE, m)) if groups else []
    lines += ["## Every probe subset", "", "| metric | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for metric in metrics:
        lines.append(f"| {_short(metric)} | " + " | ".join(_fmt(table[g].get(metric)) for g in groups) + " |")
    heads = " | ".join(_short(m) for m in PASS_METRICS)
    lines += ["", "## Runs", "", f"Each run's four probes of the pass bar (>= {100 * PASS_BAR:.0f}% on every one).", "",
              f"| run | cell | seed | {heads} | passes | minutes |", "|---" * (5 + len(PASS_METRICS)) + "|"]
    for run in sorted(runs, key=lambda r: (r["group"], str(r["seed"]))):
        minutes = f"{run['seconds'] / 60:.1f}" if run.get("seconds") else ""
        scores = [run["metrics"].get(m) for m in PASS_METRICS]
        shown = " | ".join("" if v is None else f"{100 * v:.1f}" for v in scores)
        passes = "" if None in scores else ("yes" if all(v >= PASS_BAR for v in scores) else "no")
        lines.append(f"| {run['id']} | {run['group']} | {run['seed']} | {shown} | {passes} | {minutes} |")
    return "\n".join(lines) + "\n"


def log_wandb(table, order_rows, chart: Path | None, project: str = "lit_compclip") -> bool:
    """Log the report as W&B tables (+ the chart) when W&B would sync online (as `wandb.mode=auto` decides)."""
    from lit_compclip.reports.wandb_runs import wandb_mode

    if wandb_mode("auto") != "online":
        return False
    import wandb

    groups = list(table)
    metrics = sorted(set().union(*(table[g] for g in groups)))
    rows = [[m] + [table[g][m][0] if m in table[g] else None for g in groups] for m in metrics]
    with wandb.init(project=project, job_type="ablation-report", name="ablation-report") as run:
        run.log({"ablation/table": wandb.Table(columns=["metric"] + groups, data=rows)})
        if order_rows:
            run.log({"ablation/order": wandb.Table(columns=["metric", "holds"],
                                                   data=[[r["metric"], r["holds"]] for r in order_rows])})
        if chart:
            run.log({"ablation/chart": wandb.Image(str(chart))})
    return True


def write_report(out: str | Path, spec_path: str | None = None, failed: list[str] = ()) -> dict[str, Any]:
    """REPORT.md, ablation.png and summary.json in `out`; returns the path and a one-paragraph summary."""
    out = Path(out)
    runs = collect(out)
    table = aggregate(runs)
    order_rows = check_order(table)
    chart = bar_chart(table, out / "ablation.png") if runs else None
    compared = compare_two(table)
    path = out / "REPORT.md"
    path.write_text(render(table, order_rows, runs, spec_path, list(failed), chart, compared))
    summary_json = {g: {m: {"mean": v[0], "std": v[1], "n": v[2]} for m, v in t.items()} for g, t in table.items()}
    (out / "summary.json").write_text(json.dumps({"cells": summary_json, "order": order_rows,
                                                  "compared": compared}, indent=1) + "\n")
    if order_rows:
        held = [r for r in order_rows if r["holds"]]
        summary = (f"the paper's ordering holds on {len(held)} of {len(order_rows)} metrics"
                   f" ({', '.join(_short(r['metric']) for r in held) or 'none'})")
    else:
        summary = f"{len(runs)} finished run(s) in {len(table)} group(s)"
    logged = False
    try:
        logged = log_wandb(table, order_rows, chart) if runs else False
    except Exception as e:  # the local report is written either way; say why W&B did not get it
        summary += f"\n(W&B report not logged: {first_line(e)})"
    return {"path": path, "summary": summary + ("\nlogged to W&B" if logged else ""), "table": table,
            "order": order_rows}
