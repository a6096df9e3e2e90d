"""GradCache (optim.micro_batch_size): a step encoded micro-batch by micro-batch is the step on the whole batch."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_compclip.config import ConfigError, load_config
from lit_compclip.model import CompClip
from lit_compclip.train import train
from test_train import TINY_MODEL, world, world_overrides  # noqa: F401 (fixtures)

MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
MINILM = {"tower": "sentence_transformers", "model": "all-MiniLM-L6-v2", "unfreeze_layers": 1, "max_seq_len": 16}
# A large eps makes AdamW's first step linear in the gradient, so the weights compare as tightly as the gradients.
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1.0, "warmup_steps": 0,
         "min_lr_ratio": 0.0}


def make_batch(negatives: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    captions = [f"a {c} {s}" for c, s in zip("red blue green white red blue green white".split(),
                                             "circle square star cross star circle cross square".split())]
    batch = {"image": torch.randn(8, 3, 16, 16, generator=g), "caption": captions, "skipped": 0}
    if negatives:
        batch["negatives"] = ["a white circle", "a green star", "a red square"]
    return batch


def make_model(micro_batch_size=None, text=None, length_groups=1) -> CompClip:
    L.seed_everything(0, verbose=False)
    return CompClip({**MODEL, "text": text or MODEL["text"], "length_groups": length_groups},
                    {**OPTIM, "micro_batch_size": micro_batch_size}, total_steps=1)


class Once(IterableDataset):
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        yield self.batch


class Record(L.Callback):
    """The step's gradients (as the optimizer gets them), updated weights, and the RNG state it started in."""

    def __init__(self):
        self.out = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.out["rng"] = torch.get_rng_state()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.out["grads"] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.out["weights"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def step(model: CompClip, batch: dict, gradient_clip_val=None) -> dict:
    """One optimizer step through a Lightning Trainer: {"grads", "weights", "rng", "loss" (the logged train/loss)}."""
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        gradient_clip_val=gradient_clip_val)
    trainer.fit(model, DataLoader(Once(batch), batch_size=None))
    return {**record.out, "loss": trainer.callback_metrics["train/loss"]}


def forward_sizes(model: CompClip) -> list[int]:
    """Records how many samples each image/text forward of `model` sees."""
    sizes = []
    encode_image, encode_text = model.encode_image, model.encode_text
    model.encode_image = lambda images: (sizes.append(len(images)), encode_image(images))[1]
    model.encode_text = lambda texts: (sizes.append(len(texts)), encode_text(texts))[1]
    return sizes


def assert_same_step(got: dict, want: dict, grads: bool = True):
    assert torch.allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    if grads:
        assert got["grads"].keys() == want["grads"].keys()
        for name, grad in want["grads"].items():
            assert torch.allclose(got["grads"][name], grad, rtol=1e-4, atol=1e-6), name
    for name, weight in want["weights"].items():
        assert torch.allclose(got["weights"][name], weight, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("negatives", [False, True])
@pytest.mark.parametrize("micro", [3, 8])  # 3: uneven micro-batches (3, 3, 2); 8: the whole batch at once
def test_grad_cache_step_equals_the_full_batch_step(micro, negatives):
    batch = make_batch(negatives)
    want = step(make_model(), batch)
    model = make_model(micro)
    sizes = forward_sizes(model)
    got = step(model, batch)
    assert not model.automatic_optimization
    texts = 8 + len(batch.get("negatives", []))
    if micro < 8:  # every sample is encoded twice (pass 1 without grad, pass 3 with), a micro-batch at a time
        assert max(sizes) == micro and sum(sizes) == 2 * (8 + texts)
    else:  # micro_batch_size >= the batch: off, one pass
        assert sizes == [8, texts]
    assert_same_step(got, want)


def test_grad_cache_clips_gradients_like_the_trainer():
    batch, clip = make_batch(False), 0.05
    unclipped = step(make_model(), batch)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in unclipped["grads"].values()]))
    assert norm > 4 * clip  # clipping changes this step
    want = step(make_model(), batch, gradient_clip_val=clip)
    model = make_model(3)
    model.manual_clip_val = clip  # as train() sets it from trainer.gradient_clip_val
    got = step(model, batch)
    assert_same_step(got, want, grads=False)  # GradCache's recorded gradients are after clipping, the Trainer's before
    assert not torch.allclose(got["weights"]["log_logit_scale"], unclipped["weights"]["log_logit_scale"])


@pytest.mark.parametrize("length_groups", [1, 2])  # 2: each micro-batch's captions in two calls, masks in turn
def test_grad_cache_replays_the_dropout_masks_of_its_first_pass(length_groups):
    """With dropout active (the trained MiniLM layer), pass 3 must recompute exactly the embeddings of pass 1: the
    step's gradients are those of the loss over micro-batches encoded with grad from the same RNG state."""
    batch = make_batch(True)
    batch["caption"][1] = "a blue square that is larger than the red circle"  # lengths differ within a micro-batch
    model = make_model(3, text=MINILM, length_groups=length_groups)
    model.train()  # Lightning keeps the modes modules were built in, and Hugging Face builds in eval mode
    reference = copy.deepcopy(model)
    got = step(model, batch)

    steps = reference._micro_steps(batch)
    torch.set_rng_state(got["rng"])
    image_emb, text_emb, _ = reference._encode_steps(steps)  # with grad this time
    reference._contrastive(image_emb, text_emb, hard=True).backward()
    assert torch.allclose(got["loss"], reference._contrastive(image_emb, text_emb, hard=True))
    for name, p in reference.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name
    assert any(name.startswith("text.st.") for name in got["grads"])  # the MiniLM layer trained
    # and dropout is really active: another RNG state gives other text embeddings
    assert not torch.allclose(reference._encode_steps(steps)[1], text_emb)


def test_micro_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="optim.micro_batch_size"):
        load_config([], ["optim.micro_batch_size=0"])
    assert load_config([], ["optim.micro_batch_size=16"]).optim.micro_batch_size == 16


def test_train_runs_grad_cache_with_clipping_and_hard_negatives(world, tmp_path):
    # Lightning refuses Trainer(gradient_clip_val=...) with manual optimization: train() hands it to the model
    overrides = world_overrides(world) + TINY_MODEL + [
        "trainer.fast_dev_run=true", f"run_dir={tmp_path}/run", "optim.micro_batch_size=3",
        "trainer.gradient_clip_val=1.0", "data.hard_negatives.source=scene"]
    result = train(load_config([], overrides))
    assert result["probes"]["probe/sugarcrepe/n"] == 8 * 7
