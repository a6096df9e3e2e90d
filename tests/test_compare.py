"""`compclip compare`: the table and the chart of several models' probe results, from the files runs really write."""

import contextlib
import io
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lit_compclip.reports import compare
from lit_compclip.reports import chance
from lit_compclip.cli import main
from helpers import DEFAULT, TINY_MODEL

def run_cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def parse_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(columns, model -> cells) of the first markdown table in `text`, bold and italics stripped."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    body = {}
    for line in rows[1:]:
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        body[cells[0]] = cells[1:]
    assert header[0] == "model"
    return header[1:], body


@pytest.fixture(scope="module")
def outputs(world, tmp_path_factory):
    """Three models scored by the real probes on a tiny synthetic world, written as training and `probe` write them:
    a run folder, a `compclip probe` output folder, and a bare probes.json lacking the winoground suite."""
    from lit_compclip.probes.report import write_results
    from lit_compclip.probes import build_probes
    from lit_compclip.training.probing import run_probes
    from lit_compclip.config import load_config
    from lit_compclip.training.module import CompClip

    root = tmp_path_factory.mktemp("compare")
    cfg = load_config([DEFAULT], TINY_MODEL + [f"cache_dir={world}/cache", f"synth.out_dir={world}"])
    # the default suites, pointed at this world's probe sets
    suites = json.loads(json.dumps(OmegaConf.to_container(cfg.probes.suites, resolve=True)).replace(
        '"data/synth/probes', f'"{world}/probes'))
    probes = build_probes(suites, limit=8)
    folders = [root / "runs" / "alpha", root / "runs" / "probe-beta", root / "gamma"]
    for seed, folder in enumerate(folders):
        torch.manual_seed(seed)
        model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
        records: dict = {}
        metrics = run_probes(probes, model, records)
        write_results(metrics, records, str(folder), 4, str(folder / "probe_records") if seed == 0 else None)
    gamma = json.loads((folders[2] / "probes.json").read_text())
    bare = root / "gamma.json"
    bare.write_text(json.dumps({k: v for k, v in gamma.items() if not k.startswith("probe/winoground/")}))
    shutil.rmtree(folders[2])
    return {"alpha": folders[0], "probe-beta": folders[1], "gamma": bare, "root": root}


def test_compare_writes_the_table_and_chart_of_three_models(outputs, tmp_path):
    out = tmp_path / "cmp"
    code, printed, err = run_cli([outputs["alpha"], outputs["probe-beta"], outputs["gamma"], "--out", out])
    assert code == 0, err
    text = (out / "compare.md").read_text()
    assert text.strip() in printed
    columns, rows = parse_table(text)
    assert list(rows) == ["alpha", "probe-beta", "gamma", "chance"]
    results = {name: json.loads(((path / "probes.json") if path.is_dir() else path).read_text())
               for name, path in outputs.items() if name != "root"}
    # a column per score in any input: no counts, ties or seconds
    expected = {k.removeprefix("probe/") for r in results.values() for k in r
                if k.rsplit("/", 1)[-1] not in chance.NOT_SCORES}
    assert set(columns) == expected and len(columns) == len(expected)
    assert {"sugarcrepe/swap_att", "aro/vg_relation", "winoground/group", "docci/t2i_r1"} <= set(columns)
    assert {c.split("/")[0] for c in columns} == {k.split("/")[1] for k in results["alpha"]}  # every default suite
    assert not any(c.endswith(("/n", "/ties", "/seconds", "/n_images")) for c in columns)
    for name, cells in rows.items():
        if name == "chance":
            continue
        for column, cell in zip(columns, cells):
            value = results[name].get(f"probe/{column}")
            assert cell == ("-" if value is None else f"{value:.3f}"), (name, column)
    assert all(cells[columns.index(c)] == "-" for c in columns if c.startswith("winoground/")
               for cells in [rows["gamma"]])
    assert rows["chance"][columns.index("sugarcrepe/swap_att")] == "0.500"
    assert rows["chance"][columns.index("winoground/group")] == f"{1 / 6:.3f}"
    n_images = results["alpha"]["probe/docci/n_images"]
    assert rows["chance"][columns.index("docci/t2i_r1")] == f"{1 / n_images:.3f}"
    # suites as papers order them; within a suite the average last
    assert columns.index("sugarcrepe/mean") == max(i for i, c in enumerate(columns) if c.startswith("sugarcrepe/"))
    assert columns.index("sugarcrepe/mean") < columns.index("aro/vg_relation") < columns.index("winoground/text")
    with Image.open(out / "compare.png") as image:
        image.verify()
    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and image.width >= 700 and image.height >= 500
        assert len(set(image.convert("RGB").resize((64, 64)).getdata())) > 8  # drawn, not blank


def test_names_replace_folder_names_and_default_out_is_here(outputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, printed, err = run_cli([outputs["alpha"], outputs["probe-beta"] / "probes.json", "--names", "ours,theirs"])
    assert code == 0, err
    _, rows = parse_table((tmp_path / "compare.md").read_text())
    assert list(rows) == ["ours", "theirs", "chance"]
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_collect_reads_run_folders_probe_outputs_and_files(outputs):
    table = compare.collect([outputs["alpha"], outputs["probe-beta"], outputs["gamma"]])
    assert list(table) == ["alpha", "probe-beta", "gamma"]
    raw = json.loads((outputs["alpha"] / "probes.json").read_text())
    assert table["alpha"]["sugarcrepe/swap_att"] == raw["probe/sugarcrepe/swap_att"]
    assert "sugarcrepe/n" not in table["alpha"] and "winoground/group" not in table["gamma"]


def test_same_folder_names_are_told_apart(tmp_path):
    for parent in ("a", "b"):
        (tmp_path / parent / "run").mkdir(parents=True)
        (tmp_path / parent / "run" / "probes.json").write_text(json.dumps({"probe/sugarcrepe/swap_att": 0.5}))
    table = compare.collect([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert list(table) == ["a/run", "b/run"]


def test_markdown_marks_missing_cells_best_values_and_chance():
    table = {"m1": {"s/x": 0.25, "s/y": 0.5}, "m2": {"s/x": 0.75}}
    text = compare.markdown(table, {"s/x": 0.5})
    assert "| model | s/x | s/y |" in text
    assert "| m1 | 0.250 | **0.500** |" in text and "| m2 | **0.750** | - |" in text
    assert "| *chance* | *0.500* |  |" in text


def test_chance_levels_follow_each_benchmarks_rule():
    raw = {"m": {"sugarcrepe_pp/swap_att_itt": 0.4, "sugarcrepe_pp/tot_mean": 0.4, "aro/coco_order": 0.3,
                 "aro/vg_relation_macro": 0.5, "winoground/object/image": 0.1, "whatsup/controlled_a": 0.3,
                 "whatsup/controlled_a_pair": 0.1, "whatsup/controlled_a_set": 0.0, "whatsup/coco_qa_one": 0.5,
                 "whatsup/coco_qa_one_official": 0.5, "whatsup/mean": 0.4,
                 "iiw/t2i_r5": 0.1, "iiw/i2t_r1": 0.1, "iiw/n_images": 10.0, "iiw/n_texts": 20.0,
                 "zeroshot/top1": 0.1}}
    levels = compare.chance(raw)
    assert levels["sugarcrepe_pp/swap_att_itt"] == levels["sugarcrepe_pp/tot_mean"] == pytest.approx(1 / 3)
    assert levels["aro/coco_order"] == pytest.approx(0.2) and levels["aro/vg_relation_macro"] == 0.5
    assert levels["winoground/object/image"] == 0.25
    assert levels["whatsup/controlled_a"] == 0.25 and levels["whatsup/coco_qa_one"] == 0.5
    assert levels["whatsup/controlled_a_pair"] == 1 / 16 and levels["whatsup/controlled_a_set"] == 1 / 256
    assert levels["whatsup/coco_qa_one_official"] == 0.5
    assert levels["whatsup/mean"] == pytest.approx((0.25 + 0.5) / 2)  # the subsets present, each its own level
    assert levels["iiw/t2i_r5"] == pytest.approx(0.5)
    assert levels["iiw/i2t_r1"] == pytest.approx(1 - 18 / 20)  # 2 of 20 captions are the image's
    assert "zeroshot/top1" not in levels  # depends on the class count, which probes.json does not hold


def test_count_metrics_match_the_callbacks():
    from lit_compclip.probes.report import COUNT_METRICS
    from lit_compclip.reports import ablation, explore

    assert chance.COUNT_METRICS == COUNT_METRICS
    # one set, not copies that could drift apart
    assert chance.COUNT_METRICS is explore.COUNT_METRICS is ablation.COUNT_METRICS is COUNT_METRICS


@pytest.mark.parametrize("case", ["missing", "no_results", "invalid_json", "not_an_object", "no_metric", "names",
                                  "nothing", "unknown_option"])
def test_bad_inputs_are_one_line_exit_2(case, outputs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad" / "probes.json"
    bad.parent.mkdir()
    args = {"missing": [tmp_path / "nowhere"],
            "no_results": [empty],
            "invalid_json": [bad.parent],
            "not_an_object": [bad],
            "no_metric": [bad],
            "names": [outputs["alpha"], outputs["gamma"], "--names", "only_one"],
            "nothing": ["--out", tmp_path],
            "unknown_option": [outputs["alpha"], "--colour", "red"]}[case]
    contents = {"invalid_json": "{not json", "not_an_object": "[1, 2]", "no_metric": '{"note": "x"}'}
    bad.write_text(contents.get(case, "{}"))
    code, printed, err = run_cli(args)
    assert code == 2 and not printed
    assert err.startswith("compclip compare: error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "compare.md").exists()


def test_a_chart_that_fails_leaves_the_earlier_comparison_as_it_was(outputs, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    assert run_cli([outputs["alpha"], "--out", out])[0] == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("the chart could not be drawn")

    monkeypatch.setattr(compare, "bar_panels", fail)
    with pytest.raises(RuntimeError):
        run_cli([outputs["alpha"], outputs["probe-beta"], "--out", out])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no new table beside the old chart, no temp


def test_a_folder_of_runs_names_its_runs(outputs):
    code, _, err = run_cli([outputs["alpha"].parent])
    assert code == 2 and "alpha" in err and "probe-beta" in err and len(err.strip().splitlines()) == 1


def test_help_exits_0():
    code, printed, _ = run_cli(["--help"])
    assert code == 0 and "RUN_OR_RESULT" in printed
