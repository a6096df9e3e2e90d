"""A real tiny training over shards with known broken samples ends with the exact skip counts, by reason, in
metrics.csv, data_skips.json and the printed line (2 loader workers; a resumed run goes on from its checkpoint's)."""

import csv
import glob
import io
import json
import logging
import re

import pytest

from lit_compclip.config import load_config
from lit_compclip.training.module import CompClip
from lit_compclip.training.run import train
from skip_shards import add, write_cut_shard, write_shard

SCRATCH_TEXT = {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}
TINY = ["model.image.img_size=32", "model.image.depth=1", "model.image.width=32", "model.image.heads=2",
        "model.embed_dim=16", "data.batch_size=8", "data.num_workers=2", "data.shuffle_buffer=0",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(train folder, val folder, expected train counts, expected val counts): 13 + 3 broken of every kind."""
    root = tmp_path_factory.mktemp("broken")
    (root / "train").mkdir()
    (root / "val").mkdir()
    # 2 workers, one shard each plus the cut one: 37 and 35 good samples leave partial batches behind
    train = add(write_shard(root / "train" / "0.tar", 37, {"truncated_jpeg": 2, "garbage_jpeg": 1, "bad_json": 2,
                                                          "no_caption": 1, "no_image": 1}, "a"),
                write_shard(root / "train" / "1.tar", 35, {"truncated_jpeg": 1, "garbage_jpeg": 2, "bad_json": 1,
                                                          "no_caption": 2, "no_image": 2}, "b"),
                write_cut_shard(root / "train" / "2.tar", 5, "c"))
    val = add(write_shard(root / "val" / "0.tar", 11, {"garbage_jpeg": 1, "no_image": 1}, "v"),
              write_shard(root / "val" / "1.tar", 9, {"bad_json": 1}, "w"))
    return root / "train", root / "val", train, val


def config(shards, run_dir, *extra):
    train_dir, val_dir, _, _ = shards
    cfg = load_config([], TINY + [f"data.train_shards={train_dir}", f"data.val_shards={val_dir}", f"run_dir={run_dir}",
                                  *extra])
    cfg.model.text = SCRATCH_TEXT
    return cfg


def final_values(run_dir) -> dict[str, float]:
    """Each column's last non-empty value in metrics.csv."""
    last = {}
    for row in csv.DictReader(io.StringIO((run_dir / "metrics.csv").read_text())):
        last.update({k: float(v) for k, v in row.items() if v != ""})
    return last


def wandb_final_values(run_dir) -> dict[str, str]:
    """Each key's last value in the offline W&B run file: its history items are protobuf HistoryItem records
    (field 2 the key, field 16 the value as JSON), found by their wire format (no reader of the file ships)."""
    data = open(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))[0], "rb").read()
    return {m.group(2).decode(): m.group(4).decode()
            for m in re.finditer(rb"\x12(.)(data/[\w/]+)\x82\x01(.)([0-9.e+-]+)", data, re.DOTALL)
            if len(m.group(2)) == m.group(1)[0] and len(m.group(4)) == m.group(3)[0]}


@pytest.fixture(scope="module")
def one_epoch(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", printed)
        train(config(shards, run_dir, "wandb.mode=offline"))
    return run_dir, printed.getvalue()


def test_a_run_ends_with_the_exact_skip_counts_by_reason(shards, one_epoch):
    _, _, train_counts, val_counts = shards
    run_dir, printed = one_epoch
    assert sum(train_counts.values()) == 16 and len(train_counts) == 5
    record = json.loads((run_dir / "data_skips.json").read_text())
    assert record["train"]["total"] == 16 and record["train"]["by_reason"] == train_counts
    assert record["val"]["total"] == 3 and record["val"]["by_reason"] == val_counts
    last = final_values(run_dir)
    # (metrics are written every 4th step: the last steps' figure reaches the file by the final row)
    assert last["data/skipped"] == 16 and last["data/val_skipped"] == 3
    assert {k.split("/")[-1]: v for k, v in last.items() if k.startswith("data/skipped/")} == train_counts
    logged = wandb_final_values(run_dir)  # every reason, as metrics.csv holds them
    assert {k: float(v) for k, v in logged.items() if k.startswith("data/skipped")} == \
        {"data/skipped": 16, **{f"data/skipped/{reason}": n for reason, n in train_counts.items()}}
    assert {k: float(v) for k, v in logged.items() if k.startswith("data/val_skipped")} == \
        {"data/val_skipped": 3, **{f"data/val_skipped/{reason}": n for reason, n in val_counts.items()}}
    line = ("data: skipped 16 training samples (bad_image 6, bad_json 3, no_caption 3, no_image 3, "
            "truncated_shard 1), 3 in the last validation pass (bad_image 1, bad_json 1, no_image 1); "
            f"1 shard(s) cut short (how many samples were lost is unknown: no img2dataset _stats.json); "
            f"see {run_dir / 'data_skips.json'}")
    assert line in printed.splitlines()


def test_a_run_resumed_mid_epoch_ends_with_the_exact_total(shards, tmp_path, monkeypatch, caplog):
    run_dir, step = tmp_path / "r", CompClip.training_step

    def dies_at_step_5(module, batch, batch_idx):
        if module.global_step == 4:
            raise RuntimeError("killed")
        return step(module, batch, batch_idx)

    monkeypatch.setattr(CompClip, "training_step", dies_at_step_5)
    with pytest.raises(RuntimeError, match="killed"):  # inside the first epoch, after the step-3 checkpoint
        train(config(shards, run_dir, "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=3",
                     "wandb.mode=disabled"))
    monkeypatch.setattr(CompClip, "training_step", step)
    # resumed at the 4th batch for the rest of two epochs: every broken sample skipped (and counted) once per epoch,
    # those before the checkpoint not again, those of the lost 4th step once
    with caplog.at_level(logging.INFO, logger="lit_compclip.data.stream"):
        train(config(shards, run_dir, "trainer.max_epochs=2", "resume=last", "wandb.mode=disabled"))
    assert "resuming epoch 0 after its first 3 batches" in caplog.text
    record = json.loads((run_dir / "data_skips.json").read_text())
    assert record["train"]["total"] == 32
    assert record["train"]["by_reason"] == {k: 2 * v for k, v in shards[2].items()}
    assert record["val"]["total"] == 3  # the latest pass, not a sum over passes
    assert final_values(run_dir)["data/skipped"] == 32
