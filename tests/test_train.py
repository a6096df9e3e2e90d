"""End to end: every experiment file runs (fast_dev_run), and a short real run leaves every promised output."""

import contextlib
import csv
import glob
import io
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from lit_compclip.cli import main
from lit_compclip.config import load_config
from lit_compclip.training.run import probe_time, train
from helpers import DEFAULT, TINY_MODEL, world_overrides


# paper_*.yaml name weights nothing here can fetch: tests/test_paper_config.py runs them with a random stand-in
@pytest.mark.parametrize("experiment", sorted(set(glob.glob("experiments/*.yaml")) - set(glob.glob("experiments/paper_*"))))
def test_every_experiment_file_runs_fast_dev_run(experiment, world, tmp_path, request):
    own = load_config([experiment])
    # the world's probe files for the suites the experiment names (real_data.yaml names SugarCrepe only)
    overrides = [o for o in world_overrides(world) if not o.startswith("probes.suites.") or o.split(".")[2] in
                 own.probes.suites] + TINY_MODEL + ["trainer.fast_dev_run=true", f"run_dir={tmp_path}/run"]
    if own.init_from:  # a stage-2 experiment starts from a tiny checkpoint instead
        overrides.append(f"init_from={request.getfixturevalue('tiny_checkpoint')}")
    cfg = load_config([experiment], overrides)
    result = train(cfg)
    assert result["probes"]["probe/sugarcrepe/n"] == 8 * 7


@pytest.fixture(scope="module")
def short_run(world, tmp_path_factory):
    """A 2-epoch tiny run through the CLI: (run folder, what it printed)."""
    run = tmp_path_factory.mktemp("short") / "run"
    args = ["train", DEFAULT, *world_overrides(world), *TINY_MODEL, "trainer.max_epochs=2", "wandb.mode=offline",
            f"run_dir={run}", "name=tiny"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return run, printed.getvalue()


def test_short_run_writes_every_output(short_run):
    run, out = short_run
    for name in ("config.yaml", "metrics.csv", "probes.json", "probes.png", "checkpoints/last.ckpt", "failures.md",
                 "run_time.json",
                 "probe_records/sugarcrepe/swap_att.jsonl", "probe_records/aro/vg_relation.jsonl",
                 "probe_records/winoground/group.jsonl", "probe_records/docci/t2i.jsonl"):
        assert (run / name).is_file(), name
    assert glob.glob(str(run / "wandb" / "offline-run-*"))
    tables = glob.glob(str(run / "wandb" / "offline-run-*" / "files" / "media" / "table" / "failures" / "**" /
                            "*.table.json"), recursive=True)
    assert tables, "the worst failures were not logged to W&B"
    probes = json.loads((run / "probes.json").read_text())
    for key in ("probe/sugarcrepe/swap_att", "probe/aro/vg_relation", "probe/winoground/group", "probe/docci/t2i_r1"):
        assert 0.0 <= probes[key] <= 1.0
    history = json.loads((run / "probes_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # every epoch, and no repeat at the end of fit
    # the default's epoch 2 read the place-free lists of a world that holds them, and no sample went missing
    assert OmegaConf.load(run / "config.yaml").data.later_caption_fields == {"recaption": 0.75, "plain_list": 0.25}
    assert json.loads((run / "data_skips.json").read_text())["train"]["total"] == 0
    # what the probes cost: each pass is the sum of its probes' logged seconds, set against fit's wall time
    timing = json.loads((run / "run_time.json").read_text())
    passes = [sum(v for k, v in h["metrics"].items() if k.endswith("/seconds")) for h in history]
    assert timing["probe_passes_s"] == pytest.approx(passes, abs=1e-3) and len(passes) == 2
    assert 0 < timing["probe_s"] < timing["fit_s"]
    assert timing["probe_fraction"] == pytest.approx(timing["probe_s"] / timing["fit_s"], rel=1e-12)
    assert f"probes took {timing['probe_s']:.1f} s in 2 passes = {timing['probe_fraction']:.1%}" in out
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "probe/sugarcrepe/swap_att", "data/skipped"} <= set(header)
    rows = list(csv.DictReader(io.StringIO((run / "metrics.csv").read_text())))
    logged = [r for r in rows if r["train/loss"]]  # counted only on the steps Lightning writes: on every one of them
    assert logged and all(r["train/truncated_fraction"] == "0.0" for r in logged)
    assert "swap_att=" in out and str(run) in out
    assert f"probe chart: {run / 'probes.png'}" in out.splitlines()[-2]  # the last lines point to the chart (W&B last)
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] > 0 and "model.log_logit_scale" in ckpt["state_dict"]


def test_a_second_run_never_overwrites_the_first(world, tmp_path):
    common = world_overrides(world) + TINY_MODEL + ["trainer.fast_dev_run=true", f"run_dir={tmp_path}/r"]
    first = train(load_config([DEFAULT], common))["run_dir"]
    second = train(load_config([DEFAULT], common))["run_dir"]
    assert first != second and os.path.isfile(os.path.join(first, "config.yaml"))


def test_probe_command_reproduces_the_final_probes_of_training(short_run, world, tmp_path, capsys):
    run, _ = short_run
    args = ["probe", "--ckpt", str(run / "checkpoints/last.ckpt"), *world_overrides(world), "--dump", str(tmp_path)]
    assert main(args) == 0
    trained = json.loads((run / "probes.json").read_text())
    probed = json.loads((tmp_path / "probes.json").read_text())
    scores = {k: v for k, v in trained.items() if not k.endswith("/seconds")}
    assert scores == {k: v for k, v in probed.items() if not k.endswith("/seconds")}  # one code path, same model
    rows = [json.loads(line) for line in (tmp_path / "sugarcrepe/swap_att.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["correct"] for r in rows) / 8 == pytest.approx(trained["probe/sugarcrepe/swap_att"])
    assert all(r["correct"] == (r["scores"][0] > r["scores"][1]) for r in rows)
    assert "swap_att=" in capsys.readouterr().out and (tmp_path / "failures.md").is_file()


def test_probe_command_runs_only_the_named_probe_with_its_options(short_run, world, tmp_path, capsys):
    run, _ = short_run
    args = ["probe", "--ckpt", str(run / "checkpoints/last.ckpt"), "--probe", "sugarcrepe",
            f"annotations={world}/probes/sugarcrepe", f"images={world}/probes/sugarcrepe/images",
            "subsets=[swap_att,replace_rel]", "limit=3", "--out", str(tmp_path)]
    assert main(args) == 0
    probed = json.loads((tmp_path / "probes.json").read_text())
    assert probed["probe/sugarcrepe/n"] == 6 and "probe/sugarcrepe/swap_obj" not in probed
    assert not (tmp_path / "sugarcrepe").exists()  # no --dump, no per-example files


@pytest.mark.parametrize("bad, message", [
    (["--ckpt", "nowhere.ckpt"], "checkpoint 'nowhere.ckpt' not found"),
    (["--ckpt", "{corrupt}"], "cannot be read"),
    (["--ckpt", "{run}/checkpoints/last.ckpt", "--probe", "sugarcrepe", "annotations=/no/such"], "/no/such"),
    (["--ckpt", "{run}/checkpoints/last.ckpt", "--probe", "sugarcrep"], "sugarcrepe"),
    (["--probe", "aro"], "--ckpt PATH is required"),
])
def test_probe_command_bad_input_is_one_line_exit_2(short_run, tmp_path, capsys, bad, message):
    run, _ = short_run
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    args = [a.format(run=run, corrupt=corrupt) for a in bad]
    # the default suites in a world that is not built yet, and may be built: a bad input must stop us before that
    world = tmp_path / "world"
    assert main(["probe", DEFAULT, *world_overrides(world), "synth.auto=true", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not world.exists()


def test_probe_without_an_experiment_file_names_a_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no run folder around it: the checkpoint is what is wrong, not the suites
    assert main(["probe", "--ckpt", "runs/x/checkpoints/last.ckpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint 'runs/x/checkpoints/last.ckpt' not found" in err, err


def test_a_second_run_in_the_same_process_gets_its_own_wandb_run(short_run, world, tmp_path):
    first, _ = short_run  # trained in this process just before, W&B offline
    cfg = load_config([DEFAULT], world_overrides(world) + TINY_MODEL + ["trainer.max_steps=1", "wandb.mode=offline",
                                                                   f"run_dir={tmp_path}/second"])
    result = train(cfg)
    assert result["wandb_dir"] and result["wandb_dir"].startswith(str(tmp_path / "second"))
    assert len(glob.glob(str(first / "wandb" / "offline-run-*"))) == 1  # nothing of the second run went there


@pytest.mark.parametrize("env, want", [({}, "offline"), ({"WANDB_MODE": "disabled"}, "disabled")])
def test_wandb_mode_auto_through_a_whole_run(world, tmp_path, monkeypatch, env, want):
    # the default wandb.mode: no credentials on this machine -> an offline run folder; WANDB_MODE decides when set
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = load_config([DEFAULT], world_overrides(world) + TINY_MODEL + ["trainer.max_steps=1", "wandb.mode=auto",
                                                                   f"run_dir={tmp_path}/auto"])
    result = train(cfg)
    assert result["wandb_mode"] == want
    made = glob.glob(str(tmp_path / "auto" / "wandb" / "offline-run-*"))
    assert (len(made) == 1) == (want == "offline") and bool(result["wandb_dir"]) == (want == "offline")
    assert not glob.glob(str(tmp_path / "auto" / "wandb" / "run-*"))  # never online


def test_probe_share_agrees_with_the_seconds_the_file_holds():
    # a 12 ms probe pass: its share from unrounded seconds would differ from the file's quotient by ~4 parts in 1e3
    t = probe_time([0.0123456], 0.3579)
    assert t["probe_s"] == 0.012 and t["fit_s"] == 0.358 and t["probe_fraction"] == t["probe_s"] / t["fit_s"]
    assert probe_time([], 0.0)["probe_fraction"] is None
