"""Speed and scale options: precision by device, captions encoded by length, compile, fused attention, gradient checkpointing, channels-last,
the FSDP strategy built from the config, run folders of ranks launched apart, and the torchrun recipe."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from helpers import DEFAULT, assert_close_by_norm, assert_same_tensors
from lit_compclip.config import ConfigError, load_config
from lit_compclip.training.module import CompClip
from lit_compclip.towers import build_text_tower, encode_by_length
from lit_compclip.towers.image import ImageTower
from lit_compclip.training.run import block_classes, trainer_options, unique_run_dir

TINY_VIT = dict(img_size=16, patch_size=8, depth=2, width=32, heads=2, augment=False)
SCRATCH = {"tower": "scratch", "width": 32, "layers": 2, "heads": 2, "max_seq_len": 16}
MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0, "image": TINY_VIT, "text": SCRATCH}
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 0,
         "min_lr_ratio": 0.0}
CAPTIONS = ["a red circle left of a blue square", "a green star", "a white cross above a red star", "a circle"]


def twin(build, **options):
    """`build()` and `build(**options)` with the same initial weights."""
    torch.manual_seed(0)
    plain = build()
    torch.manual_seed(0)
    other = build(**options)
    other.load_state_dict(plain.state_dict())
    return plain, other


def loss_and_grads(module, forward):
    module.zero_grad()
    out = forward(module)
    loss = out.square().sum()  # any scalar that depends on every output
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def saved_bytes(module, forward) -> int:
    """Bytes of activations autograd keeps for the backward pass of `forward(module)`."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(module)
    return total


def assert_same(a, b, rtol=1e-5, floor=1e-2):
    """Outputs and gradients equal by norm, per tensor. The float32 default: the same math in other kernels (fused,
    compiled, NHWC) rounds differently, ~1e-7 of a tensor's norm; a tensor far smaller than the rest (a key bias, whose
    true gradient is zero) is judged against `floor` x the norm of all gradients. In float64: rtol=1e-10, floor=1e-6."""
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert_close_by_norm(out_a, out_b, rtol, "output")
    assert_same_tensors(grads_a, grads_b, rtol, "gradient", floor=floor)


def no_dropout(module):
    """Dropout's masks depend on the shapes a batch is cut into; equalities of how it is cut are checked without."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


# -- captions encoded in groups of similar length -----------------------------------------------------------------

# Rows are independent given the mask: grouping by length is the same function, so these compare in float64.
F64 = {"rtol": 1e-10, "floor": 1e-6}
LONG_CAPTIONS = CAPTIONS + ["shapes", "a large purple diamond that is above a small yellow triangle on the left"]


@pytest.mark.parametrize("text", [SCRATCH, {"tower": "sentence_transformers", "cache_dir": None},
                                  {"tower": "sentence_transformers", "cache_dir": "CACHE", "cache_dtype": "float32"}])
def test_length_groups_keep_every_rows_embedding_and_gradients(text, tmp_path, float64):
    text = {k: str(tmp_path) if v == "CACHE" else v for k, v in text.items()}
    plain, grouped = twin(lambda: build_text_tower(text, embed_dim=8).double().eval())
    tokens = plain.tokenize(LONG_CAPTIONS)
    assert tokens["attention_mask"].sum(1).unique().numel() > 3  # lengths differ: the groups cut real padding
    reference = loss_and_grads(plain, lambda m: m(tokens))
    for groups in (2, 3, len(LONG_CAPTIONS) + 4):  # more groups than rows: one row each
        assert_same(reference, loss_and_grads(grouped, lambda m: encode_by_length(m, tokens, groups)), **F64)


def test_length_groups_keep_the_default_models_text_embeddings_and_gradients(tmp_path, float64):
    """The shipped model as the config gives it (MiniLM, two trained layers, float16 cache, length_groups=2)
    against the same weights encoding each batch in one padded call; trained layers in train mode, dropout at 0.
    Each model has a cache folder of its own, so both compute their frozen prefix (a miss), then both read it."""
    cfg = OmegaConf.to_container(load_config([DEFAULT], []), resolve=True)
    assert cfg["model"]["length_groups"] == 2 and cfg["model"]["text"]["cache_dir"]

    def build(folder, **options):
        text = {**cfg["model"]["text"], "cache_dir": str(tmp_path / folder)}
        return no_dropout(CompClip({**cfg["model"], "text": text, **options}, cfg["optim"], total_steps=1).double())

    plain, grouped = twin(lambda **o: build("grouped", **o) if o else build("plain", length_groups=1),
                          length_groups=2)
    assert plain.model.length_groups == 1
    assert plain.model.text.cache_options and all(layer.training for layer in grouped.model.text.trainable)
    tokens = plain.model.text.tokenize(LONG_CAPTIONS)
    assert tokens["attention_mask"].sum(1).unique().numel() > 3
    weights = torch.linspace(0.5, 1.5, cfg["model"]["embed_dim"])  # the embeddings are unit vectors: weigh them

    def forward(model):
        return model.encode_text(LONG_CAPTIONS) * weights

    n = len(LONG_CAPTIONS)
    for attempt, counts in (("miss", (0, n)), ("hit", (n, n))):  # (hits, misses) of each model's own cache so far
        assert_same(loss_and_grads(plain, forward), loss_and_grads(grouped, forward), **F64)
        for model in (plain, grouped):
            assert (model.model.text.cache.hits, model.model.text.cache.misses) == counts, attempt
    assert plain.model.text.cache.path != grouped.model.text.cache.path


def test_length_groups_run_each_group_at_its_own_length():
    seen = []

    def tower(tokens):
        seen.append(tuple(tokens["input_ids"].shape))
        return tokens["input_ids"][:, :1].float() * 10 + tokens["attention_mask"].sum(1, keepdim=True)

    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    tokens = {"input_ids": torch.arange(4)[:, None].repeat(1, 5), "attention_mask": mask}
    out = encode_by_length(tower, tokens, 2)
    assert seen == [(2, 2), (2, 5)]  # lengths 1, 2 | 4, 5
    assert out[:, 0].tolist() == [5, 12, 24, 31]  # each row back in its place: 10 * row + its length


def test_model_encodes_text_by_length_unless_told_not_to(float64):
    plain, grouped = twin(lambda **o: CompClip({**MODEL, **o}, OPTIM), length_groups=3)
    assert plain.model.length_groups == 1 and grouped.model.length_groups == 3
    with torch.no_grad():
        assert_close_by_norm(plain.eval().encode_text(CAPTIONS), grouped.eval().encode_text(CAPTIONS), 1e-10)
    with pytest.raises(ConfigError, match="model.length_groups"):
        load_config([DEFAULT], ["model.length_groups=0"])


# -- precision -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cuda, accelerator, expected", [(True, "auto", "bf16-mixed"), (True, "gpu", "bf16-mixed"),
                                                         (True, "cpu", "32-true"), (False, "auto", "32-true")])
def test_precision_is_bf16_mixed_on_gpu_and_fp32_on_cpu(monkeypatch, cuda, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = load_config([DEFAULT], [f"trainer.accelerator={accelerator}"])
    options = trainer_options(cfg, model=None)
    assert options["precision"] == expected and "fsdp" not in options  # fsdp is ours, not a Trainer argument


@pytest.mark.parametrize("cuda, stem, norm, expected", [(True, "conv", "batch", True), (False, "conv", "batch", False),
                                                        (True, "conv", "group", False), (True, "patch", "batch", False)])
def test_batchnorm_of_the_conv_stem_is_synced_across_gpus_only(monkeypatch, cuda, stem, norm, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    model = CompClip({**MODEL, "image": {**MODEL["image"], "stem": stem, "stem_norm": norm}}, OPTIM, total_steps=1)
    assert trainer_options(load_config([DEFAULT], []), model)["sync_batchnorm"] is expected


@pytest.mark.parametrize("devices, refused", [(2, True), ("0,1", True), (1, False)])
def test_a_batchnorm_stem_is_refused_across_cpu_processes(monkeypatch, devices, refused):
    """torch syncs BatchNorm on GPUs only: on CPU processes the loss would not be the global batch's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = CompClip({**MODEL, "image": {**MODEL["image"], "stem": "conv", "stem_norm": "batch"}}, OPTIM, total_steps=1)
    cfg = load_config([DEFAULT], ["trainer.accelerator=cpu", f"trainer.devices={devices}", "trainer.strategy=ddp"])
    if refused:
        with pytest.raises(ConfigError, match="stem_norm=batch"):
            trainer_options(cfg, model)
    else:
        assert trainer_options(cfg, model)["sync_batchnorm"] is False


def test_grad_cache_with_a_batchnorm_stem_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="optim.micro_batch_size.*stem_norm=group"):
        load_config([DEFAULT], ["model.image.stem_norm=batch", "optim.micro_batch_size=8"])
    load_config([DEFAULT], ["optim.micro_batch_size=8"])  # the default stem (GroupNorm) takes GradCache


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_options(load_config([DEFAULT], ["trainer.precision=16-mixed"]), model=None)["precision"] == "16-mixed"


# -- compile ---------------------------------------------------------------------------------------------------

def encode_both(model):
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return torch.cat([model.encode_image(images), model.encode_text(CAPTIONS)])  # (8, D)


@pytest.mark.slow  # ~30 s of compiling on 2 cores; `make test-all` runs it
def test_compiled_towers_match_eager_forward_and_backward(monkeypatch):
    # aot_eager traces both towers with dynamo and AOTAutograd as inductor does, minus the C++ code generation
    # (~50 s for a tiny ViT on this CPU; the slow test below runs inductor itself).
    compile_ = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self: compile_(self, backend="aot_eager"))
    eager, compiled = twin(lambda **o: CompClip({**MODEL, **o}, OPTIM, total_steps=1), compile=True)
    assert compiled.model.image.trunk._compiled_call_impl is not None
    assert all(b._compiled_call_impl is not None for b in compiled.model.text.transformer.layers)
    assert eager.model.image.trunk._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    assert_same(loss_and_grads(eager, encode_both), loss_and_grads(compiled, encode_both))


@pytest.mark.slow
def test_inductor_compiled_towers_match_eager():
    eager, compiled = twin(lambda **o: CompClip({**MODEL, **o}, OPTIM, total_steps=1), compile=True)
    assert_same(loss_and_grads(eager, encode_both), loss_and_grads(compiled, encode_both))


# -- fused attention -------------------------------------------------------------------------------------------

def test_scratch_tower_trains_through_causal_scaled_dot_product_attention(monkeypatch):
    torch.manual_seed(0)
    tower = build_text_tower(SCRATCH, embed_dim=8).train()
    tokens = tower.tokenize(CAPTIONS)
    calls, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **rest):
        calls.append((attn_mask, is_causal))
        return sdpa(q, k, v, attn_mask, dropout_p, is_causal, **rest)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out = tower(tokens)
    assert calls == [(None, True)] * 2  # one per layer: the causal kernel, no mask tensor
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the unfused reference
        reference = tower(tokens)
    with torch.no_grad():
        inference = tower.eval()(tokens)  # nn.TransformerEncoderLayer's own fused inference path
    assert_close_by_norm(out, reference, 1e-5, "fused")
    assert_close_by_norm(out, inference, 1e-5, "inference")


def test_vit_trunk_attention_uses_scaled_dot_product_attention():
    from timm.layers import use_fused_attn

    attention = [m for m in ImageTower(embed_dim=8, **TINY_VIT).modules() if hasattr(m, "fused_attn")]
    assert len(attention) == TINY_VIT["depth"] and all(m.fused_attn == use_fused_attn() for m in attention)
    assert use_fused_attn()  # timm's default (TIMM_FUSED_ATTN unset)


# -- gradient checkpointing ------------------------------------------------------------------------------------

def image_forward(tower):
    return tower(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))


def text_forward(tower):
    return tower(tower.tokenize(CAPTIONS))


@pytest.mark.parametrize("build, forward", [
    (lambda **o: ImageTower(embed_dim=8, **TINY_VIT, **o), image_forward),
    (lambda **o: build_text_tower({**SCRATCH, **o}, embed_dim=8), text_forward)], ids=["image", "scratch_text"])
def test_grad_checkpointing_keeps_loss_and_gradients_and_stores_less(build, forward):
    plain, checkpointed = twin(build, grad_checkpointing=True)
    plain.train(), checkpointed.train()
    assert_same(loss_and_grads(plain, forward), loss_and_grads(checkpointed, forward))
    assert saved_bytes(checkpointed, forward) < 0.6 * saved_bytes(plain, forward)


def test_grad_checkpointing_is_a_model_option_of_both_towers():
    cfg = load_config([DEFAULT], ["model.image.grad_checkpointing=true", "model.text.tower=scratch",
                           "model.text.grad_checkpointing=true"])
    assert cfg.model.image.grad_checkpointing and cfg.model.text.grad_checkpointing


# -- channels-last ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [TINY_VIT, dict(model="resnet18", img_size=None, patch_size=None, depth=None,
                                                     width=None, heads=None, augment=False)], ids=["vit", "resnet"])
def test_channels_last_keeps_outputs_and_gradients(options):
    plain, nhwc = twin(lambda **o: ImageTower(embed_dim=8, **options, **o), channels_last=True)
    conv = next(m for m in nhwc.trunk.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same(loss_and_grads(plain.eval(), image_forward), loss_and_grads(nhwc.eval(), image_forward))


# -- FSDP ------------------------------------------------------------------------------------------------------

def wrapped_modules(strategy, model) -> set:
    """The modules FSDP would make units of, by the strategy's own auto-wrap policy (the root aside)."""
    units = strategy.kwargs["auto_wrap_policy"]._run_policy(model, set(), {})
    return {m for m in units if m is not model}


@pytest.mark.parametrize("text", [SCRATCH, {"tower": "sentence_transformers", "unfreeze_layers": 1}],
                         ids=["scratch", "minilm"])
def test_fsdp_strategy_wraps_every_transformer_block_of_both_towers(text):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    from lit_compclip.towers.pretrained import transformer_layers

    model = CompClip({**MODEL, "text": text}, OPTIM, total_steps=1)
    cfg = load_config([DEFAULT], ["trainer.strategy=fsdp", "trainer.fsdp.sharding_strategy=SHARD_GRAD_OP"])
    strategy = trainer_options(cfg, model)["strategy"]
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy is ShardingStrategy.SHARD_GRAD_OP
    blocks = set(model.model.image.trunk.blocks) | set(transformer_layers(model.model.text))
    assert len(blocks) == 2 + (2 if text is SCRATCH else 6)
    assert wrapped_modules(strategy, model) == blocks


def test_fsdp_refuses_the_frozen_layer_cache_in_one_line(tmp_path):
    text = {"tower": "sentence_transformers", "unfreeze_layers": 1, "cache_dir": str(tmp_path)}
    model = CompClip({**MODEL, "text": text}, OPTIM, total_steps=1)
    with pytest.raises(ConfigError, match="model.text.cache_dir.*fsdp.*cache_dir=null"):
        trainer_options(load_config([DEFAULT], ["trainer.strategy=fsdp"]), model)


def test_fsdp_block_of_a_cnn_trunk_is_its_residual_block():
    image = dict(model="resnet18", img_size=None, patch_size=None, depth=None, width=None, heads=None)
    model = CompClip({**MODEL, "image": image}, OPTIM, total_steps=1)
    assert {c.__name__ for c in block_classes(model)} == {"BasicBlock", "TransformerEncoderLayer"}


def test_fsdp_options_are_checked():
    with pytest.raises(ConfigError, match="trainer.fsdp.sharding_strategy.*FULL_SHARD"):
        load_config([DEFAULT], ["trainer.fsdp.sharding_strategy=FULL"])
    with pytest.raises(ConfigError, match="trainer.fsdp.state_dict_type"):
        load_config([DEFAULT], ["trainer.fsdp.state_dict_type=local"])


def test_lightning_refuses_fsdp_without_a_gpu():
    # The fact scripts/gpu_check_fsdp.py exists for: FSDP steps cannot be checked on this CPU machine.
    import lightning as L

    model = CompClip(MODEL, OPTIM, total_steps=1)
    strategy = trainer_options(load_config([DEFAULT], ["trainer.strategy=fsdp"]), model)["strategy"]
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy=strategy)


# -- run folders of ranks started apart ------------------------------------------------------------------------

LAUNCH_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID",
                    "WORLD_SIZE", "LIT_COMPCLIP_RUN_DIR")


@pytest.fixture
def clean_launch(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("launch", [{"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"},
                                    {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
                                    {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train"},
                                    {"NODE_RANK": "1"}], ids=["torchrun_rank1", "torchrun_rank0", "srun", "node1"])
def test_ranks_started_apart_need_one_explicit_run_dir_used_as_given(clean_launch, tmp_path, launch):
    for name, value in launch.items():
        clean_launch.setenv(name, value)
    with pytest.raises(ConfigError, match="explicit run_dir"):
        unique_run_dir(load_config([DEFAULT], ["name=x"]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("earlier")  # a relaunch: no rank may move on to run-2
    assert unique_run_dir(load_config([DEFAULT], [f"run_dir={tmp_path}/run"])) == f"{tmp_path}/run"


def test_ranks_lightning_launches_take_the_folder_rank_zero_chose(clean_launch, tmp_path):
    clean_launch.setenv("LOCAL_RANK", "1")
    clean_launch.setenv("LIT_COMPCLIP_RUN_DIR", str(tmp_path / "r-2"))
    assert unique_run_dir(load_config([DEFAULT], [f"run_dir={tmp_path}/r"])) == str(tmp_path / "r-2")


# -- the cluster recipes ---------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_slurm_recipe_is_valid_bash():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "slurm_train.sbatch")], check=True)


@pytest.mark.slow  # ~30 s; two-process training is covered by test_ddp.py; `make test-all` runs it
def test_torchrun_recipe_trains_two_cpu_processes(tmp_path):
    # The recipe as a user runs it: torchrun starts both ranks (TorchElasticEnvironment), DDP over gloo.
    from lit_compclip.synth import generate

    world = tmp_path / "world"
    generate(str(world), train_families=16, eval_families=8, shard_size=16, probe_size=4, plain_lists=1)  # 2+ shards per rank
    run = tmp_path / "run"
    args = [f"synth.out_dir={world}", "synth.auto=false", f"data.train_shards={world}/train", f"data.val_shards={world}/val",
            "probes.suites={}", "data.resampled=true", "data.samples_per_epoch=32", "data.batch_size=8",
            "data.num_workers=0", "data.shuffle_buffer=16", "model.text.tower=scratch", "model.text.width=32",
            "model.text.layers=1", "model.text.heads=2", "model.image.img_size=16", "model.image.depth=1",
            "model.image.width=32", "model.image.heads=2", "model.embed_dim=16", "trainer.accelerator=cpu",
            "trainer.strategy=ddp", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "wandb.mode=disabled"]
    env = dict(os.environ, PYTHON=sys.executable, NPROC_PER_NODE="2", RUN_DIR=str(run), OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "torchrun_train.sh"), *args], env=env, cwd=tmp_path,
                          timeout=240, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert not list(tmp_path.glob("run-*")) and not (tmp_path / "runs").exists()  # both ranks used RUN_DIR
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr
