"""The library without the trainer: lit_compclip.load() gives a trained model, lit_compclip.create_model() a fresh one,
each a plain nn.Module that encodes images and captions with neither Lightning, W&B nor the synthetic world imported
and nothing written in the working folder."""

import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys
from dataclasses import asdict

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from helpers import DEFAULT, assert_close_by_norm, one_line_error
from lit_compclip.config import ConfigError, load_config
from lit_compclip.training.module import CompClip

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The default experiment, smaller: MiniLM (one trained layer) with the text cache the config names, relative to the
# folder the run starts in (data/cache/text), as every default run's checkpoint records it.
SMALL = ["model.image.img_size=16", "model.image.depth=1", "model.image.width=32", "model.image.heads=2",
         "model.embed_dim=16", "model.text.unfreeze_layers=1", "model.text.max_seq_len=16"]
CAPTIONS = ["a red cube", "The blue circle is left of the green square.", "A white star above a yellow cross."]


class Once(IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        yield self.batch


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding checkpoints/last.ckpt as Lightning writes it after one training step, trained in a folder
    of its own (its text cache went to that folder's data/cache/text)."""
    started_in = tmp_path_factory.mktemp("started_in")
    cfg = load_config([DEFAULT], SMALL)
    assert cfg.model.text.cache_dir == "data/cache/text"
    with contextlib.chdir(started_in):
        torch.manual_seed(0)
        model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
        batch = {"image": torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
                 "caption": CAPTIONS + ["A green triangle."]}
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, DataLoader(Once(batch), batch_size=None))
        folder = tmp_path_factory.mktemp("run")
        trainer.save_checkpoint(folder / "checkpoints" / "last.ckpt")
    assert (started_in / "data" / "cache" / "text").is_dir()  # training used its cache, where the config said
    return folder


def red_square() -> Image.Image:
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    image.paste((220, 30, 30), (5, 5, 20, 20))
    return image


# Run in a fresh interpreter: prints what the library gave and which modules it imported.
SCRIPT = """
import json, sys, torch
from PIL import Image
import lit_compclip
m = lit_compclip.load(sys.argv[1])
image = Image.new("RGB", (40, 30), (128, 128, 128))
image.paste((220, 30, 30), (5, 5, 20, 20))
with torch.no_grad():
    text = m.encode_text(json.loads(sys.argv[2]))
    images = m.encode_image(m.transform(image)[None])
print(json.dumps({"type": type(m).__name__, "module": isinstance(m, torch.nn.Module), "training": m.training,
                  "text": text.tolist(), "image": images.tolist(), "scale": float(m.logit_scale),
                  "tokens": list(m.tokenize(["a red cube"])["input_ids"].shape),
                  "imported": sorted(k for k in sys.modules if k.split(".")[0] in ("lightning", "pytorch_lightning",
                                                                                   "wandb", "omegaconf")
                                     or k.startswith(("lit_compclip.synth", "lit_compclip.training",
                                                      "lit_compclip.config")))}))
"""


def test_a_checkpoint_loads_and_encodes_in_a_fresh_interpreter_without_the_trainer_writing_nothing(run, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(run / "checkpoints" / "last.ckpt"), json.dumps(CAPTIONS)],
                          cwd=fresh, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["imported"] == []
    assert (got["type"], got["module"], got["training"]) == ("CompClipModel", True, False)
    text, image = torch.tensor(got["text"]), torch.tensor(got["image"])
    assert text.shape == (3, 16) and image.shape == (1, 16) and got["tokens"][0] == 1
    assert torch.allclose(text.norm(dim=-1), torch.ones(3)) and torch.allclose(image.norm(dim=-1), torch.ones(1))
    assert 0 < got["scale"] <= 100
    assert sorted(os.listdir(fresh)) == []  # no text cache (the run's data/cache/text), no file of any kind


def test_the_loaded_model_encodes_as_the_lightning_module_does(run):
    import lit_compclip

    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    hp = checkpoint["hyper_parameters"]
    # the module as training holds it, with these weights; the text cache off in both (a float16 cache rounds)
    reference = CompClip({**hp["model"], "text": {**hp["model"]["text"], "cache_dir": None}}, hp["optim"])
    reference.load_state_dict(checkpoint["state_dict"])
    reference.eval()
    loaded = lit_compclip.load(str(path))
    assert loaded.state_dict().keys() == {n.removeprefix("model.") for n in checkpoint["state_dict"]}
    images = torch.stack([loaded.transform(red_square()), loaded.transform(red_square().rotate(90))])
    with torch.no_grad():
        for got, want in ((loaded.encode_text(CAPTIONS), reference.model.encode_text(CAPTIONS)),
                          (loaded.encode_image(images), reference.model.encode_image(images)),
                          (loaded.logit_scale, reference.logit_scale)):
            assert_close_by_norm(got, want, 1e-6)
        fresh = CompClip({**hp["model"], "text": {**hp["model"]["text"], "cache_dir": None}}, hp["optim"]).eval()
        assert (fresh.model.encode_text(CAPTIONS) - reference.model.encode_text(CAPTIONS)).norm() > 1e-3  # it can fail
    image_emb, text_emb, scale = loaded(images, CAPTIONS)  # forward, as open_clip's CLIP returns them
    assert image_emb.shape == (2, 16) and text_emb.shape == (3, 16) and scale.ndim == 0


def test_a_run_folder_loads_its_last_checkpoint_and_a_cache_only_where_asked(run, tmp_path):
    import lit_compclip

    by_file = lit_compclip.load(str(run / "checkpoints" / "last.ckpt")).state_dict()
    by_folder = lit_compclip.load(str(run)).state_dict()
    assert by_file.keys() == by_folder.keys() and all(torch.equal(by_file[k], by_folder[k]) for k in by_file)
    cached = lit_compclip.load(str(run), cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        cached.encode_text(CAPTIONS)
    assert cached.text.cache_stats()["misses"] == len(CAPTIONS) and (tmp_path / "cache").is_dir()
    with pytest.raises(ConfigError) as e:
        lit_compclip.load(str(tmp_path))  # a folder with no checkpoints/last.ckpt
    one_line_error(e, str(tmp_path), "checkpoints/last.ckpt")


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_with_one_line(run, tmp_path):
    import lit_compclip
    from helpers import malicious

    marker = tmp_path / "MARKER"
    good = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    bad = malicious(tmp_path / "bad.ckpt", marker, base={"state_dict": good["state_dict"],
                                                          "hyper_parameters": good["hyper_parameters"]})
    with pytest.raises(ConfigError) as e:
        lit_compclip.load(bad)
    one_line_error(e, bad, "posix.system")
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_one_line_naming_the_file(run, tmp_path):
    import lit_compclip

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}  # not the module's names
    torch.save({**checkpoint, "state_dict": weights}, tmp_path / "other.ckpt")
    hp = checkpoint["hyper_parameters"]
    wider = {**hp, "model": {**hp["model"], "embed_dim": 32}}
    torch.save({**checkpoint, "hyper_parameters": wider}, tmp_path / "wider.ckpt")
    for name, message in (("other", "is not under 'model.'"), ("wider", "does not match this version's model")):
        with pytest.raises(ConfigError) as e:
            lit_compclip.load(str(tmp_path / f"{name}.ckpt"))
        one_line_error(e, str(tmp_path / f"{name}.ckpt"), message)


def test_create_model_builds_the_default_experiments_model_with_no_arguments():
    import lit_compclip
    from lit_compclip.config.schema import ModelConfig
    from lit_compclip.factory import DEFAULT_MODEL
    from lit_compclip.model import LOSS_KEYS

    schema = asdict(ModelConfig())
    schema["text"]["cache_dir"] = None  # the schema's "${cache_dir}/text" is the trainer's to fill in
    assert DEFAULT_MODEL == {k: v for k, v in schema.items() if k not in LOSS_KEYS}
    cfg = load_config([DEFAULT], [])
    torch.manual_seed(0)
    trained_by_default = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    torch.manual_seed(0)
    model = lit_compclip.create_model()
    assert isinstance(model, lit_compclip.CompClipModel) and model.training
    assert model.text.cache_options is None and trained_by_default.model.text.cache_options  # off unless asked
    want = trained_by_default.model.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert model.logit_scale.item() == pytest.approx(1 / 0.07) and model.length_groups == 2


def test_create_model_takes_a_config_section_and_options():
    import lit_compclip

    scratch = {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}
    model = lit_compclip.create_model({"embed_dim": 8, "local_loss": False}, image={"img_size": 16, "depth": 1,
                                                                                   "width": 32, "heads": 2},
                                      text=scratch, init_logit_scale=math.log(10.0))
    assert type(model.text).__name__ == "ScratchTextTower"  # another tower: the default's options are dropped
    assert model.encode_image(torch.zeros(1, 3, 16, 16)).shape == model.encode_text(["a red cube"]).shape == (1, 8)
    assert model.logit_scale.item() == pytest.approx(10.0)
    with pytest.raises(ConfigError) as e:
        lit_compclip.create_model(embed_dimension=8)
    one_line_error(e, "create_model", "embed_dimension")
