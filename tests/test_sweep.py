"""Sweeps: specs checked before anything runs, grids expanded like W&B, a local grid resumes, the report's maths."""

import glob
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lit_compclip.reports.ablation import COMPOSITE, PAPER_ORDER, aggregate, cell_of, check_order, collect, write_report
from lit_compclip.cli import main
from lit_compclip.config import split_args
from lit_compclip.config import ConfigError, load_config
from lit_compclip.reports.sweep import expand, load_spec, plan, run_args, run_id
from helpers import DEFAULT, TINY_MODEL, world_overrides


def write_spec(path, **spec):
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
    return str(path)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The runs of a shipped grid spec, planned once for the module into a folder of their own:
    planned(spec) -> (runs, folder). The tests read them; one that changes a config plans its own."""
    done = {}

    def get(spec: str):
        if spec not in done:
            folder = tmp_path_factory.mktemp(Path(spec).stem)
            done[spec] = plan(load_spec(spec), folder, [], None, 0), folder
        return done[spec]

    return get


# decoder_tail builds a random 26-layer decoder per cell (~22 s): `make test-all` plans it
@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.endswith("decoder_tail.yaml") else s
                                  for s in sorted(glob.glob("experiments/sweeps/*.yaml"))])
def test_every_sweep_spec_plans_valid_runs(spec, planned, tmp_path):
    loaded = load_spec(spec)
    if loaded["method"] == "grid":
        runs, out = planned(spec)
    else:
        runs, out = plan(loaded, tmp_path, [], count=2, seed=0), tmp_path
    assert runs and len({r["id"] for r in runs}) == len(runs)
    for run in runs:
        assert run["cfg"].run_dir == str(out / run["id"])
    if loaded["method"] == "grid":
        assert {r["params"]["seed"] for r in runs} >= {0}


def test_ablation_spec_holds_the_four_cells_times_three_seeds(planned):
    runs, _ = planned("experiments/sweeps/ablation.yaml")
    cells = [cell_of(OmegaConf.to_container(r["cfg"])) for r in runs]
    assert sorted(set(cells)) == sorted(PAPER_ORDER)
    assert all(cells.count(c) == 3 for c in PAPER_ORDER)


def _flat(cfg) -> dict:
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = node
    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def test_ablation_cells_differ_from_the_default_only_by_the_two_levers_and_the_scratch_cells_lr(planned):
    runs, _ = planned("experiments/sweeps/ablation.yaml")
    default = {r["cfg"].seed: _flat(r["cfg"]) for r in runs if cell_of(OmegaConf.to_container(r["cfg"])) == "both"}
    # the caption lever is the whole caption schedule: the alt-text cells read alt-text in epoch 2 too
    levers = ("data.caption_fields.", "data.later_caption_fields", "model.text.")
    for run in runs:
        cell, flat = cell_of(OmegaConf.to_container(run["cfg"])), _flat(run["cfg"])
        base = default[run["cfg"].seed]
        differ = {k for k in set(flat) | set(base) if flat.get(k) != base.get(k)} - {"name", "run_dir"}
        allowed = {k for k in differ if k.startswith(levers)}
        if "scratch" in str(flat["model.text.tower"]):  # each scratch-tower cell has its own tuned lr
            allowed.add("optim.lr")
        assert differ == allowed, (cell, differ - allowed)


def test_each_scratch_cell_trains_at_the_lr_its_sweep_found_best_on_docci(planned):
    # docs/scratch_lr/summary.json is the stored report of experiments/sweeps/scratch_lr.yaml (the sweep's metric)
    cells = json.loads(Path("docs/scratch_lr/summary.json").read_text())["cells"]
    spec = load_spec("experiments/sweeps/scratch_lr.yaml")
    rates = spec["parameters"]["optim.lr"]["values"]
    runs, _ = planned("experiments/sweeps/ablation.yaml")
    for name in ("recaption only", "neither"):
        scores = {lr: cells[f"{name} (optim.lr={lr})"]["probe/docci/t2i_r1"] for lr in rates}
        assert all(s["n"] == 3 for s in scores.values())  # every arm of the grid ran, seeds 0-2
        best = max(rates, key=lambda lr: scores[lr]["mean"])
        used = {r["cfg"].optim.lr for r in runs if cell_of(OmegaConf.to_container(r["cfg"])) == name}
        assert used == {best}, (name, used, {lr: round(s["mean"], 4) for lr, s in scores.items()})


def test_seeds_spec_is_the_default_over_five_seeds_as_the_ablation_runs_it(planned):
    seeds, _ = planned("experiments/sweeps/seeds.yaml")
    assert [r["id"] for r in seeds] == [f"default-seed{s}" for s in range(5)]
    ablation = {r["id"]: r for r in planned("experiments/sweeps/ablation.yaml")[0]}
    for run in seeds[:3]:  # the ablation's "both" cell is the same run: same id, same config but for its folder
        twin = ablation[run["id"]]["cfg"]
        assert OmegaConf.masked_copy(run["cfg"], [k for k in run["cfg"] if k not in ("run_dir",)]) == \
            OmegaConf.masked_copy(twin, [k for k in twin if k not in ("run_dir",)])


def test_finetune_spec_starts_each_seed_from_its_own_default_run_and_differs_only_by_the_negatives(planned, tmp_path):
    runs = plan(load_spec("experiments/sweeps/finetune.yaml"), tmp_path / "f", [], None, 0)  # its configs change below
    defaults = {r["id"] for r in planned("experiments/sweeps/refinements.yaml")[0]}
    for run in runs:
        seed = run["cfg"].seed
        assert run["cfg"].init_from == f"runs/refinements/default-seed{seed}/checkpoints/last.ckpt"
        assert f"default-seed{seed}" in defaults
    by_id = {r["id"]: r["cfg"] for r in runs}
    for seed in range(3):
        hard, cont = by_id[f"hard_negatives-seed{seed}"], by_id[f"continuation-seed{seed}"]
        assert hard.data.hard_negatives.source == "scene" and cont.data.hard_negatives.source is None
        same = [k for k in hard if k not in ("run_dir", "name", "data")]
        assert OmegaConf.masked_copy(hard, same) == OmegaConf.masked_copy(cont, same)
        hard.data.hard_negatives = cont.data.hard_negatives
        assert hard.data == cont.data


def test_experiment_flag_is_an_experiment_file_as_wandb_passes_it():
    files, rest = split_args(["a.yaml", "--experiment=b.yaml", "--seed=1", "--experiment", "c.yaml", "x=1"])
    assert files == ["a.yaml", "b.yaml", "c.yaml"] and rest == ["--seed=1", "x=1"]
    with pytest.raises(ConfigError, match="--experiment needs a path"):
        split_args(["--experiment"])


def test_grid_expands_in_spec_order_and_constants_apply_to_every_run():
    spec = {"method": "grid", "parameters": {"experiment": {"values": ["a.yaml", "b.yaml"]},
                                             "seed": {"values": [0, 1]}, "optim.lr": {"value": 0.01}}}
    runs = expand(spec)
    assert [(r["experiment"], r["seed"]) for r in runs] == [("a.yaml", 0), ("a.yaml", 1), ("b.yaml", 0), ("b.yaml", 1)]
    assert all(r["optim.lr"] == 0.01 for r in runs)
    assert run_args(runs[1]) == ["--experiment=a.yaml", "--seed=1", "--optim.lr=0.01"]
    assert [run_id(r, spec) for r in runs] == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]


def test_random_draws_are_reproducible_and_inside_their_ranges():
    spec = {"method": "random", "parameters": {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "model.text.unfreeze_layers": {"values": [0, 2, 4]}, "x": {"min": 1, "max": 3}}}
    a, b = expand(spec, count=20, seed=3), expand(spec, count=20, seed=3)
    assert a == b
    assert all(1e-4 <= r["optim.lr"] <= 1e-2 and r["model.text.unfreeze_layers"] in (0, 2, 4) for r in a)
    assert all(isinstance(r["x"], int) and 1 <= r["x"] <= 3 for r in a)  # int min/max: int_uniform, as W&B
    with pytest.raises(ConfigError, match="--count"):
        expand(spec)


@pytest.mark.parametrize("spec, message", [
    ({"method": "grid", "paramters": {}}, "unknown sweep key 'paramters' (did you mean 'parameters'?)"),
    ({"method": "hyperopt", "parameters": {"seed": {"values": [0]}}}, "method 'hyperopt' is not one of"),
    ({"method": "grid", "parameters": {"seed": {"min": 0, "max": 3}}}, "a grid needs 'value' or 'values'"),
    ({"method": "grid", "parameters": {"seed": {"values": []}}}, "'values' must be a non-empty list"),
    ({"method": "random", "parameters": {"lr": {"distribution": "normal", "min": 0, "max": 1}}},
     "distribution 'normal' is not one of"),
])
def test_bad_specs_fail_with_one_line(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(write_spec(tmp_path / "s.yaml", **spec))


def test_a_bad_config_key_in_a_spec_fails_before_any_run(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", method="grid", parameters={"optim.lrr": {"values": [0.1]}})
    assert main(["sweep", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'" in err and "did you mean 'optim.lr'" in err
    assert not (tmp_path / "out").exists()


def fake_run(out, rid, caption, tower, seed, scores):
    folder = out / rid
    folder.mkdir(parents=True)
    cfg = load_config([DEFAULT], [f"data.caption_fields={{{caption}: 1.0}}", f"model.text={{tower: {tower}}}",
                           f"seed={seed}"])
    OmegaConf.save(cfg, folder / "config.yaml")
    (folder / "probes.json").write_text(json.dumps(scores))
    (folder / "sweep_run.json").write_text(json.dumps({"id": rid, "params": {"experiment": caption + tower,
                                                                             "seed": seed}, "seconds": 60}))


METRICS = ("probe/sugarcrepe/swap_att", "probe/sugarcrepe/swap_obj", "probe/sugarcrepe/replace_rel",
           "probe/aro/vg_relation", "probe/aro/vg_attribution")


def test_report_means_stds_and_the_papers_ordering(tmp_path):
    # cell -> per-seed value of every metric; 'tower only' beats 'recaption only' on swap_att: the order breaks there
    cells = {("recaption", "sentence_transformers"): [0.9, 0.8], ("recaption", "scratch"): [0.7, 0.7],
             ("alt_text", "sentence_transformers"): [0.6, 0.4], ("alt_text", "scratch"): [0.3, 0.3]}
    for (caption, tower), values in cells.items():
        for seed, v in enumerate(values):
            scores = {m: v for m in METRICS} | {"probe/sugarcrepe/n": 7.0}
            if tower == "sentence_transformers" and caption == "alt_text":
                scores["probe/sugarcrepe/swap_att"] = 0.95
                scores["probe/aro/vg_attribution"] = (0.75, 0.55)[seed]  # 65 ± 14: below 70, by less than 14
            fake_run(tmp_path, f"{caption}-{tower}-{seed}", caption, tower, seed, scores)
    runs = collect(tmp_path)
    assert {r["cell"] for r in runs} == set(PAPER_ORDER)
    table = aggregate(runs)
    mean, std, n = table["both"]["probe/aro/vg_relation"]
    assert (mean, n) == (pytest.approx(0.85), 2) and std == pytest.approx(0.0707107, abs=1e-6)  # sample std
    assert "probe/sugarcrepe/n" not in table["both"]  # counts are not scores
    rows = {r["metric"]: r for r in check_order(table)}
    assert rows["probe/aro/vg_relation"]["holds"] and rows["probe/aro/vg_relation"]["pairs"] == [True, True, True]
    assert rows["probe/sugarcrepe/swap_att"]["pairs"] == [True, False, True]
    assert rows[COMPOSITE]["holds"]
    attribution = rows["probe/aro/vg_attribution"]  # the means in order, one step within the seeds' spread
    assert attribution["holds"] and attribution["clear"] == [True, False, True] and not attribution["holds_clearly"]
    report = write_report(tmp_path, spec_path="spec.yaml")
    text = report["path"].read_text()
    assert text.startswith("# Ablation report")
    assert "| aro/vg_relation | 85.0 ± 7.1 | 70.0 ± 0.0 | 50.0 ± 14.1 | 30.0 ± 0.0 | yes (✓ > ✓ > ✓) | yes (✓ > ✓ > ✓) |" in text
    assert "| sugarcrepe/swap_att | 85.0 ± 7.1 | 70.0 ± 0.0 | 95.0 ± 0.0 | 30.0 ± 0.0 | no (✓ > ✗ > ✓) | no (✓ > ✗ > ✓) |" in text
    assert "| aro/vg_attribution | 85.0 ± 7.1 | 70.0 ± 0.0 | 65.0 ± 14.1 | 30.0 ± 0.0 | yes (✓ > ✓ > ✓) | no (✓ > ✗ > ✓) |" in text
    assert "| recaption-sentence_transformers-0 | both | 0 | 90.0 | 90.0 | 90.0 | 90.0 | yes | 1.0 |" in text
    runs_table = text.split("## Runs")[1].splitlines()
    header = next(i for i, line in enumerate(runs_table) if line.startswith("| run |"))
    assert runs_table[header].count("|") == runs_table[header + 1].count("|")  # a separator cell per column
    assert "| recaption-scratch-1 | recaption only | 1 | 70.0 | 70.0 | 70.0 | 70.0 | no | 1.0 |" in text
    assert "85.0 ± 7.1" in text and (tmp_path / "ablation.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["cells"]["both"]["probe/aro/vg_relation"]["n"] == 2


def test_two_experiments_of_one_cell_are_two_groups_compared_against_the_seeds_spread(tmp_path):
    # the refinements: the default and whole_captions are both the "both" cell, told apart by their files
    for exp, values in (("experiments/default.yaml", [0.80, 0.84, 0.82]),
                        ("experiments/whole_captions.yaml", [0.70, 0.90, 0.80])):
        for seed, v in enumerate(values):
            rid = f"{exp.split('/')[1][:-5]}-seed{seed}"
            fake_run(tmp_path, rid, "recaption", "sentence_transformers", seed,
                     {m: v for m in METRICS} | {"probe/docci/t2i_r1": v - 0.3 * ("whole" in exp)})
            record = json.loads((tmp_path / rid / "sweep_run.json").read_text())
            record["params"]["experiment"] = exp
            (tmp_path / rid / "sweep_run.json").write_text(json.dumps(record))
    runs = collect(tmp_path)
    assert sorted({r["group"] for r in runs}) == ["both (default)", "both (whole_captions)"]
    report = write_report(tmp_path, spec_path="spec.yaml")
    rows = {r["metric"]: r for r in json.loads((tmp_path / "summary.json").read_text())["compared"]}
    vgr = rows["probe/aro/vg_relation"]  # equal means (82 vs 80), whole_captions' std 10: within the spread
    assert vgr["groups"] == ["both (default)", "both (whole_captions)"]
    assert vgr["diff"] == pytest.approx(-0.02) and not vgr["clear"]
    docci = rows["probe/docci/t2i_r1"]
    assert docci["diff"] == pytest.approx(-0.32) and docci["clear"]
    text = report["path"].read_text()
    assert text.startswith("# Sweep report") and "## both (whole_captions) against both (default)" in text
    assert "| docci/t2i_r1 | 82.0 ± 2.0 | 50.0 ± 10.0 | -32.0 | yes |" in text


def test_two_cell_one_step_grid_runs_reports_and_resumes(world, tmp_path, capsys):
    spec = write_spec(tmp_path / "grid.yaml", name="tiny", method="grid", parameters={
        "experiment": {"values": ["experiments/default.yaml", "experiments/alt_text.yaml"]},
        "seed": {"values": [0]}, "trainer.max_steps": {"value": 1}})
    out = tmp_path / "out"
    args = ["sweep", spec, "--out", str(out), "--jobs", "2", *world_overrides(world), *TINY_MODEL]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[default-seed0] finished" in printed and "[alt_text-seed0] finished" in printed
    text = (out / "REPORT.md").read_text()
    assert "| default-seed0 | both | 0 |" in text
    assert "| alt_text-seed0 | tower only | 0 |" in text
    assert "| sugarcrepe/swap_att |" in text
    assert json.loads((out / "default-seed0" / "probes.json").read_text())["probe/sugarcrepe/n"] == 8 * 7
    # resume: finished runs are not redone; an interrupted one (no sweep_run.json) starts again
    (out / "alt_text-seed0" / "sweep_run.json").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 run(s) already finished, not redone: default-seed0" in printed
    assert "[alt_text-seed0] unfinished earlier" in printed and "[alt_text-seed0] finished" in printed
    assert "[default-seed0] started" not in printed


def test_random_spec_without_count_is_a_one_line_error(tmp_path, capsys):
    spec = write_spec(tmp_path / "r.yaml", method="random", parameters={"optim.lr": {"min": 0.001, "max": 0.01},
                                                                   "experiment": {"value": DEFAULT}})
    assert main(["sweep", spec, "--dry-run"]) == 2
    assert "give --count N" in capsys.readouterr().err
    assert main(["sweep", spec, "--dry-run", "--count", "2", "--out", str(tmp_path / "o")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "compclip train" in l]
    assert len(lines) == 2 and all("--optim.lr=" in l for l in lines)


def test_report_goes_to_wandb_only_when_wandb_is_online(tmp_path, monkeypatch):
    import wandb

    from lit_compclip.reports import ablation, wandb_runs

    table = {"both": {"probe/aro/vg_relation": (0.8, 0.1, 3)}}
    logged = []

    class FakeRun:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def log(self, data):
            logged.append(data)

    monkeypatch.setattr(wandb, "init", lambda **kw: FakeRun())
    assert not ablation.log_wandb(table, [], None)  # the suite runs with WANDB_MODE=offline
    assert logged == []
    monkeypatch.setattr(wandb_runs, "wandb_mode", lambda mode: "online")
    assert ablation.log_wandb(table, [], None)
    assert logged[0]["ablation/table"].columns == ["metric", "both"]
