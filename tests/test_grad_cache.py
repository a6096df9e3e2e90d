"""GradCache (optim.micro_batch_size): a step encoded micro-batch by micro-batch is the step on the whole batch.

The claims are mathematical equalities, so the steps run in float64 (Lightning's 64-true precision) and compare per
tensor by norm: what is left is rounding (~1e-15), which no CPU's summation order can push near the tolerance, while a
real difference (another dropout mask, batch statistics) is orders of magnitude above it. Each claim holds on a small
model and on the shipped default (conv stem with GroupNorm, MiniLM with two trained layers, length groups)."""

import contextlib
import copy

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, IterableDataset

from helpers import DEFAULT, TINY_MODEL, assert_close_by_norm, assert_same_tensors, close_by_norm, world_overrides
from lit_compclip.config import ConfigError, load_config
from lit_compclip.training.module import CompClip
from lit_compclip.training.run import train

SMALL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
MINILM = {"tower": "sentence_transformers", "model": "all-MiniLM-L6-v2", "unfreeze_layers": 1, "max_seq_len": 16}
# A large eps makes AdamW's first step linear in the gradient, so the weights compare as tightly as the gradients.
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1.0, "warmup_steps": 0,
         "min_lr_ratio": 0.0}
RTOL = 1e-9  # float64: rounding is ~1e-15 of a tensor's norm
CAPTIONS = ["The red circle is left of the blue square. The background is grey.", "A green star.",
            "The white cross is above the red star.", "A blue square that is larger than the green circle.",
            "The picture has a small yellow triangle at the top.", "A red square below a white circle.",
            "The blue star is right of the green cross. The background is black.", "A white triangle.",
            "The green square is under the red triangle.", "A yellow circle left of a blue cross."]
NEGATIVES = ["The blue circle is left of the red square.", "A white star.", "The red cross is above the white star."]


def default_model(cache_dir) -> dict:
    """The shipped model, exactly as the config gives it; only the text cache lives in this test's folder."""
    return OmegaConf.to_container(load_config([DEFAULT], [f"cache_dir={cache_dir}"]).model, resolve=True)


# The equality tests build every model and tensor in float64 (the cached text prefix too: the default dtype).
in_float64 = pytest.mark.usefixtures("float64")


@pytest.fixture(params=["small", "default"])
def config(request, tmp_path):
    """(model options, batch size, image size) of a configuration under test."""
    if request.param == "small":
        return SMALL, 8, 16
    return default_model(tmp_path / "cache"), len(CAPTIONS), 64


def make_batch(n: int, size: int, negatives: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(n, 3, size, size, generator=g), "caption": CAPTIONS[:n],
             "skipped": 0}
    if negatives:
        batch["negatives"] = list(NEGATIVES)
    return batch


def make_model(model: dict, micro_batch_size=None, **changes) -> CompClip:
    L.seed_everything(0, verbose=False)
    return CompClip({**model, **changes}, {**OPTIM, "micro_batch_size": micro_batch_size}, total_steps=1).double()


def without_dropout(model: CompClip) -> CompClip:
    """Dropout's masks depend on how a batch is cut, so the whole-batch equality is checked with it off (its replay
    is checked with it on, below)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


class Once(IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        yield self.batch


class Record(L.Callback):
    """The step's gradients as the optimizer's step used them (after any clipping: Lightning computes and clips them
    inside `step`'s closure, so they are read after it), the updated weights, and the RNG state the step began in."""

    def __init__(self):
        self.out = {}

    def on_train_start(self, trainer, module):
        def grads(optimizer, args, kwargs):
            self.out["grads"] = {n: p.grad.detach().clone() for n, p in module.named_parameters()
                                 if p.grad is not None}
        trainer.optimizers[0].register_step_post_hook(grads)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.out["rng"] = torch.get_rng_state()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.out["weights"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def step(model: CompClip, batch: dict, gradient_clip_val=None) -> dict:
    """One float64 optimizer step through a Lightning Trainer: {"grads", "weights", "rng", "loss"}."""
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        gradient_clip_val=gradient_clip_val, precision="64-true")
    trainer.fit(model, DataLoader(Once(batch), batch_size=None))
    return {**record.out, "loss": trainer.callback_metrics["train/loss"]}


def forward_sizes(model: CompClip) -> list[int]:
    """Records how many samples each image/text forward of `model` sees."""
    sizes = []
    encode_image, encode_text = model.encode_image, model.encode_text
    model.encode_image = lambda images: (sizes.append(len(images)), encode_image(images))[1]
    model.encode_text = lambda texts: (sizes.append(len(texts)), encode_text(texts))[1]
    return sizes


def assert_same_step(got: dict, want: dict):
    assert_close_by_norm(got["loss"], want["loss"], RTOL, "loss")
    assert_same_tensors(got["grads"], want["grads"], RTOL, "gradient")
    assert_same_tensors(got["weights"], want["weights"], RTOL, "weight")


def total_norm(grads: dict) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))


@pytest.mark.parametrize("negatives", [False, True])
@pytest.mark.parametrize("micro", [3, 8])  # 3: uneven micro-batches (3, 3, 2); 8: the whole batch at once
@in_float64
def test_grad_cache_step_equals_the_full_batch_step(micro, negatives):
    batch = make_batch(8, 16, negatives)
    want = step(make_model(SMALL), batch)
    model = make_model(SMALL, micro)
    sizes = forward_sizes(model)
    got = step(model, batch)
    assert not model.automatic_optimization
    texts = 8 + len(batch.get("negatives", []))
    if micro < 8:  # every sample is encoded twice (pass 1 without grad, pass 3 with), a micro-batch at a time
        assert max(sizes) == micro and sum(sizes) == 2 * (8 + texts)
    else:  # micro_batch_size >= the batch: off, one pass
        assert sizes == [8, texts]
    assert_same_step(got, want)


@in_float64
def test_grad_cache_step_equals_the_full_batch_step_on_the_default_model(tmp_path):
    model_options = default_model(tmp_path / "cache")
    assert model_options["image"]["stem"] == "conv" and model_options["image"]["stem_norm"] == "group"
    assert model_options["text"]["unfreeze_layers"] > 0 and model_options["length_groups"] > 1
    batch = make_batch(len(CAPTIONS), 64, negatives=True)  # 10 images in 4, 4, 2; 13 texts in 4, 4, 4, 1
    want = step(without_dropout(make_model(model_options)), batch)
    model = without_dropout(make_model(model_options, 4))
    sizes = forward_sizes(model)
    got = step(model, batch)
    assert max(sizes) == 4 and sum(sizes) == 2 * (10 + 13)
    assert any(name.startswith("model.text.st.") for name in got["grads"])  # the MiniLM layers trained
    assert any("patch_embed.backbone" in name for name in got["grads"])  # and the conv stem
    assert_same_step(got, want)


@in_float64
def test_with_a_batchnorm_stem_grad_cache_is_not_the_full_batch_step(tmp_path):
    """Documents why the default stem normalises per image: BatchNorm's statistics are each micro-batch's own."""
    model_options = default_model(tmp_path / "cache")
    model_options["image"] = {**model_options["image"], "stem_norm": "batch"}
    batch = make_batch(len(CAPTIONS), 64, negatives=False)
    want = step(without_dropout(make_model(model_options)), batch)
    got = step(without_dropout(make_model(model_options, 4)), batch)
    stem = [n for n in want["grads"] if "patch_embed.backbone" in n]
    assert stem and not all(close_by_norm(got["grads"][n], want["grads"][n], 1e-3) for n in stem)


@in_float64
def test_grad_cache_clips_gradients_like_the_trainer(config):
    model_options, n, size = config
    batch, clip = make_batch(n, size, negatives=False), 0.05
    unclipped = step(without_dropout(make_model(model_options)), batch)
    assert total_norm(unclipped["grads"]) > 4 * clip  # clipping really changes this step
    want = step(without_dropout(make_model(model_options)), batch, gradient_clip_val=clip)
    model = without_dropout(make_model(model_options, 3))
    model.manual_clip_val = clip  # as train() sets it (test_train_clips_grad_cache_steps_at_the_configured_value)
    got = step(model, batch)
    assert total_norm(want["grads"]) == pytest.approx(clip, rel=1e-4)  # the optimizer got clipped gradients
    assert_same_step(got, want)  # GradCache's clipped gradients, and so its step, are the Trainer's
    scale = "model.log_logit_scale"
    assert not close_by_norm(got["weights"][scale], unclipped["weights"][scale], 1e-6)


@pytest.mark.parametrize("text, length_groups", [(MINILM, 1), (MINILM, 2), ("default", None)],
                         ids=["minilm", "minilm_length_groups", "default_model"])
@in_float64
def test_grad_cache_replays_the_dropout_masks_of_its_first_pass(text, length_groups, tmp_path):
    """With dropout active (the trained MiniLM layers), pass 3 must recompute exactly the embeddings of pass 1: the
    step's gradients are those of the loss over micro-batches encoded with grad from the same RNG state."""
    if text == "default":
        model_options, n, size = default_model(tmp_path / "cache"), len(CAPTIONS), 64
        model = make_model(model_options, 3)
    else:
        n, size = 8, 16
        model = make_model(SMALL, 3, text=text, length_groups=length_groups)
    batch = make_batch(n, size, negatives=True)
    batch["caption"][1] = "a blue square that is larger than the red circle"  # lengths differ within a micro-batch
    reference = copy.deepcopy(model)
    got = step(model, batch)

    steps = reference._micro_steps(batch)
    torch.set_rng_state(got["rng"])
    image_emb, text_emb, _ = reference._encode_steps(steps)  # with grad this time
    loss = reference._contrastive(image_emb, text_emb, hard=True)
    loss.backward()
    assert_close_by_norm(got["loss"], loss, RTOL, "loss")
    assert_same_tensors(got["grads"], {n: p.grad for n, p in reference.named_parameters() if p.grad is not None},
                        RTOL, "gradient")
    assert any(name.startswith("model.text.st.") for name in got["grads"])  # the MiniLM layers trained
    # and dropout is really active: another RNG state gives other text embeddings
    assert not close_by_norm(reference._encode_steps(steps)[1], text_emb, 1e-3)


def test_micro_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="optim.micro_batch_size"):
        load_config([DEFAULT], ["optim.micro_batch_size=0"])
    assert load_config([DEFAULT], ["optim.micro_batch_size=16"]).optim.micro_batch_size == 16


@contextlib.contextmanager
def optimizer_step_norms():
    """The total norm of the gradients every optimizer step inside the block is handed (after any clipping)."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(total_norm(dict(enumerate(grads))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield norms
    finally:
        handle.remove()


def test_train_clips_grad_cache_steps_at_the_configured_value(world, tmp_path):
    """Lightning refuses Trainer(gradient_clip_val=...) with manual optimization, so train() hands the config's value
    to GradCache's own clipping: a value far below the step's gradient norm is the norm the optimizer gets."""
    clip = 1e-3
    overrides = world_overrides(world) + TINY_MODEL + [
        "trainer.fast_dev_run=true", f"run_dir={tmp_path}/run", "optim.micro_batch_size=3",
        f"trainer.gradient_clip_val={clip}", "data.hard_negatives.source=scene"]
    with optimizer_step_norms() as norms:
        result = train(load_config([DEFAULT], overrides))
    assert result["probes"]["probe/sugarcrepe/n"] == 8 * 7
    # one step (fast_dev_run); unclipped, its gradients' norm is tens (a value dropped on the way would leave it so)
    assert norms == [pytest.approx(clip, rel=1e-3)]
