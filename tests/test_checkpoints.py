"""Checkpoints are read so that nothing in them runs: a malicious file is refused with one line on every path (probe,
init_from, resume, Lightning's own restore, sharded FSDP folders), and the project's own checkpoints still load."""

import os
import pickle
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from lit_compclip.checkpoints import SAFE_GLOBALS, check_sharded, read_checkpoint_file, read_training_checkpoint
from lit_compclip.config import ConfigError, load_config
from lit_compclip.factory import load
from lit_compclip.training.module import CompClip
from lit_compclip.training.run import init_weights, train
from helpers import DEFAULT, TINY_MODEL, TINY_TEXT, RunsCode, malicious, world_overrides, write_shards

TINY_RUN = [*TINY_MODEL, TINY_TEXT, "data.val_shards=null", "data.caption_fields={txt: 1.0}", "data.later_caption_fields=null",
            "data.group_key=null",
            "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "probes.suites={}", "synth.auto=false", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), 2, 8)  # 4 batches an epoch: checkpoints mid-epoch


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """A checkpoint `compclip train` wrote (2 steps of a tiny model): loops, optimizer, callbacks' state."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_config([DEFAULT], TINY_RUN + [f"data.train_shards={shards}", "trainer.max_steps=2", f"run_dir={run}"]))
    return run / "checkpoints" / "last.ckpt"


def test_the_malicious_file_runs_code_when_read_unsafely(tmp_path):
    marker = tmp_path / "MARKER"
    torch.load(malicious(tmp_path / "bad.ckpt", marker), weights_only=False)
    assert marker.exists()  # so its absence below means the readers ran nothing


@pytest.fixture(scope="module")
def cli_runs(shards, forks, tmp_path_factory):
    """The malicious checkpoint through the three CLI paths, each a process of its own (forked from the session's
    warm interpreter, run side by side): {path: (exit status, stdout, stderr, its folder, the marker, the file)}."""
    jobs, folders = [], {}
    for name in ("probe", "init_from", "resume"):
        folder = tmp_path_factory.mktemp(name)
        marker = folder / "MARKER"
        bad = malicious(folder / "bad.ckpt", marker)
        run = [*TINY_RUN, f"data.train_shards={shards}", "trainer.max_steps=1", f"run_dir={folder}/run"]
        args = {"probe": ["probe", "--ckpt", bad, DEFAULT, *world_overrides(folder / "world"), "synth.auto=true"],
                "init_from": ["train", *run, f"init_from={bad}"],
                "resume": ["train", *run, f"resume={bad}"]}[name]
        logs = tmp_path_factory.mktemp(f"{name}_logs")  # outside the folder, which must hold nothing new
        jobs.append({"cwd": str(folder), "argv": args, "out": str(logs / "out"), "err": str(logs / "err")})
        folders[name] = (folder, marker, bad)
    codes = forks.run(jobs, parallel=3, timeout=300)[0]
    return {name: (code, open(job["out"]).read(), open(job["err"]).read(), *folders[name])
            for name, code, job in zip(folders, codes, jobs)}


def args_of(path: str) -> str:
    return "probe" if path == "probe" else "train"


@pytest.mark.parametrize("path", ["probe", "init_from", "resume"])
def test_a_malicious_checkpoint_runs_nothing_and_is_refused_with_one_line(cli_runs, path):
    code, out, err, folder, marker, bad = cli_runs[path]
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compclip {args_of(path)}: error:"), err[-2000:]
    assert bad in lines[0] and "posix.system" in lines[0] and "Traceback" not in err
    assert not marker.exists()
    assert not (folder / "run").exists() and not (folder / "runs").exists()  # no run folder left behind
    assert not (folder / "world").exists()  # probe: refused before the synthetic world is built


@pytest.mark.parametrize("zip_format", [True, False])  # torch's format, and its old one (which it cannot map)
def test_readers_refuse_the_malicious_file_naming_it_and_the_global(tmp_path, zip_format):
    marker = tmp_path / "MARKER"
    bad = malicious(tmp_path / "bad.ckpt", marker, zip_format=zip_format)
    torch.load(bad, weights_only=False)
    assert marker.exists()  # it does run code when read unsafely
    marker.unlink()
    for read in (read_checkpoint_file, load, read_training_checkpoint):
        with pytest.raises(ConfigError) as e:
            read(bad)
        assert bad in str(e.value) and "posix.system" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_only_our_safe_globals_are_allowed_whatever_libraries_added(tmp_path):
    import torch.distributed  # noqa: F401 (adds every exception class to torch's process-wide safe list)

    path = tmp_path / "exception.ckpt"
    torch.save({"state_dict": {}, "error": ValueError("x")}, path)
    before = torch.serialization.get_safe_globals()
    assert ValueError in before and not SAFE_GLOBALS
    torch.load(path, weights_only=True)  # torch alone would read it
    with pytest.raises(ConfigError, match="the global ValueError"):
        read_checkpoint_file(str(path))
    # the process-wide list is put back; torch keeps it as a set, so its order is the interpreter's hash order
    assert set(torch.serialization.get_safe_globals()) == set(before)


def test_the_projects_training_checkpoint_loads_on_every_path(trained, shards, tmp_path):
    checkpoint = read_training_checkpoint(str(trained))  # resume's check
    assert checkpoint["global_step"] == 2 and isinstance(checkpoint["callbacks"]["RandomState"]["torch"], torch.Tensor)
    model = load(str(trained))  # lit_compclip.load, probe --ckpt, explore
    cfg = load_config([DEFAULT], TINY_RUN)
    fresh = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    init_weights(fresh, str(trained))  # init_from
    assert all(name.startswith("model.") for name in checkpoint["state_dict"])
    for name, weight in checkpoint["state_dict"].items():
        want = weight.double()
        for got in (model.state_dict()[name.removeprefix("model.")], fresh.state_dict()[name]):
            assert (got.double() - want).norm() <= 1e-12 * max(want.norm(), 1e-30), name
    # resume=: Lightning restores it (weights_only=True) and goes on counting
    run = tmp_path / "resumed"
    result = train(load_config([DEFAULT], TINY_RUN + [f"data.train_shards={shards}", "trainer.max_steps=3",
                                                f"resume={trained}", f"run_dir={run}"]))
    last = read_training_checkpoint(os.path.join(result["run_dir"], "checkpoints", "last.ckpt"))
    assert last["global_step"] == 3


def test_a_checkpoint_of_a_pretrained_image_tower_loads_without_the_hub(tmp_path):
    """Its weights are in the file: probe --ckpt and init_from must not fetch the pretrained ones first (the suite is
    offline, so a hub lookup fails here)."""
    cfg = load_config([DEFAULT], TINY_RUN + ["model.image.stem=patch"])
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    hp = dict(model.hparams)
    hp["model"] = {**hp["model"], "image": {**hp["model"]["image"], "pretrained": True}}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp}, tmp_path / "pretrained.ckpt")
    loaded = load(str(tmp_path / "pretrained.ckpt"))
    for name, weight in model.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name


def test_tiny_checkpoint_fixture_loads_safely(tiny_checkpoint):
    assert read_checkpoint_file(str(tiny_checkpoint))["global_step"] == 50
    assert not load(str(tiny_checkpoint)).training


def test_lightnings_own_restore_unpickles_nothing(trained, shards, tmp_path, monkeypatch):
    """Past our check (a file swapped after it, say), Lightning's restore in trainer.fit still reads with
    weights_only=True, even where the environment asks torch for weights_only=False."""
    import lit_compclip.training.resume

    marker = tmp_path / "MARKER"
    good = read_training_checkpoint(str(trained))
    bad = malicious(tmp_path / "bad.ckpt", marker, base=dict(good))
    monkeypatch.setattr(lit_compclip.training.resume, "read_checkpoint", lambda path: good)  # our check passes it
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cfg = load_config([DEFAULT], TINY_RUN + [f"data.train_shards={shards}", "trainer.max_steps=3", f"resume={bad}",
                                      f"run_dir={tmp_path}/run"])
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        train(cfg)
    assert not marker.exists()


# ---- sharded FSDP checkpoints (folders of torch.distributed.checkpoint): written here on the CPU, as Lightning does

def sharded(folder, trained, optimizer_extra=None, meta_extra=None):
    """A sharded checkpoint folder as Lightning's FSDPStrategy writes it: .metadata and .distcp files of the weights
    and optimizer states (torch.distributed.checkpoint), meta.pt of the rest."""
    import torch.distributed.checkpoint as dcp

    checkpoint = dict(read_training_checkpoint(str(trained)))
    state = {"model": {k: v.clone() for k, v in checkpoint.pop("state_dict").items()}}
    for i, optim in enumerate(checkpoint.pop("optimizer_states")):
        state[f"optimizer_{i}"] = {**optim, **(optimizer_extra or {})}
    with warnings.catch_warnings():  # no process group: torch warns that it saves as one process
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder))
    torch.save({**checkpoint, **(meta_extra or {})}, folder / "meta.pt")
    return str(folder)


def test_a_sharded_checkpoint_is_checked_pickle_by_pickle(trained, tmp_path):
    marker = tmp_path / "MARKER"
    check_sharded(sharded(tmp_path / "good", trained))  # the project's own: every pickle in it plain

    entry = sharded(tmp_path / "entry", trained, optimizer_extra={"extra": RunsCode(marker)})  # in a .distcp file
    meta = sharded(tmp_path / "meta", trained, meta_extra={"payload": RunsCode(marker)})  # in meta.pt
    metadata = sharded(tmp_path / "metadata", trained)
    with open(os.path.join(metadata, ".metadata"), "wb") as f:  # the pickle torch reads with plain pickle.load
        pickle.dump(RunsCode(marker), f)
    for folder, named in ((entry, ".distcp"), (meta, "meta.pt"), (metadata, ".metadata")):
        with pytest.raises(ConfigError, match="posix.system") as e:
            check_sharded(folder)
        assert named in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    cfg = load_config([DEFAULT], TINY_RUN + [f"resume={entry}"])
    from lit_compclip.training.resume import resume_point

    with pytest.raises(ConfigError, match="resume: .*posix.system"):
        resume_point(cfg, launched_rank=False)
    assert not marker.exists()
