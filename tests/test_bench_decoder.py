"""`make bench-decoder` and `make bench-gpu-decoder` code paths on a tiny world and toy decoders: outputs, never
timings."""

import json
import math

import pytest
import torch

from lit_compclip.config import load_config

from helpers import DEFAULT, TINY_MODEL, load_script, world_overrides

RATIOS = ("text_step_cache_speedup", "text_step_cache_bound", "text_step_speedup_over_bound",
          "train_step_cache_speedup", "train_step_cache_bound", "train_step_speedup_over_bound",
          "decoder_vs_minilm_samples_per_s")


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny(world, tmp_path_factory):
    """Overrides for the tiny world and image tower, a 2-layer random BERT standing in for MiniLM."""
    from benchmarks.our_loop import make_bert_folder

    bert = make_bert_folder(str(tmp_path_factory.mktemp("bench_decoder") / "bert"), layers=2, width=32, heads=2)
    return world_overrides(world) + TINY_MODEL + [f"model.text.model={bert}", "model.text.unfreeze_layers=1"]


def test_quick_decoder_bench_writes_every_figure_and_reports_open_clip(tiny, tmp_path):
    out = tmp_path / "bench_decoder.json"
    assert load_script("bench_decoder").main(["--quick", "--rounds", "2", "--out", str(out), *tiny]) == 0
    result = json.loads(out.read_text())
    for key in RATIOS:
        spread = result["spread"][key]
        assert result[key] == spread["median"] and positive(result[key]), key
        assert spread["rounds"] == 2 and all(map(positive, spread["values"])), key
    # the bound can only be above 1, and speed-up over bound is the two ratios' quotient in every block
    for part in ("text_step", "train_step"):
        s = result["spread"]
        assert all(b > 1 for b in s[f"{part}_cache_bound"]["values"])
        for a, b, c in zip(s[f"{part}_cache_speedup"]["values"], s[f"{part}_cache_bound"]["values"],
                           s[f"{part}_speedup_over_bound"]["values"]):
            assert abs(a / b - c) <= 1e-9 * c
        raw = result["raw"][part]
        assert raw["hit_rate"] == 1.0 and raw["frozen_s"] > 0  # the cache was warm for every timed caption
    assert result["raw"]["minilm_hit_rate"] == 1.0 and result["raw"]["text_step"]["optimizer"] is False
    arms = result["raw"]["arms"]
    assert set(arms) == {"text_on", "text_off", "frozen", "step_on", "step_off", "minilm_on"}
    assert all(a["timed_steps"] == 2 * 2 and len(a["block_step_s"]) == 2 for a in arms.values())
    d = result["decoder"]
    assert d["family"] == "gemma2" and d["trained_layers"] < d["layers"] and d["params"] > 0
    oc = result["open_clip"]  # open_clip's HF tower is built for encoders: it refuses a decoder in one line
    assert oc["ran"] or (oc["error"] and "\n" not in oc["error"])
    assert {"cpu_count", "torch", "device"} <= set(result["machine"]) and result["date"]


def test_gpu_decoder_bench_stops_in_one_line_without_cuda(monkeypatch, capsys, tmp_path):
    gpu = load_script("bench_gpu_decoder")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err
    assert not (tmp_path / "g.json").exists()
    with pytest.raises(SystemExit):
        gpu.parse(["--cases", "gemma7"])


def test_gpu_decoder_cases_are_the_named_models_and_card_peaks_match_by_name():
    from lit_compclip.towers.random_lm import random_config

    gpu = load_script("bench_gpu_decoder")
    family, sizes, _ = gpu.CASES["gemma2_2b"]
    config = random_config(family, **sizes)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.head_dim,
            config.num_attention_heads, config.num_key_value_heads) == (26, 2304, 9216, 256, 8, 4)
    family, sizes, _ = gpu.CASES["qwen3_0.6b"]
    config = random_config(family, **sizes)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (28, 1024, 3072)
    from benchmarks.peaks import datasheet_peak  # the peaks the script divides by

    assert datasheet_peak("NVIDIA H200") == 989e12 and datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("NVIDIA A10") == 125e12 and datasheet_peak("a card not listed") is None


def test_gpu_decoder_case_runs_on_cpu_and_the_cache_removes_frozen_flops(tiny, tmp_path):
    gpu = load_script("bench_gpu_decoder")
    sizes = {"layers": 3, "width": 32, "heads": 2, "kv_heads": 1, "intermediate_size": 48, "head_dim": 16}
    lm = gpu.save_decoder(str(tmp_path / "lm"), "qwen3", sizes, device="cpu")
    cases = {}
    for arm, cache in (("no_cache", None), ("cache", str(tmp_path / "cache"))):
        cfg = load_config([DEFAULT], tiny + ["data.batch_size=4"] + gpu.text_overrides(lm, "eos", cache, trained=1))
        cases[arm] = gpu.run_case(cfg, steps=1, warmup=1, device="cpu")
    for r in cases.values():
        assert positive(r["samples_per_s"]) and r["flops_per_step"] > 0 and r["peak_memory_bytes"] is None
    assert cases["no_cache"]["cache"] is None and cases["cache"]["cache"] == {"hits": 4, "misses": 0}
    # with the cache warm the step runs the trained layer only: fewer text FLOPs
    assert 0 < cases["cache"]["text_flops_per_step"] < cases["no_cache"]["text_flops_per_step"]


def test_time_interleaved_runs_every_arm_on_each_item_in_alternating_order():
    from benchmarks.timing import time_interleaved

    calls = []
    steps = {name: (lambda item, name=name: calls.append((name, item))) for name in ("a", "b", "c")}
    out = time_interleaved(steps, {"a": [0, 1, 2], "b": [0, 1, 2], "c": ["x", "y", "z"]}, steps=3, start=4)
    # items 4, 5, 6 of each cycled list; A B C on even steps, C B A on odd ones
    assert calls == [("a", 1), ("b", 1), ("c", "y"), ("c", "z"), ("b", 2), ("a", 2), ("a", 0), ("b", 0), ("c", "x")]
    assert all(len(v) == 3 and all(t >= 0 for t in v) for v in out.values())


def test_gpu_decoder_arm_rows_print_as_each_arm_ends_an_out_of_memory_arm_included():
    line = load_script("bench_gpu_decoder").arm_line
    assert line("gemma2_2b", "cache", {"error": "OutOfMemoryError: CUDA out of memory"}).split() == [
        "gemma2_2b", "cache", "OutOfMemoryError:", "CUDA", "out", "of", "memory"]
    row = {"samples_per_s": 812.4, "peak_memory_bytes": 3 * 2 ** 30, "mfu": 0.25, "mfu_of_measured_matmul_peak": 0.3}
    assert line("qwen3_0.6b", "no_cache", row).split() == ["qwen3_0.6b", "no_cache", "812", "3.0", "25.0%", "30.0%",
                                                           "25.0%", "30.0%"]
