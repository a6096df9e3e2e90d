"""`make bench` and `make bench-gpu` code paths on a tiny world and a tiny text model: outputs, never timings."""

import glob
import json
import math
import os
import sys
import tarfile

import pytest
import torch

from lit_compclip.config import load_config

from helpers import DEFAULT, TINY_MODEL, load_script, world_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(world, tmp_path_factory):
    """Overrides for the tiny world, the tiny image tower and a 2-layer random BERT text tower (1 layer trained)."""
    from benchmarks.our_loop import make_bert_folder

    bert = make_bert_folder(str(tmp_path_factory.mktemp("bench") / "bert"), layers=2, width=32, heads=2)
    return world_overrides(world) + TINY_MODEL + [f"model.text.model={bert}", "model.text.unfreeze_layers=1",
                                                           "probes.limit=4"]


RATIOS = ("train_vs_open_clip_like_for_like", "open_clip_padding_factor", "open_clip_dropout_factor",
          "train_vs_open_clip", "train_vs_open_clip_as_shipped", "text_cache_speedup", "length_groups_speedup",
          "train_vs_open_clip_vit_b16_like_for_like", "train_vs_open_clip_vit_b16", "patch_dropout_speedup_vit_b16")


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_bench_writes_every_figure_and_open_clip_really_trains(tiny, tmp_path):
    out = tmp_path / "bench.json"
    # two blocks: each ratio has two values, one per block
    assert load_script("bench").main(["--quick", "--rounds", "2", "--out", str(out), *tiny]) == 0
    result = json.loads(out.read_text())
    for key in RATIOS:
        spread = result["spread"][key]
        assert result[key] == spread["median"] and positive(result[key]), key
        assert spread["rounds"] == len(spread["values"]) == 2 and all(map(positive, spread["values"])), key
        assert spread["min"] <= spread["median"] <= spread["max"], key
    for key in ("data_vs_model", "probe_overhead_fraction", "flop_utilisation"):
        assert positive(result[key]), key
    # the three open_clip factors are wired to the arms they name: per block their product is the as-shipped ratio
    product = result["raw"]["open_clip_factors_product"]["values"]
    for a, b in zip(product, result["spread"]["train_vs_open_clip"]["values"]):
        assert abs(a - b) <= 1e-9 * b
    arms = result["raw"]["arms"]
    # every arm ran its timed steps in both blocks; the warm cache arm read every timed caption from the cache
    assert all(a["timed_steps"] == 2 * 2 and len(a["block_step_s"]) == 2 for a in arms.values())
    assert arms["ours_shipped"]["cache_hit_rate"] == 1.0
    assert "cache_hit_rate" not in arms["ours_shipped_no_cache"]
    # open_clip's arms differ one setting at a time: padding (64 tokens or ours), then the locked layers' mode
    shipped, pad64, like = (arms[f"open_clip_{k}"] for k in ("shipped", "pad64_eval", "like_for_like"))
    assert shipped["locked_layer_training"] and not pad64["locked_layer_training"]
    assert not like["locked_layer_training"]
    assert shipped["trained_layer_training"] and pad64["trained_layer_training"] and like["trained_layer_training"]
    tokens = result["raw"]["open_clip_tokens"]
    assert tokens["same_token_ids"]  # open_clip's own ids are ours, padded further: padding is the only difference
    assert shipped["positions_per_batch"] == pad64["positions_per_batch"] == tokens["open_clip_per_batch"]
    assert like["positions_per_batch"] == tokens["ours_per_batch"] < tokens["open_clip_per_batch"]
    assert tokens["ours_per_batch"] == result["raw"]["length_groups_tokens"]["padded"]
    cache = result["raw"]["text_cache_by_trained_layers"]["1"]  # the tiny tower trains 1 of its 2 layers
    assert cache["speedup"]["median"] == result["text_cache_speedup"] and cache["hit_rate"] == 1.0
    assert cache["bound"] > 1 and cache["frozen_part_s"] > 0
    tokens = result["raw"]["length_groups_tokens"]  # the tiny world's captions differ in length: groups cut padding
    assert tokens["groups"] == 2 and tokens["real"] <= tokens["grouped"] < tokens["padded"]
    for raw in (arms, result["raw"]["vit_b16"]["arms"]):
        for name in ("open_clip_shipped", "open_clip_like_for_like"):
            # open_clip's loop ran every batch and moved what it trains, and only that
            assert raw[name]["steps_run"] == 2 * 2 * (1 + 1)  # 2 runs per block, 1 warm-up + 1 timed step each
            assert raw[name]["changed"] == {"image_proj": True, "text_proj": True, "text_unlocked_layer": True,
                                            "text_locked_layer": False}
    assert result["raw"]["vit_b16"]["image_tower"]["patch_size"] == 16
    assert set(result["raw"]["cost_split_s"]) >= {"data", "tokenize", "image", "text", "loss", "optimizer"}
    assert result["raw"]["flops"]["image_per_step"] > 0 and result["raw"]["flops"]["text_per_step"] > 0
    # an epoch is the training shards' samples over the configured batch size, counted here from the tar files
    cfg = load_config([DEFAULT], tiny)
    samples = 0
    for shard in glob.glob(os.path.join(cfg.data.train_shards, "*.tar")):
        with tarfile.open(shard) as tar:
            samples += len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})
    probes = result["raw"]["probes"]
    assert probes["steps_per_epoch"] == samples // cfg.data.batch_size > 0 and probes["epoch_s"] > 0
    # probe FLOPs: one count per pass a run makes; the first, cold, also computes the probe captions' frozen prefix
    pf = probes["flops"]
    assert len(pf["passes"]) == len(probes["passes"]) == cfg.trainer.max_epochs and pf["passes"][0] > pf["passes"][1]
    assert 0 < pf["step_frozen"] < pf["step"] and pf["epochs"] == cfg.trainer.max_epochs
    n = probes["steps_per_epoch"]
    assert pf["run_training"] == pytest.approx(n * (pf["step"] + (pf["epochs"] - 1) * (pf["step"] - pf["step_frozen"])))
    assert result["probe_flops_fraction"] == pytest.approx(sum(pf["passes"]) / pf["run_training"])
    assert 0 < pf["floor_fraction"] < result["probe_flops_fraction"] and positive(pf["rate_vs_training"])
    assert {"cpu_count", "torch", "device"} <= set(result["machine"]) and result["date"]


def test_abba_order_puts_every_pair_of_arms_in_a_b_b_a_order():
    from benchmarks.timing import abba_order

    arms = ["a", "b", "c", "d"]
    order = abba_order(arms, 3)
    assert [block for block, _ in order] == [0] * 8 + [1] * 8 + [2] * 8
    for block in range(3):
        runs = [arm for b, arm in order if b == block]
        for i, x in enumerate(arms):
            for y in arms[i + 1:]:
                assert [r for r in runs if r in (x, y)] == [x, y, y, x]
    assert abba_order(["a", "b"], 1) == [(0, "a"), (0, "b"), (0, "b"), (0, "a")]
    with pytest.raises(ValueError):
        abba_order(["a", "a"], 1)
    with pytest.raises(ValueError):
        abba_order(["a", "b"], 0)


def test_alternate_pools_each_blocks_runs_and_ratios_come_from_one_block():
    from benchmarks import timing as bench

    calls = []

    def arm(name, seconds):
        def run(first):
            calls.append((name, first))
            # block k's runs take seconds * (k + 1): a load that changes between blocks
            return {"intervals": [seconds * (1 + sum(c[0] == name for c in calls[:-1]) // 2)] * 3}
        return run

    result = bench.alternate({"fast": arm("fast", 1.0), "slow": arm("slow", 3.0)}, 3)
    assert calls == [("fast", True), ("slow", True), ("slow", False), ("fast", False)] + \
        [("fast", False), ("slow", False), ("slow", False), ("fast", False)] * 2
    times = result["times"]
    assert times["fast"] == [[1.0] * 6, [2.0] * 6, [3.0] * 6] and times["slow"][2] == [9.0] * 6
    # each block's ratio is 3 although the step times triple from block to block
    values = bench.speedups(times, "fast", "slow")
    assert len(values) == 3 and all(abs(v - 3.0) <= 1e-12 for v in values)
    assert bench.step_seconds(times, "fast") == 2.0


def test_spread_reports_median_min_max_and_every_value():
    from benchmarks.timing import describe, spread

    s = spread([1.05, 0.98, 1.02])
    assert (s["median"], s["min"], s["max"], s["rounds"]) == (1.02, 0.98, 1.05, 3)
    assert s["values"] == [1.05, 0.98, 1.02]
    assert describe(s) == "1.02x (0.98-1.05, 3 rounds)" and describe(spread([2.0])) == "2.00x (2.00-2.00, 1 round)"
    with pytest.raises(ValueError):
        spread([])


def test_open_clip_baseline_has_our_sizes_and_trains_the_same_text_layers(tiny):
    from benchmarks.our_loop import LIKE_FOR_LIKE, build_model
    from benchmarks.open_clip_baseline import build_open_clip

    cfg = load_config([DEFAULT], LIKE_FOR_LIKE + tiny)
    ours, (theirs, tokenizer) = build_model(cfg, 1), build_open_clip(cfg)
    assert ours.model.length_groups == 1  # open_clip pads every caption alike, so ours does too in the comparison

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    assert count(theirs.text, True) == count(ours.model.text, True)  # last layer + projection, nothing else
    assert abs(count(theirs.visual) - count(ours.model.image)) / count(ours.model.image) < 0.02
    assert tokenizer(["a red circle"]).shape == (1, ours.model.text.max_seq_len)


def test_open_clip_like_for_like_arm_gets_our_ids_and_keeps_its_locked_layers_in_eval(tiny):
    from benchmarks.our_loop import LIKE_FOR_LIKE, build_model
    from benchmarks.open_clip_baseline import build_open_clip, locked_layers_in_eval, our_token_ids, same_token_ids

    cfg = load_config([DEFAULT], LIKE_FOR_LIKE + tiny)
    ours, (theirs, tokenizer) = build_model(cfg, 1), build_open_clip(cfg)
    captions = ["a red circle", "two small green squares left of a blue triangle"]
    ids = our_token_ids(ours.model.text)(captions)
    text = ours.model.text
    assert torch.equal(ids, text.tokenize(captions)["input_ids"]) and ids.shape[1] < text.max_seq_len
    # open_clip's own tokenizer differs from ours in padding alone; a tokenizer that changes a token does not
    assert same_token_ids(tokenizer, our_token_ids(ours.model.text), [{"caption": captions}])
    assert not same_token_ids(tokenizer, lambda c: our_token_ids(ours.model.text)(c) + 1, [{"caption": captions}])
    layers = theirs.text.transformer.encoder.layer
    theirs.train()  # as it ships: dropout in every text layer, locked or not
    assert layers[0].training and theirs.text.transformer.embeddings.training
    locked_layers_in_eval(theirs)
    theirs.train()
    assert not layers[0].training and not theirs.text.transformer.embeddings.training
    assert layers[-1].training and theirs.visual.training and theirs.text.proj.training
    theirs.eval()
    assert not layers[-1].training and not theirs.visual.training


def test_bench_gpu_builds_its_models_and_stops_in_one_line_without_cuda(tmp_path, tiny, capsys):
    gpu = load_script("bench_gpu")
    folder = tmp_path / "models"
    folder.mkdir()
    named = gpu.cases(str(folder), text={"layers": 2, "width": 32, "heads": 2})
    assert len(named) == 2
    from benchmarks.our_loop import build_model

    # the larger-text case really builds on its random BERT (here a toy one), at ViT-B/16's 224 px
    shrink = ["model.image.width=32", "model.image.depth=1", "model.image.heads=2"]
    cfg = load_config([DEFAULT], tiny + named["vit_b16_bert2x32"] + shrink)
    model = build_model(cfg, 1)
    assert model.model.image.trunk.patch_embed.img_size == (224, 224)
    assert model.model.text.st[0].auto_model.config.num_hidden_layers == 2
    # its measuring code, run on the CPU at toy sizes: both loops train in bf16 and every figure comes out
    case = gpu.run_case(load_config([DEFAULT], tiny + ["data.batch_size=4"]), steps=1, warmup=1, peak=1e9, device="cpu")
    assert case["open_clip_changed"]["image_proj"] and case["flops_per_step"] > 0 and case["ours_mfu"] > 0
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the no-GPU message is not shown")
    capsys.readouterr()  # what building the models printed
    assert gpu.main(["--out", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err


@pytest.mark.parametrize("script", ["bench", "bench_decoder"])
def test_timing_arguments_default_and_refuse_zero(script, capsys):
    parse = load_script(script).parse
    assert (parse([]).steps, parse([]).rounds) == (3, 3)
    assert (parse(["--quick"]).steps, parse(["--quick"]).rounds) == (1, 1)
    for bad in (["--rounds", "0"], ["--steps", "0"], ["--steps", "-2"]):  # 0 is not taken for "unset"
        with pytest.raises(SystemExit) as e:
            parse(bad)
        assert e.value.code == 2 and "--steps and --rounds must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench", "bench_gpu", "bench_decoder", "bench_gpu_decoder", "bench_recaption"])
@pytest.mark.parametrize("bad", [["--bogus"], ["--quic"], ["--steps", "many"]])
def test_a_bad_benchmark_argument_is_one_line_and_exit_2(script, bad, monkeypatch, capsys):
    """What `make bench ARGS=...` gives a typo: one line naming it, not argparse's usage block; no abbreviations."""
    module = load_script(script)
    if script == "bench_recaption":  # parses sys.argv
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *bad])
        call = module.main
    else:
        call = (lambda: module.main(bad)) if not hasattr(module, "parse") else (lambda: module.parse(bad))
    with pytest.raises(SystemExit) as e:
        call()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and ": error: " in err[0], err
    assert bad[0] in err[0] or bad[-1] in err[0], err


def test_bench_gpu_lever_rows_run_on_the_cpu_each_against_the_plain_step(tmp_path, tiny):
    """The lever table's code on the CPU at toy sizes (its figures are the GPU's): every row asked for, plain first,
    each set against it; the host-side bookkeeping row's baseline really moves the tokens first, and is undone."""
    from benchmarks import levers
    from benchmarks.our_loop import LIKE_FOR_LIKE
    from lit_compclip.model import CompClipModel

    names = ["optim.implementation=fused", "  the same, tokens on the device first"]
    rows = levers.lever_table(tiny + LIKE_FOR_LIKE, batch=4, steps=1, warmup=4, folder=str(tmp_path), device="cpu", peak=1e9,
                              names=names, experiment=DEFAULT)
    assert list(rows) == ["plain"] + names
    assert rows["plain"]["samples_per_s_vs_plain"] == 1.0
    for row in rows.values():
        assert positive(row["samples_per_s"]) and positive(row["flops_per_sample"]) and positive(row["mfu"])
        assert row["mfu"] == pytest.approx(row["flops_per_sample"] * row["batch_size"] / row["step_s"] / 1e9)
    assert rows["  the same, tokens on the device first"]["flops_per_sample"] < rows["plain"]["flops_per_sample"]
    original = CompClipModel.encode_text
    with levers.tokens_on_device_first():
        assert CompClipModel.encode_text is not original
    assert CompClipModel.encode_text is original
    assert set(levers.LEVERS) >= {"model.compile=true", "optim.implementation=fused", "batch x2 (local loss)",
                                  "model.image.patch_dropout=0.5"}


def test_a_compiled_lever_rows_flops_are_counted_on_an_uncompiled_build_of_its_config(tiny):
    """The FLOP counter does not see inside compiled graphs: a compile row is counted on the same config uncompiled,
    which counts as the plain model does (compiling changes no FLOP)."""
    from benchmarks import levers
    from benchmarks.our_loop import LIKE_FOR_LIKE, build_model, collect_batches, data_module

    cfg = load_config([DEFAULT], tiny + LIKE_FOR_LIKE + ["data.batch_size=4"])
    plain = build_model(cfg, 1)
    batch = collect_batches(data_module(cfg, plain), 1)[0]
    compiled = load_config([DEFAULT], tiny + LIKE_FOR_LIKE + ["data.batch_size=4", "model.compile=true"])
    assert levers.flops_per_step(compiled, None, batch, "cpu") == levers.flops_per_step(cfg, plain, batch, "cpu") > 0


def test_a_lever_row_the_card_has_no_memory_for_keeps_its_error_and_the_others_stand(monkeypatch, capsys):
    from benchmarks import levers

    def measure(name, lever, *args):
        if lever.batch_factor == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        rate = {"plain": 100.0}.get(name, 150.0)
        return {"samples_per_s": rate, "step_s": 1.0, "batch_size": 4, "flops_per_sample": 1e9, "mfu": 0.2,
                "mfu_of_measured_matmul_peak": 0.25}

    monkeypatch.setattr(levers, "measure", measure)
    saved = []
    rows = levers.lever_table([], 4, 1, 1, "unused", device="cpu", on_row=lambda r: saved.append(list(r)),
                              names=["batch x2 (local loss)", "optim.implementation=fused"])
    assert list(rows) == ["plain", "batch x2 (local loss)", "optim.implementation=fused"] == saved[-1]
    assert len(saved) == 3  # kept after every row
    assert rows["batch x2 (local loss)"]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert rows["batch x2 (local loss)"]["samples_per_s_vs_plain"] is None
    assert rows["optim.implementation=fused"]["samples_per_s_vs_plain"] == 1.5
    levers.print_table(rows)
    out = capsys.readouterr().out.splitlines()
    assert "OutOfMemoryError" in out[2] and "1.50x" in out[3] and "1.00x" in out[1]
