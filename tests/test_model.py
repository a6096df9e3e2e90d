"""The module's optimizer: parameter groups and the learning-rate schedule, text_frozen_steps included."""

import pytest
import torch

from lit_compclip.training.module import CompClip, cosine_schedule

MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "sentence_transformers", "unfreeze_layers": 1}}
OPTIM = {"lr": 1e-3, "text_lr": 1e-4, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 2,
         "min_lr_ratio": 0.0}


def group_rates(frozen: int, steps: int = 8):
    model = CompClip(MODEL, {**OPTIM, "text_frozen_steps": frozen}, total_steps=steps)
    setup = model.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    pretrained = {id(p) for p in model.model.text.st.parameters()}
    text = [i for i, g in enumerate(optimizer.param_groups) if any(id(p) in pretrained for p in g["params"])]
    rates = []
    for _ in range(steps):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return model, optimizer, text, rates


# Hand-computed: warm-up (step + 1) / warmup, then 1/2 (1 + cos(pi p)) with p = (step - warmup) / (total - warmup).
# 8 steps, warm-up 2: p = 0, 1/6, 2/6, ... 5/6 from step 2 (cos(pi/6) = 0.8660254, cos(5 pi/6) = -0.8660254).
EIGHT_STEPS = [0.5, 1.0, 1.0, 0.9330127, 0.75, 0.5, 0.25, 0.0669873]
# The text layers after 3 frozen steps: 5 steps, warm-up 2, p = 0, 1/3, 2/3 (cos(pi/3) = 0.5).
FIVE_STEPS_AFTER_THREE = [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.75, 0.25]


def test_pretrained_text_layers_wait_then_warm_up_while_the_rest_trains_from_step_0():
    _, optimizer, text, rates = group_rates(frozen=3)
    assert text, "no parameter group holds the pretrained text layers"
    others = [i for i in range(len(optimizer.param_groups)) if i not in text]
    for step in range(8):
        assert all(rates[step][i] == pytest.approx(1e-3 * EIGHT_STEPS[step], rel=1e-6) for i in others), step
        assert all(rates[step][i] == pytest.approx(1e-4 * FIVE_STEPS_AFTER_THREE[step], rel=1e-6) for i in text), step


def test_cosine_schedule_warms_up_linearly_then_decays_to_its_floor():
    assert [cosine_schedule(s, 2, 8) for s in range(8)] == pytest.approx(EIGHT_STEPS, rel=1e-6)
    # with a floor of 0.1: 0.1 + 0.9 x the cosine; the floor is reached at `total` and kept after it
    assert [cosine_schedule(s, 0, 4, 0.1) for s in range(6)] == pytest.approx(
        [1.0, 0.1 + 0.9 * 0.8535534, 0.55, 0.1 + 0.9 * 0.1464466, 0.1, 0.1], rel=1e-6)
    assert [cosine_schedule(s, 4, 10) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear


def test_frozen_text_layers_do_not_move_while_waiting():
    model = CompClip(MODEL, {**OPTIM, "text_frozen_steps": 2}, total_steps=6)
    setup = model.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    layer = model.model.text.trainable[0]
    before = [p.detach().clone() for p in layer.parameters()]
    proj = model.model.text.proj.weight.detach().clone()
    images = torch.randn(4, 3, 16, 16)
    captions = ["a red circle on the left", "a blue square", "a green star at the top", "a white cross"]
    for _ in range(2):
        loss, _, _ = model._loss({"image": images, "caption": captions}, gather=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert not torch.equal(proj, model.model.text.proj.weight)  # the new projection head trains from the start


def decay_split(model):
    groups = model.configure_optimizers()["optimizer"].param_groups
    return ({id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]},
            {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]})


def test_weight_decay_groups_survive_parameters_flattened_by_a_wrapper():
    model = CompClip(MODEL, OPTIM, total_steps=4)
    decay, no_decay = decay_split(model)
    assert decay and no_decay and id(model.model.log_logit_scale) in no_decay
    for p in model.parameters():  # what FSDP does to every parameter before configure_optimizers runs
        p.data = p.data.flatten()
    assert decay_split(model) == (decay, no_decay)


def test_trained_text_layers_run_with_dropout_from_the_first_step():
    model = CompClip(MODEL, OPTIM, total_steps=4)  # Hugging Face builds its models in eval mode
    assert model.training and all(layer.training for layer in model.model.text.trainable)
    assert not model.model.text.st[0].auto_model.embeddings.training  # frozen layers stay deterministic


# --- the logit scale: one element, because FSDP refuses 0-d parameters ---------------------------------------------

def shipped_model() -> CompClip:
    from omegaconf import OmegaConf

    from lit_compclip.config import load_config

    cfg = load_config(["experiments/default.yaml"], [])
    return CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=10)


def test_the_shipped_model_has_no_0_d_parameter_which_fsdp_would_refuse():
    # torch's FSDP raises "FSDP doesn't support scalar parameters" at wrap time (found on an H200, 2026-12-04)
    model = shipped_model()
    assert [n for n, p in model.named_parameters() if p.ndim == 0] == []
    # one element for FSDP; the losses still take a 0-d scale
    assert model.model.log_logit_scale.shape == (1,) and model.logit_scale.ndim == 0

