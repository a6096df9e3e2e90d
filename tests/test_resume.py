"""Resuming: a run killed mid-epoch continues from its last checkpoint exactly (step, epoch, learning rate, logit
scale, next batch, the random state its dropout draws from: the same losses and final weights), in its own folder,
on a small model and on the shipped default; the stream loader's position; the `resume` key's one-line errors."""

import contextlib
import csv
import io
import json
import os
from collections import Counter
import shutil
import signal

import lightning
import pytest
import torch
from helpers import DEFAULT, assert_close_by_norm, assert_same_tensors, close_by_norm, make_dm, write_shards
from resume_script import recording

from lit_compclip.cli import main
from lit_compclip.config import ConfigError, load_config
from lit_compclip.data.stream import fast_forward_share
from lit_compclip.data.skips import RunSkips
from lit_compclip.training.module import CompClip
from lit_compclip.training.resume import RandomState, resume_point, wandb_id

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")
TINY = ["model.image.img_size=16", "model.image.patch_size=8", "model.image.depth=1", "model.image.width=32",
        "model.image.heads=2", "model.embed_dim=16", "model.image.crop_scale=[0.5,1.0]",
        "model.text={tower: scratch, width: 32, layers: 1, heads: 2, max_seq_len: 16}"]
# The configurations resumed: a small image tower with one trained MiniLM layer (dropout on, no cache), and the shipped
# default model as the config gives it (only batches and steps are small). Both run dropout in the main process, so
# the losses after a resume match only if the random state was restored.
MODELS = {"small": TINY[:-1] + ["model.text={tower: sentence_transformers, unfreeze_layers: 1, max_seq_len: 16, "
                                "cache_dir: null}", "model.length_groups=1"],
          "default": []}
# A real (float32) Lightning run on one machine: the resumed run does the same arithmetic, so anything above
# rounding is a real difference (another dropout mask moves a loss by ~1e-2).
RTOL = 1e-5
# 8 batches of 4 per epoch from resampled shards, two loader workers (so a resume lands mid-round), a checkpoint
# every 3 steps: the run is killed as step 11 begins, and resumes from step 9 = epoch 1's second batch.
EPOCH, EVERY, KILL, RESUMED_AT = 8, 3, 11, 9


def run_overrides(shards, model=()):
    return [f"data.train_shards={shards}", "data.val_shards=null", "data.caption_fields={txt: 1.0}",
            "data.group_key=null", "data.batch_size=4", "data.num_workers=2",
            "data.shuffle_buffer=8", "data.resampled=true", f"data.samples_per_epoch={4 * EPOCH}",
            "trainer.max_epochs=2", "trainer.log_every_n_steps=1", f"trainer.checkpoint_every_n_steps={EVERY}",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "optim.warmup_steps=4",
            "probes.suites={}", "synth.auto=false", "wandb.mode=disabled", "name=tiny", *model]


def killed_run(forks, cwd, record, kill_at, overrides) -> None:
    """The run in a process of its own, which must die by SIGKILL as step `kill_at` begins: resume_script.py forked
    from the session's warm interpreter (which runs no threads: forked from this one, with Lightning's, it could
    deadlock on a lock one of them held), with this process's torch threads: the runs here must sum alike (Adam
    turns a near-zero gradient's rounding into a whole step)."""
    job = {"cwd": str(cwd), "script": SCRIPT, "argv": [str(record), str(kill_at), *overrides],
           "threads": torch.get_num_threads(), "out": os.devnull, "err": str(record) + ".err"}
    code = forks.run([job], 1, timeout=240)[0][0]
    assert code == -signal.SIGKILL, open(job["err"]).read()[-3000:]


def recorded_run(cwd, record, overrides, restore_random_state=True):
    """The run in this process (imports already paid for), its steps recorded as the script records them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(CompClip, "training_step", recording(str(record), kill_at=-1))
        if not restore_random_state:  # the control: a resume that forgets the generators
            patch.setattr(RandomState, "load_state_dict", lambda self, state: None)
        assert main(["train", *overrides]) == 0


def steps(record):
    return {row["step"]: row for row in map(json.loads, open(record))}


@pytest.fixture(scope="module", params=sorted(MODELS))
def killed_and_resumed(request, forks, tmp_path_factory):
    """A reference run, the same run killed at step KILL, its resumption with resume=last here, and (from a copy of
    the killed run's folder) a resumption that does not restore the random state."""
    root = tmp_path_factory.mktemp(f"resume_{request.param}")
    shards = write_shards(root / "shards", 3, 10)
    common = run_overrides(shards, MODELS[request.param])
    recorded_run(root, root / "reference.jsonl", common + [f"run_dir={root}/reference"])
    killed_run(forks, root, root / "killed.jsonl", KILL, common)  # in runs/tiny
    shutil.copytree(root / "runs" / "tiny", root / "forgetful")
    recorded_run(root, root / "resumed.jsonl", common + ["resume=last"])
    recorded_run(root, root / "forgetful.jsonl", common + [f"resume={root}/forgetful/checkpoints/last.ckpt"],
                 restore_random_state=False)
    return root


def final_weights(run_dir) -> dict:
    from lit_compclip.checkpoints import read_checkpoint_file  # the project's safe reader

    return read_checkpoint_file(os.path.join(run_dir, "checkpoints", "last.ckpt"))["state_dict"]


def test_resumed_run_continues_exactly_where_the_checkpoint_left_off(killed_and_resumed):
    root = killed_and_resumed
    reference, killed, resumed = (steps(root / f"{name}.jsonl") for name in ("reference", "killed", "resumed"))
    assert sorted(killed) == list(range(KILL))
    assert sorted(resumed) == list(range(RESUMED_AT, 2 * EPOCH))  # restarted at the last checkpoint's step
    first = resumed[RESUMED_AT]
    assert first["epoch"] == reference[RESUMED_AT]["epoch"] == 1
    assert first["lr"] == pytest.approx(reference[RESUMED_AT]["lr"], rel=1e-12)
    assert_close_by_norm(first["log_logit_scale"], reference[RESUMED_AT]["log_logit_scale"], RTOL, "logit scale")
    assert first["log_logit_scale"] != reference[0]["log_logit_scale"]  # trained, so a fresh start would differ
    for step in range(RESUMED_AT, 2 * EPOCH):  # the very batches the uninterrupted run saw, in its order
        assert resumed[step]["keys"] == reference[step]["keys"], step
    assert [killed[s]["keys"] for s in range(KILL)] == [reference[s]["keys"] for s in range(KILL)]
    # and the same training: optimizer moments, schedule, augmentations and dropout masks continued, not restarted
    later = range(RESUMED_AT, 2 * EPOCH)
    assert_close_by_norm(torch.tensor([resumed[s]["loss"] for s in later]),
                         torch.tensor([reference[s]["loss"] for s in later]), RTOL, "losses after the resume")
    assert resumed[2 * EPOCH - 1]["lr"] == pytest.approx(reference[2 * EPOCH - 1]["lr"], rel=1e-12)
    assert_same_tensors(final_weights(root / "runs" / "tiny"), final_weights(root / "reference"), RTOL,
                        "final weight", floor=1e-2)


def test_a_resume_that_forgets_the_random_state_trains_otherwise(killed_and_resumed):
    """The control that shows the test above can fail: dropout really runs in the main process, so without the
    restored generators the same batches give other losses and other weights."""
    root = killed_and_resumed
    reference, forgetful = steps(root / "reference.jsonl"), steps(root / "forgetful.jsonl")
    later = range(RESUMED_AT, 2 * EPOCH)
    assert [forgetful[s]["keys"] for s in later] == [reference[s]["keys"] for s in later]  # the data still continues
    assert not close_by_norm(torch.tensor([forgetful[s]["loss"] for s in later]),
                             torch.tensor([reference[s]["loss"] for s in later]), RTOL)
    weights, want = final_weights(root / "forgetful"), final_weights(root / "reference")
    assert not all(close_by_norm(weights[n], want[n], RTOL) for n in want if n.startswith("model.text.st."))


def test_resumed_run_appends_to_its_own_folder(killed_and_resumed):
    runs = killed_and_resumed / "runs"
    assert sorted(os.listdir(runs)) == ["tiny"]  # no runs/tiny-2
    run = runs / "tiny"
    assert (run / "config.yaml").is_file() and (run / "config.resume.yaml").is_file()
    with open(run / "metrics.csv") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    # steps before the checkpoint come from the killed process, later ones once, from the resumed one
    assert logged == list(range(2 * EPOCH))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == 2 * EPOCH


# ---------------------------------------------------------------- the stream loader's position


@pytest.mark.parametrize("batches, workers", [(0, 1), (5, 1), (5, 2), (6, 2), (7, 3), (9, 3)])
def test_fast_forward_shares_continue_the_round_robin(batches, workers):
    total = batches + 3 * workers
    streams = []  # what each resumed worker hands out: its padding, then its batches (global numbers) after the skip
    for w in range(workers):
        skip, pad = fast_forward_share(batches, w, workers)
        streams.append(["pad"] * pad + [i for i in range(total) if i % workers == w][skip:])
    served = [s[n] for n in range(3) for s in streams if n < len(s)]  # the loader asks workers 0, 1, ... in turn
    assert [b for b in served if b != "pad"] == list(range(batches, batches + len(served) - served.count("pad")))


@pytest.mark.parametrize("resampled, workers", [(True, 0), (True, 2), (False, 0), (False, 2)])
def test_restored_loader_continues_with_the_same_batches_and_images(tmp_path, resampled, workers):
    folder = write_shards(tmp_path / "d", 3, 10)
    options = dict(samples_per_epoch=40, resampled=resampled, shard_shuffle=not resampled, num_workers=workers,
                   train_transform=tfm_augment())

    def epochs(state=None, n=2):
        loader = make_dm(folder, **options).train_dataloader()
        if state:
            loader.load_state_dict(state)
        return [[(b["key"], b["image"]) for b in loader] for _ in range(n)]

    reference = epochs()
    got = epochs({"epoch": 1, "batches": 3, "complete": False}, n=1)[0]
    assert [k for k, _ in got] == [k for k, _ in reference[1][3:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, reference[1][3:]))  # same augmentation too
    finished = epochs({"epoch": 0, "batches": 10, "complete": False}, n=1)[0]  # a whole epoch: the next one starts
    assert [k for k, _ in finished] == [k for k, _ in reference[1]]


def tfm_augment():
    from torchvision import transforms

    return transforms.Compose([transforms.RandomResizedCrop(12, scale=(0.3, 1.0)), transforms.ToTensor()])


class _KeyModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen = {}

    def training_step(self, batch, batch_idx):
        self.seen[self.global_step] = batch["key"]
        return self.layer(batch["image"].mean(dim=(2, 3))).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_stream_of_unknown_length_resumes_mid_epoch_under_lightning(tmp_path):
    """Without a fixed epoch Lightning fetches one batch ahead; the checkpointed position must not count it."""
    folder = write_shards(tmp_path / "d", 2, 12)  # 24 samples = 6 batches per epoch

    def fit(folder_name, ckpt=None):
        model = _KeyModule()
        checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / folder_name, every_n_train_steps=4,
                                                                 save_top_k=-1, filename="{step}")
        trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, callbacks=[checkpoint], default_root_dir=tmp_path)
        trainer.fit(model, datamodule=make_dm(folder, num_workers=1), ckpt_path=ckpt)
        return model.seen

    reference = fit("reference")
    assert sorted(reference) == list(range(12))
    resumed = fit("resumed", ckpt=tmp_path / "reference" / "step=4.ckpt")
    assert sorted(resumed) == list(range(4, 12))
    assert all(resumed[s] == reference[s] for s in resumed)


# ---------------------------------------------------------------- the resume key


def test_resume_errors_are_one_line_and_come_before_the_run_folder(killed_and_resumed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the scratch text tower: these are the resume key's errors (the MiniLM towers' loading is test_cli_errors')
    common = run_overrides(killed_and_resumed / "shards", TINY) + [f"run_dir={tmp_path}/new"]
    corrupt, weights_only = tmp_path / "corrupt.ckpt", tmp_path / "weights.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, weights_only)
    last = killed_and_resumed / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    cases = [(["resume=nowhere.ckpt"], "checkpoint 'nowhere.ckpt' not found"),
             ([f"resume={corrupt}"], "cannot be read"),
             ([f"resume={weights_only}"], "use init_from"),
             ([f"resume={last}", "model.embed_dim=24"], "does not fit the configured model"),
             (["resume=last", f"run_dir={tmp_path}/empty"], "no checkpoint at"),
             (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps")]
    for extra, message in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["train", *common, *extra]) == 2, extra
        assert len(err.getvalue().strip().splitlines()) == 1 and message in err.getvalue(), err.getvalue()
    assert not (tmp_path / "new").exists() and not (tmp_path / "empty").exists()


def test_resume_auto_starts_fresh_without_a_checkpoint_and_last_finds_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resume_point(load_config([DEFAULT], ["resume=auto", "name=job"]), launched_rank=False) is None
    for folder, age in (("runs/job", 100), ("runs/job-2", 50), ("runs/job-x", 0)):
        os.makedirs(f"{folder}/checkpoints")
        open(f"{folder}/config.yaml", "w").close()
        torch.save({"state_dict": {}, "hyper_parameters": {}, "loops": {}, "optimizer_states": [],
                    "global_step": 7}, f"{folder}/checkpoints/last.ckpt")
        os.utime(f"{folder}/checkpoints/last.ckpt", (1e9 - age, 1e9 - age))
    found = resume_point(load_config([DEFAULT], ["resume=last", "name=job"]), launched_rank=False)
    assert (found.path, found.run_dir, found.global_step) == ("runs/job-2/checkpoints/last.ckpt", "runs/job-2", 7)
    explicit = resume_point(load_config([DEFAULT], ["resume=runs/job/checkpoints/last.ckpt", "name=job"]), False)
    assert explicit.run_dir == "runs/job"


def test_wandb_id_is_read_from_the_run_folder(tmp_path):
    assert wandb_id(str(tmp_path)) is None
    os.makedirs(tmp_path / "wandb" / "offline-run-20261127_083000-abc123")
    assert wandb_id(str(tmp_path)) == "abc123"


def test_config_rejects_a_blank_resume():
    with pytest.raises(ConfigError, match="resume"):
        load_config([DEFAULT], ["resume=' '"])


def test_probe_history_and_data_counts_travel_in_the_checkpoint():
    from lit_compclip.training.callbacks import ProbeCallback

    probes = ProbeCallback({})
    probes.history = [{"epoch": 1, "step": 8, "metrics": {"probe/aro/vg_relation": 0.5}}]
    restored = ProbeCallback({})
    restored.load_state_dict(probes.state_dict())
    assert restored.history == probes.history  # so probes_history.json keeps the epochs before the kill

    model_options = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
                     "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2},
                     "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
    optim = {"lr": 1e-3, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6,
             "warmup_steps": 0, "min_lr_ratio": 0.0}
    model = CompClip(model_options, optim, total_steps=4)
    model.no_negative = 3
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    RunSkips().save(checkpoint, {"bad_json": 5, "no_caption": 2})
    fresh, skips = CompClip(model_options, optim, total_steps=4), RunSkips()
    fresh.on_load_checkpoint(checkpoint)
    skips.load(checkpoint)
    skips.start()
    skips.count({"skipped": {"bad_json": 1}}, Counter())
    # data/skipped goes on counting from the checkpoint's total, not from 0
    assert fresh.no_negative == 3 and skips.train("cpu") == {"bad_json": 6, "no_caption": 2}
