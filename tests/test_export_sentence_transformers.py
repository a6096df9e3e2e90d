"""The sentence-transformers export (issue 36): `SentenceTransformer(OUT, trust_remote_code=True).encode` takes captions
and images and gives the checkpoint's embeddings in a fresh process; the folder holds no pickle; a text tower that no
sentence-transformers pipeline holds is refused in one line before anything is written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import assert_close_by_norm, one_line_error

from lit_compclip.errors import ConfigError
from lit_compclip.export import sentence_transformers as st_export

CAPTIONS = ["a red square", "a large blue circle to the left of a small green triangle, above a yellow star",
            "Dr. Smith's cat, e.g. a tabby (3 yrs.) - sits; on a mat!", "shapes",
            " ".join(["a purple diamond below a white cross"] * 12)]  # past max_seq_len: cut the same way


def write_images(folder) -> list[str]:
    """PNG files (lossless) of other sizes, colours, modes and noise: the transform's resize and crop, RGB
    conversion and the trunk all matter."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (50, 17), (10, 120, 240)),
              Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8)),  # greyscale
              Image.fromarray(rng.integers(0, 256, (24, 30, 4), dtype=np.uint8))]  # RGBA
    folder.mkdir()
    paths = [str(folder / f"{i}.png") for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def assert_rows_close(got, want, name: str) -> None:
    """Each embedding within the format's tolerance of the model's, relative to its norm."""
    assert got.dtype == torch.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    for i in range(len(want)):
        assert_close_by_norm(got[i], want[i], st_export.TOLERANCE, f"{name} row {i}")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    from lit_compclip.export import export_model

    out = tmp_path_factory.mktemp("st") / "export"
    result = export_model(str(tiny_checkpoint), str(out), "sentence_transformers")
    assert result["image_error"] <= st_export.TOLERANCE and result["text_error"] <= st_export.TOLERANCE
    return out


# Run with an empty working folder and the hub offline: what a user's script does with the folder alone
FRESH = """
import json, sys
import numpy as np
from PIL import Image
from sentence_transformers import SentenceTransformer
folder, captions, images, out = json.loads(sys.argv[1])
try:
    SentenceTransformer(folder, device="cpu", local_files_only=True)
    print("loaded without trust_remote_code")
except ValueError as e:
    print("refused:", "trust_remote_code=True" in str(e))
model = SentenceTransformer(folder, device="cpu", local_files_only=True, trust_remote_code=True)
np.save(out + "/texts.npy", model.encode(captions))
np.save(out + "/images.npy", model.encode([Image.open(p) for p in images]))
"""


def test_export_encodes_captions_and_images_as_the_checkpoint_in_a_fresh_process(exported, tiny_checkpoint,
                                                                                     tmp_path):
    import lit_compclip
    from PIL import Image

    paths = write_images(tmp_path / "images")
    cwd = tmp_path / "empty"
    cwd.mkdir()
    args = json.dumps([str(exported), CAPTIONS, paths, str(tmp_path)])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH, args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: True" in done.stdout  # sentence-transformers imports our module class only when trusted
    model = lit_compclip.load(str(tiny_checkpoint))
    with torch.no_grad():
        texts = model.encode_text(CAPTIONS)
        images = model.encode_image(torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths]))
    assert_rows_close(torch.from_numpy(np.load(tmp_path / "texts.npy")), texts, "texts")
    assert_rows_close(torch.from_numpy(np.load(tmp_path / "images.npy")), images, "images")


def test_the_folder_holds_no_pickle_and_its_card_says_what_it_needs(exported):
    files = [os.path.join(d, f) for d, _, names in os.walk(exported) for f in names]
    assert any(f.endswith(".safetensors") for f in files)
    for path in files:
        with open(path, "rb") as f:
            head = f.read(4)
        # a pickle starts with its protocol byte 0x80, torch.save's zip with PK
        assert not head.startswith(b"\x80") and not head.startswith(b"PK"), path
        assert not path.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")), path
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Router", "Normalize"]
    router = json.loads((exported / "router_config.json").read_text())
    assert list(router["structure"]) == ["text", "image"]
    assert [router["types"][m] for m in router["structure"]["image"]] == [
        st_export.TYPE, "sentence_transformers.base.modules.dense.Dense"]
    assert [router["types"][m].rsplit(".", 1)[1] for m in router["structure"]["text"]] == [
        "Transformer", "Pooling", "Normalize", "Dense"]  # MiniLM's own modules, then the projection
    assert "pip install lit_compclip" in (exported / "README.md").read_text()


def tiny_checkpoint_with(tmp_path, **text) -> str:
    """A checkpoint of a fresh model with the tiny image tower and the `text` tower."""
    import copy

    import lit_compclip
    from lit_compclip.factory import DEFAULT_MODEL, merged

    image = {"img_size": 32, "depth": 1, "width": 64, "heads": 2}
    config = merged(merged(copy.deepcopy(DEFAULT_MODEL), {"embed_dim": 16, "image": image}), {"text": text})
    torch.manual_seed(0)
    model = lit_compclip.create_model(config)
    path = tmp_path / f"{len(os.listdir(tmp_path))}.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": config}}, path)
    return str(path)


def refused(source, out, *parts) -> None:
    """export_model(source) is one line holding `parts`, and nothing is left beside `out`."""
    from lit_compclip.export import export_model

    before = sorted(os.listdir(out.parent))
    with pytest.raises(ConfigError) as e:
        export_model(source, str(out), "sentence_transformers")
    one_line_error(e, "sentence_transformers export", *parts)
    assert sorted(os.listdir(out.parent)) == before


def test_a_text_tower_no_pipeline_holds_is_refused_in_one_line_before_anything_is_written(tmp_path):
    scratch = tiny_checkpoint_with(tmp_path, tower="scratch", width=32, layers=1, heads=2, max_seq_len=16)
    refused(scratch, tmp_path / "out", "scratch text tower", "native")
    # MiniLM whose frozen layers run in bfloat16 and trained ones in float32: one Transformer module has one dtype
    refused(tiny_checkpoint_with(tmp_path, frozen_dtype="bfloat16"), tmp_path / "out", "frozen_dtype", "native")


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_decoder_folder_exports_on_either_padding_side(random_lm, tmp_path, side):
    # left: sentence-transformers counts positions from the padding, the tower from the first token; rotary
    # embeddings see only their differences
    import lit_compclip
    from lit_compclip.export import export_model

    folder = random_lm("qwen2", sentence_transformers=True, padding_side=side)
    source = tiny_checkpoint_with(tmp_path, model=folder, unfreeze_layers=1, max_seq_len=32)
    export_model(source, str(tmp_path / "out"), "sentence_transformers")
    loaded = st_export.load_back(str(tmp_path / "out"))
    with torch.no_grad():
        assert_rows_close(loaded.encode_texts(CAPTIONS), lit_compclip.load(source).encode_text(CAPTIONS), "texts")


def test_what_a_decoder_folder_cannot_hold_is_refused(random_lm, tmp_path, monkeypatch):
    options = {"model": random_lm("qwen2", sentence_transformers=True, padding_side="left"), "unfreeze_layers": 1}
    refused(tiny_checkpoint_with(tmp_path, **options, bidirectional=True), tmp_path / "out", "bidirectional")
    monkeypatch.setattr(st_export, "has_rotary_positions", lambda lm: False)  # as GPT-2's learned positions
    refused(tiny_checkpoint_with(tmp_path, **options), tmp_path / "out", "without rotary positions", "left")
