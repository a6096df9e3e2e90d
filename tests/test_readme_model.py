"""README's "Using a trained model" section, run as written: its Python block in a fresh interpreter and each command
of its shell block through `compclip`, in a folder laid out as the section assumes (runs/default: a run of the
default model, tiny; runs/vit: a run with a stock timm ViT; photos/ and scene.jpg)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import DEFAULT, TINY_MODEL, VIT, assert_close_by_norm, solid, world_overrides
from lit_compclip.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using a trained model"


def section_blocks() -> list[tuple[str, str]]:
    """(language, body) of each fenced block in the section."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + 1)
    return re.findall(r"^```(\w*)\n(.*?)^```", text[start:end], re.S | re.M)


def shell_commands() -> list[list[str]]:
    lines = [re.split(r"\s+#", line)[0].strip() for body in (b for lang, b in section_blocks() if lang == "bash")
             for line in body.splitlines()]
    return [shlex.split(line) for line in lines if line]


def run_folder(path: Path, checkpoint, overrides: list[str]) -> None:
    """A run folder as `compclip train` leaves it, as far as the section reads it: the checkpoint and config.yaml."""
    from lit_compclip.config import load_config

    (path / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, path / "checkpoints" / "last.ckpt")
    OmegaConf.save(load_config([DEFAULT], overrides), path / "config.yaml", resolve=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, world, tiny_checkpoint, vit_checkpoint):
    root = tmp_path_factory.mktemp("readme")
    small = [*world_overrides(world), "probes.limit=2"]  # the world's probe sets, two examples a file
    run_folder(root / "runs" / "default", tiny_checkpoint, small + TINY_MODEL)
    run_folder(root / "runs" / "vit", vit_checkpoint, small + VIT)
    for name, colour in (("red.jpg", (220, 30, 30)), ("blue.png", (30, 30, 220)), ("more/green.jpg", (30, 180, 30))):
        solid(root / "photos" / name, colour, size=(40, 30))
    solid(root / "scene.jpg", (200, 200, 40), size=(64, 48))
    return root


def test_the_section_has_a_python_block_and_the_commands_it_promises():
    langs = [lang for lang, _ in section_blocks()]
    assert langs.count("python") == 1 and langs.count("bash") == 1, langs
    assert [args[1] for args in shell_commands()] == ["embed", "export", "export", "export", "probe"]


def test_the_python_block_runs_in_a_fresh_interpreter(folder):
    code = dict((lang, body) for lang, body in section_blocks())["python"]
    code += "\nprint('scores', tuple(scores.shape), sorted(m for m in __import__('sys').modules if m in " \
            "('lightning', 'wandb')))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scores (1, 2) []" in done.stdout, done.stdout


def test_every_command_of_the_shell_block_runs_as_written(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    for args in shell_commands():
        assert args[0] == "compclip"
        assert main(args[1:]) == 0, (args, capsys.readouterr().err[-3000:])
    with np.load(folder / "photos.npz", allow_pickle=False) as saved:
        assert list(saved["keys"]) == ["blue.png", "more/green.jpg", "red.jpg"]
        assert saved["embeddings"].shape == (3, 32)
    assert (folder / "exported" / "compclip_config.json").is_file()
    assert (folder / "st_model" / "modules.json").is_file()
    assert (folder / "oc_model" / "open_clip_config.json").is_file()
    probed = json.loads((folder / "runs" / "probe-open_clip_oc_model" / "probes.json").read_text())
    assert probed["probe/sugarcrepe/n"] == 2 * 7  # two examples from each of the world's seven SugarCrepe files
    # and an export embeds as the checkpoint it came from encodes
    import lit_compclip
    import torch

    (folder / "captions.txt").write_text("a red square\nA blue circle, left of it.\n")
    assert main(["embed", "exported", "--texts", "captions.txt", "--out", "captions.npz"]) == 0
    with np.load(folder / "captions.npz", allow_pickle=False) as saved, torch.no_grad():
        want = lit_compclip.load("runs/default").encode_text(["a red square", "A blue circle, left of it."])
        assert list(saved["keys"]) == ["0", "1"]
        assert_close_by_norm(torch.from_numpy(saved["embeddings"]), want, 1e-5, "embed of the export")
