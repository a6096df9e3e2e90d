"""`make bench` and `make bench-gpu` code paths on a tiny world and a tiny text model: outputs, never timings."""

import importlib.util
import json
import math
import os

import pytest
import torch

from lit_compclip.config import load_config
from lit_compclip.synth import generate

from test_train import TINY_MODEL, world_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for the tiny world, the tiny image tower and a 2-layer random BERT text tower (1 layer trained)."""
    from lit_compclip.bench import make_bert_folder

    root = tmp_path_factory.mktemp("bench")
    generate(str(root / "world"), train_families=24, eval_families=4, shard_size=48, probe_size=4)
    bert = make_bert_folder(str(root / "bert"), layers=2, width=32, heads=2)
    return world_overrides(root / "world") + TINY_MODEL + [f"model.text.model={bert}", "model.text.unfreeze_layers=1",
                                                           "probes.limit=4"]


def test_quick_bench_writes_every_figure_and_open_clip_really_trains(tiny, tmp_path):
    out = tmp_path / "bench.json"
    assert load_script("bench").main(["--quick", "--out", str(out), *tiny]) == 0
    result = json.loads(out.read_text())
    for key in ("train_vs_open_clip", "train_vs_open_clip_vit_b16", "data_vs_model", "probe_overhead_fraction",
                "flop_utilisation"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    cache = result["raw"]["text_cache"]
    assert result["text_cache_speedup"] == cache["speedup"] > 0
    assert cache["stats"]["hits"] > 0 and cache["stats"]["errors"] == 0  # the "on" run really read the cache
    assert cache["bound"] > 1 and cache["frozen_part_s"] > 0
    assert result["train_vs_open_clip_cached"] > 0
    grouped = result["raw"]["length_groups"]
    assert result["length_groups_speedup"] == grouped["speedup"] > 0
    tokens = grouped["tokens"]  # the tiny world's captions differ in length: groups cut padding, never real tokens
    assert tokens["groups"] == 2 and tokens["real"] <= tokens["grouped"] < tokens["padded"]
    for case in ("default", "vit_b16"):
        raw = result["raw"][case]
        # open_clip's loop ran every batch and moved what it trains, and only that
        assert raw["open_clip_steps_run"] == (raw["timed_steps"] + raw["warmup_steps"]) * raw["rounds"]
        assert raw["open_clip_changed"] == {"image_proj": True, "text_proj": True, "text_unlocked_layer": True,
                                            "text_locked_layer": False}
    assert result["raw"]["vit_b16"]["image_tower"]["patch_size"] == 16
    assert set(result["raw"]["cost_split_s"]) >= {"data", "tokenize", "image", "text", "loss", "optimizer"}
    assert result["raw"]["flops"]["image_per_step"] > 0 and result["raw"]["flops"]["text_per_step"] > 0
    assert {"cpu_count", "torch", "device"} <= set(result["machine"]) and result["date"]


def test_open_clip_baseline_has_our_sizes_and_trains_the_same_text_layers(tiny):
    from lit_compclip.bench import LIKE_FOR_LIKE, build_model
    from lit_compclip.bench_open_clip import build_open_clip

    cfg = load_config([], LIKE_FOR_LIKE + tiny)
    ours, (theirs, tokenizer) = build_model(cfg, 1), build_open_clip(cfg)
    assert ours.length_groups == 1  # open_clip pads every caption alike, so ours does too in the comparison

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    assert count(theirs.text, True) == count(ours.text, True)  # last layer + projection, nothing else
    assert abs(count(theirs.visual) - count(ours.image)) / count(ours.image) < 0.02
    assert tokenizer(["a red circle"]).shape == (1, ours.text.max_seq_len)


def test_bench_gpu_builds_its_models_and_stops_in_one_line_without_cuda(tmp_path, tiny, capsys):
    gpu = load_script("bench_gpu")
    folder = tmp_path / "models"
    folder.mkdir()
    named = gpu.cases(str(folder), text={"layers": 2, "width": 32, "heads": 2})
    assert len(named) == 2
    from lit_compclip.bench import build_model

    # the larger-text case really builds on its random BERT (here a toy one), at ViT-B/16's 224 px
    shrink = ["model.image.width=32", "model.image.depth=1", "model.image.heads=2"]
    cfg = load_config([], tiny + named["vit_b16_bert2x32"] + shrink)
    model = build_model(cfg, 1)
    assert model.image.trunk.patch_embed.img_size == (224, 224)
    assert model.text.st[0].auto_model.config.num_hidden_layers == 2
    # its measuring code, run on the CPU at toy sizes: both loops train in bf16 and every figure comes out
    case = gpu.run_case(load_config([], tiny + ["data.batch_size=4"]), steps=1, warmup=1, peak=1e9, device="cpu")
    assert case["open_clip_changed"]["image_proj"] and case["flops_per_step"] > 0 and case["ours_mfu"] > 0
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the no-GPU message is not shown")
    capsys.readouterr()  # what building the models printed
    assert gpu.main(["--out", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err
