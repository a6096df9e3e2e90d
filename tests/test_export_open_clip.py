"""The open_clip export: a stock timm ViT at its own size with MiniLM is written in open_clip's hub layout, which
open_clip alone builds in a fresh process into the same normalised embeddings, and which `compclip probe --encoder
open_clip:local-dir:OUT` scores example by example as `--ckpt` scores the checkpoint; what open_clip cannot hold (the
conv stem, a scratch or decoder text tower) is refused with one line, before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import VIT_IMAGE, assert_close_by_norm, assert_same_records, one_line_error, probe_records
from lit_compclip.cli import main
from lit_compclip.errors import ConfigError
from lit_compclip.export import export_model
from lit_compclip.export import open_clip as M

CAPTIONS = ["a red square left of a blue circle", "A blue circle, above: a red square!", "approx. 3 cm, e.g. a dot",
            " ".join(["a green triangle next to a yellow star"] * 12),  # past the 64-token context: cut the same way
            "Tom & Jerry"]


@pytest.fixture(scope="module")
def model(vit_checkpoint):
    import lit_compclip

    return lit_compclip.load(str(vit_checkpoint))


@pytest.fixture(scope="module")
def exported(vit_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "open_clip"
    result = export_model(str(vit_checkpoint), str(out), "open_clip")  # loaded back and compared as it is written
    assert result["image_error"] <= M.TOLERANCE and result["text_error"] <= M.TOLERANCE
    return out


# Run with open_clip alone, in an empty folder: its embeddings of the images and captions, and what it imported.
SCRIPT = """
import json, sys, torch, open_clip
from PIL import Image
folder, images, texts, result = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
model.eval()  # open_clip builds it in training mode (dropout on)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
with torch.no_grad():
    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    image = model.encode_image(x, normalize=True)
    text = model.encode_text(tokenizer(texts), normalize=True)
torch.save({"image": image, "text": text, "pixels": x, "tokenizer": type(tokenizer).__name__,
            "ours": sorted(k for k in sys.modules if k.split(".")[0] == "lit_compclip")}, result)
"""


def test_open_clip_alone_loads_the_export_and_gives_our_embeddings(model, exported, world, tmp_path):
    paths = sorted((Path(world) / "probes" / "winoground" / "images").glob("*"))[:3]
    wide = tmp_path / "wide.png"  # not square: resized by its short side and centre-cropped by both
    Image.fromarray(torch.randint(0, 256, (200, 300, 3), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy()).save(wide)
    paths.append(wide)
    texts = CAPTIONS + ["Tom &amp; Jerry"]  # open_clip's tokenizer unescapes HTML: the model card says so
    fresh, result = tmp_path / "fresh", tmp_path / "result.pt"
    fresh.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(exported), json.dumps([str(p) for p in paths]),
                           json.dumps(texts), str(result)], cwd=fresh, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(result)
    assert got["ours"] == [] and got["tokenizer"] == "HFTokenizer"
    assert os.listdir(fresh) == []

    with torch.no_grad():
        pixels = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths])
        image, text = model.encode_image(pixels), model.encode_text(CAPTIONS + ["Tom & Jerry"])
    assert torch.equal(got["pixels"], pixels)  # open_clip's preprocess is our eval transform exactly
    for i in range(len(paths)):
        assert_close_by_norm(got["image"][i], image[i], M.TOLERANCE, f"image {i}")
    for i, caption in enumerate(texts):
        assert_close_by_norm(got["text"][i], text[i], M.TOLERANCE, caption)
    assert float(image[0] @ image[1]) < 1 - 1e-3 and float(text[0] @ text[1]) < 1 - 1e-3  # rows that differ
    config = json.loads((exported / M.CONFIG).read_text())
    assert config["model_cfg"]["vision_cfg"]["timm_model_name"] == "vit_tiny_patch16_224"
    assert config["model_cfg"]["text_cfg"]["hf_pooler_type"] == "mean_pooler"
    assert config["preprocess_cfg"] == {"size": 224, "mode": "RGB", "mean": [0.5] * 3, "std": [0.5] * 3,
                                        "interpolation": "bicubic", "resize_mode": "shortest"}
    assert "ftfy" in (exported / "README.md").read_text()  # the model card tells which captions differ


HUB = "sentence-transformers/all-MiniLM-L6-v2"


def test_a_hub_id_for_publishing_is_written_and_checked_with_the_folders_own_config(model, tmp_path):
    from lit_compclip.export import ModelEncoder, compare

    M.check(model, {"hf_model_name": HUB})  # not in this machine's Hugging Face cache: left to the hub
    notes = M.write(model, str(tmp_path), {}, {"hf_model_name": HUB})
    text_cfg = json.loads((tmp_path / M.CONFIG).read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == HUB
    assert any(HUB in note and "config.json" in note for note in notes)
    loaded = M.load_back(str(tmp_path))
    assert loaded.encoder.info["hf_config"] == str(tmp_path / "config.json")
    compare(loaded, ModelEncoder(model), M.TOLERANCE, "open_clip")


def test_an_hf_model_name_of_another_architecture_is_refused(model, random_lm):
    with pytest.raises(ConfigError) as e:
        M.check(model, {"hf_model_name": random_lm("qwen2")})
    one_line_error(e, "open_clip export: hf_model_name", "is not this text tower's architecture (model_type")


def test_probes_score_the_export_example_by_example_as_the_checkpoint(vit_checkpoint, exported, world, tmp_path):
    ours = probe_records(world, tmp_path / "ckpt", ["--ckpt", str(vit_checkpoint)])
    theirs = probe_records(world, tmp_path / "export", ["--encoder", f"open_clip:local-dir:{exported}"])
    assert_same_records(ours, theirs)


def test_the_default_models_conv_stem_is_refused_with_one_line_and_nothing_written(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError) as e:
        export_model(str(tiny_checkpoint), str(tmp_path / "out"), "open_clip")
    one_line_error(e, "open_clip export", "conv stem", "model.image.stem=patch")
    assert os.listdir(tmp_path) == []


def test_a_size_override_is_refused_naming_it():
    import lit_compclip

    model = lit_compclip.create_model(embed_dim=16, image={**VIT_IMAGE, "heads": 4}, text={"tower": "scratch"})
    with pytest.raises(ConfigError) as e:
        M._check_image(model.image)
    one_line_error(e, "timm's own size", "(blocks.0.attn.", "vit_tiny_patch16_224")


@pytest.mark.parametrize("tower", ["scratch", "decoder"])
def test_a_scratch_or_decoder_text_tower_is_refused_with_one_line(tower, random_lm):
    import lit_compclip

    text = {"tower": "scratch", "width": 32, "layers": 1, "heads": 2} if tower == "scratch" else \
        {"tower": "sentence_transformers", "model": random_lm("qwen2", sentence_transformers=True)}
    model = lit_compclip.create_model(embed_dim=16, image=VIT_IMAGE, text=text)
    with pytest.raises(ConfigError) as e:
        M.check(model, {})
    one_line_error(e, "open_clip export", "scratch text tower" if tower == "scratch" else "decoder language model")


@pytest.mark.parametrize("target, message", [
    ("local-dir:/no/such/folder", "folder '/no/such/folder' not found"),
    ("/no/such/folder", "folder '/no/such/folder' not found"),
    ("EMPTY", "holds no open_clip_config.json"),
    ("local-dir:EMPTY", "holds no open_clip_config.json"),
])
def test_probe_encoder_of_a_bad_folder_is_one_line_exit_2(target, message, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = "open_clip:" + target.replace("EMPTY", str(empty))
    assert main(["probe", "--encoder", spec, "--probe", "winoground", f"examples={tmp_path}/x.jsonl",
                 f"images={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
