"""End to end: every experiment file runs (fast_dev_run), and a short real run leaves every promised output."""

import glob
import json
import os

import pytest
import torch

from lit_compclip.cli import main
from lit_compclip.config import load_config
from lit_compclip.synth import generate
from lit_compclip.train import train

TINY_MODEL = ["model.image.img_size=32", "model.image.depth=1", "model.image.width=64", "model.image.heads=2",
              "model.embed_dim=32"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "world"
    generate(str(out), train_families=48, eval_families=8, shard_size=64, probe_size=8)
    return out


def world_overrides(world):
    p = f"{world}/probes"
    return [f"synth.out_dir={world}", f"data.train_shards={world}/train", f"data.val_shards={world}/val",
            f"probes.suites.sugarcrepe.annotations={p}/sugarcrepe", f"probes.suites.sugarcrepe.images={p}/sugarcrepe/images",
            f"probes.suites.aro.root={p}/aro", f"probes.suites.aro.images={p}/aro/images",
            f"probes.suites.winoground.examples={p}/winoground/examples.jsonl",
            f"probes.suites.winoground.images={p}/winoground/images",
            f"probes.suites.docci.annotations={p}/docci/docci_descriptions.jsonlines",
            f"probes.suites.docci.images={p}/docci/images",
            "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=16", "probes.limit=8",
            "wandb.mode=disabled", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("experiment", sorted(glob.glob("experiments/*.yaml")))
def test_every_experiment_file_runs_fast_dev_run(experiment, world, tmp_path):
    cfg = load_config([experiment], world_overrides(world) + TINY_MODEL +
                      ["trainer.fast_dev_run=true", f"run_dir={tmp_path}/run"])
    result = train(cfg)
    assert result["probes"]["probe/sugarcrepe/n"] == 8 * 7


def test_short_run_writes_every_output(world, tmp_path, capsys):
    args = ["train", *world_overrides(world), *TINY_MODEL, "trainer.max_epochs=2", "wandb.mode=offline",
            f"run_dir={tmp_path}/run", "name=tiny"]
    assert main(args) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "probes.json", "probes.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert glob.glob(str(run / "wandb" / "offline-run-*"))
    probes = json.loads((run / "probes.json").read_text())
    for key in ("probe/sugarcrepe/swap_att", "probe/aro/vg_relation", "probe/winoground/group", "probe/docci/t2i_r1"):
        assert 0.0 <= probes[key] <= 1.0
    history = json.loads((run / "probes_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # every epoch, and no repeat at the end of fit
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "probe/sugarcrepe/swap_att", "data/skipped"} <= set(header)
    out = capsys.readouterr().out
    assert "swap_att=" in out and str(run) in out
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] > 0 and "log_logit_scale" in ckpt["state_dict"]


def test_a_second_run_never_overwrites_the_first(world, tmp_path):
    common = world_overrides(world) + TINY_MODEL + ["trainer.fast_dev_run=true", f"run_dir={tmp_path}/r"]
    first = train(load_config([], common))["run_dir"]
    second = train(load_config([], common))["run_dir"]
    assert first != second and os.path.isfile(os.path.join(first, "config.yaml"))
