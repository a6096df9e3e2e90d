"""The paper's configuration (experiments/paper_gemma2.yaml) and its tail ablation: checked without the weights, and
trained for one step with a random Gemma-2 of the same architecture standing in for Gemma-2-2B."""

import os

import pytest
from omegaconf import OmegaConf

from lit_compclip.cli import main
from lit_compclip.config import ConfigError, load_config
from lit_compclip.reports.sweep import expand, load_spec, plan

PAPER = "experiments/paper_gemma2.yaml"
SPEC = "experiments/sweeps/decoder_tail.yaml"
# Gemma-2-2B has 26 layers; 6 keep a frozen prefix below the 4 trained ones, and both of Gemma-2's attention kinds
# (sliding-window and global layers alternate) among them.
STAND_IN = {"layers": 6, "width": 64, "heads": 4, "kv_heads": 2}
# What the spec's comment tells a user to add to run the tail ablation on one machine (checked against it below).
HERE = ["trainer.devices=1", "trainer.strategy=auto", "trainer.precision=null", "trainer.max_steps=160",
        "optim.warmup_steps=50", "optim.micro_batch_size=null", "data.batch_size=64", "data.num_workers=1",
        "data.samples_per_epoch=10240", "model.image.img_size=64", "model.image.patch_size=8", "model.image.depth=4",
        "model.image.width=128", "model.image.heads=4", "probes.limit=200", "probes.suites.aro.official_macro=false"]


def paper_dry_run(folder: str, world, tmp_path) -> list[str]:
    """Overrides that make the paper configuration one quick CPU step, each for a reason:
    the weights (a random Gemma-2 folder), one process instead of 8 DDP ranks, a batch of 8 in GradCache
    micro-batches of 4 (GradCache stays on), 32 px images (ViT-B itself is kept), the tiny world's 8 probe
    examples (ARO's official macro average needs 25 cases per attribute pair), no W&B, no world building.
    Shards and probes come from COMPCLIP_SHARDS / COMPCLIP_BENCH, as a user sets them."""
    return [f"model.text.model={folder}", "trainer.devices=1", "trainer.strategy=auto", "data.batch_size=8",
            "optim.micro_batch_size=4", "data.num_workers=0", "data.shuffle_buffer=16", "model.image.img_size=32",
            "probes.limit=8", "probes.suites.aro.official_macro=false", "synth.auto=false", f"cache_dir={world}/cache",
            "wandb.mode=disabled", "trainer.enable_progress_bar=false", "trainer.fast_dev_run=true",
            f"run_dir={tmp_path}/run"]


@pytest.fixture
def paper_data(world, monkeypatch):
    monkeypatch.setenv("COMPCLIP_SHARDS", f"{world}/train")
    monkeypatch.setenv("COMPCLIP_BENCH", f"{world}/probes")
    return world


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any pretrained weights or model config fails: the config check must not need them."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the config check loaded a model")

    for cls in (transformers.AutoModel, transformers.AutoConfig, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def test_paper_config_passes_the_config_check_without_the_weights(no_weights):
    cfg = load_config([PAPER])
    text = cfg.model.text
    assert (text.tower, text.model, text.unfreeze_layers, text.bidirectional) == ("transformers", "google/gemma-2-2b",
                                                                                   4, True)
    assert (text.frozen_dtype, text.attn_implementation, text.cache_dir) == ("bfloat16", "eager", None)
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 65536  # PAPER.md's global batch
    assert cfg.trainer.max_steps == 150000 and cfg.trainer.precision == "bf16-mixed"
    assert (cfg.model.image.model, cfg.model.image.img_size, cfg.model.image.pretrained) == ("vit_base_patch16_224",
                                                                                             224, False)
    assert dict(cfg.data.sentence_sample) == {"recaption": 2} and max(cfg.data.caption_fields, key=cfg.data.caption_fields.get) == "recaption"
    assert cfg.optim.micro_batch_size < cfg.data.batch_size  # GradCache on


def test_paper_config_data_and_benchmark_roots_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("COMPCLIP_SHARDS", "/mnt/shards/{000..009}.tar")
    monkeypatch.setenv("COMPCLIP_BENCH", "/mnt/bench")
    cfg = load_config([PAPER])
    assert cfg.data.train_shards == "/mnt/shards/{000..009}.tar"
    assert cfg.probes.suites.aro.root == "/mnt/bench/aro"
    assert cfg.probes.suites.docci.annotations == "/mnt/bench/docci/docci_descriptions.jsonlines"


@pytest.mark.parametrize("override, message", [
    ("model.text.bidirectionl=false", "unknown option 'bidirectionl' (did you mean 'bidirectional'?)"),
    ("model.text.unfreeze_layers=four", "model.text.unfreeze_layers='four': must be int"),
    ("model.text.frozen_dtyp=float16", "unknown option 'frozen_dtyp' (did you mean 'frozen_dtype'?)"),
])
def test_paper_tower_options_are_checked_in_one_line_without_the_weights(override, message, no_weights):
    with pytest.raises(ConfigError) as e:
        load_config([PAPER], [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_paper_config_without_the_weights_stops_in_one_line_naming_the_key(tmp_path, capsys):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("google/gemma-2-2b", "config.json"), str):
        pytest.skip("Gemma-2-2B is in this machine's Hugging Face cache")
    assert main(["train", PAPER, f"run_dir={tmp_path}/run", "wandb.mode=disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.text.model: cannot load 'google/gemma-2-2b'" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~30 s; the decoder tower trains in test_decoder_towers.py; `make test-all` runs it
def test_paper_config_trains_one_step_with_a_random_gemma2_standing_in(paper_data, random_lm, tmp_path):
    from lit_compclip.training.run import train

    folder = random_lm("gemma2", **STAND_IN)
    cfg = load_config([PAPER], paper_dry_run(folder, paper_data, tmp_path))
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.text.frozen_dtype == "bfloat16"  # as the paper's
    result = train(cfg)
    assert result["probes"]["probe/sugarcrepe/n"] == 8 * 7
    assert os.path.isfile(f"{tmp_path}/run/config.yaml")


def test_the_stand_in_tower_is_built_as_the_papers(paper_data, random_lm, tmp_path):
    """4 trained, bidirectional layers over a bf16 frozen prefix, mean-pooled: what Gemma-2-2B gets at scale."""
    import torch

    from lit_compclip.training.module import CompClip

    cfg = load_config([PAPER], paper_dry_run(random_lm("gemma2", **STAND_IN), paper_data, tmp_path))
    tower = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1).model.text
    assert tower.causal and tower.bidirectional and tower.pooling == "mean"
    assert tower.first_trained == STAND_IN["layers"] - 4 and tower.cache_options is None
    assert {p.dtype for p in tower.frozen_parameters()} == {torch.bfloat16}
    assert {p.dtype for layer in tower.trainable for p in layer.parameters()} == {torch.float32}
    assert tower.lm.config._attn_implementation == "eager"


def test_decoder_tail_spec_expands_to_causal_and_bidirectional_tails(tmp_path, no_weights):
    spec = load_spec(SPEC)
    cells = {(r["model.text.bidirectional"], r["model.text.pooling"]) for r in expand(spec)}
    assert cells == {(False, "mean"), (False, "last"), (True, "mean"), (True, "last")}
    runs = plan(spec, tmp_path, [], None, 0)
    assert len(runs) == 4
    paper = OmegaConf.to_container(load_config([PAPER]))
    for run in runs:
        cfg = OmegaConf.to_container(run["cfg"])
        text = cfg["model"].pop("text")
        assert (text["bidirectional"], text["pooling"]) == (run["params"]["model.text.bidirectional"],
                                                           run["params"]["model.text.pooling"])
        assert {k: v for k, v in text.items() if k not in ("bidirectional", "pooling")} == \
            {k: v for k, v in paper["model"]["text"].items() if k not in ("bidirectional", "pooling")}
        assert cfg["model"] == {k: v for k, v in paper["model"].items() if k != "text"}  # only the tail differs
        assert cfg["data"] == paper["data"] and cfg["optim"] == paper["optim"]


def test_decoder_tail_spec_documents_a_run_here_that_plans(tmp_path, no_weights):
    comment = " ".join(line.lstrip("# ") for line in open(SPEC) if line.startswith("#"))
    assert all(o in comment for o in HERE), [o for o in HERE if o not in comment]
    runs = plan(load_spec(SPEC), tmp_path, ["model.text.model=data/gemma2_tiny", *HERE], None, 0)
    assert len(runs) == 4
    for run in runs:
        cfg = run["cfg"]
        assert cfg.model.text.model == "data/gemma2_tiny" and cfg.trainer.devices == 1
        assert cfg.trainer.max_steps * cfg.data.batch_size == cfg.data.samples_per_epoch  # one epoch: probes at its end
