"""model.image.patch_dropout (FLIP's patch dropout through timm's PatchDropout): fewer patch tokens reach the ViT's
blocks in training, the class token always among them, a new draw each step; none dropped in evaluation; at 0 the
model is today's, weights, module tree and random-number use alike; refused in one line where it cannot apply."""

import pytest
import torch
from torch import nn

from lit_compclip.cli import main
from lit_compclip.towers.image import ImageTower
from helpers import DEFAULT, one_line_error

TINY = {"img_size": 32, "patch_size": 8, "depth": 1, "width": 64, "heads": 2, "pool": "model"}  # 16 patches
STEMS = {"patch": {"stem": "patch"}, "conv": {"stem": "conv", "stem_convs": [0, 0, 0]}}  # conv: timm's HybridEmbed
SCRATCH_TEXT = {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}


def tower(seed: int = 0, **options) -> ImageTower:
    torch.manual_seed(seed)
    return ImageTower(embed_dim=8, **{**TINY, **options})


def tokens_into_blocks(model: ImageTower, images: torch.Tensor) -> torch.Tensor:
    """The (B, tokens, C) sequence the first transformer block is given."""
    seen = []
    handle = model.trunk.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        model(images)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("stem", STEMS)
def test_training_drops_patch_tokens_keeping_the_class_token_and_evaluation_keeps_all(stem):
    model = tower(patch_dropout=0.5, **STEMS[stem])
    images = torch.randn(3, 3, 32, 32)
    everything = tokens_into_blocks(model.eval(), images)  # (3, 1 + 16, 64)
    assert everything.shape[1] == 1 + 16
    kept = tokens_into_blocks(model.train(), images)  # (3, 1 + 8, 64)
    assert kept.shape[1] == 1 + 8
    assert torch.equal(kept[:, 0], everything[:, 0])  # the class token, first and whole
    for i in range(len(images)):  # each kept token is one of the image's own patch tokens, none twice
        match = (kept[i, 1:, None] == everything[i, None, 1:]).all(-1)  # (8, 16)
        assert (match.sum(1) == 1).all() and (match.sum(0) <= 1).all()


def test_each_training_step_draws_its_own_tokens():
    model = tower(patch_dropout=0.5).train()
    images = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    first = model(images)
    torch.manual_seed(2)
    second = model(images)
    torch.manual_seed(1)
    again = model(images)
    assert not torch.allclose(first, second) and torch.equal(first, again)  # the draw is torch's generator's


@pytest.mark.parametrize("stem", STEMS)
def test_evaluation_embeds_as_the_same_weights_without_patch_dropout(stem):
    on, off = tower(patch_dropout=0.5, **STEMS[stem]), tower(patch_dropout=0.0, **STEMS[stem])
    want = off.state_dict()
    assert on.state_dict().keys() == want.keys() and all(torch.equal(t, want[k]) for k, t in on.state_dict().items())
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(on.eval()(images), off.eval()(images))


def test_at_zero_the_trunk_is_timms_own_model_weights_modules_and_random_draws_alike():
    import timm

    ours = tower(seed=3, stem="patch", patch_dropout=0.0)
    torch.manual_seed(3)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=1,
                              embed_dim=64, num_heads=2)
    assert isinstance(ours.trunk.patch_drop, nn.Identity)
    assert [type(m) for m in ours.trunk.modules()] == [type(m) for m in plain.modules()]
    got, want = ours.trunk.state_dict(), plain.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(t, want[k]) for k, t in got.items())
    images = torch.randn(4, 3, 32, 32)
    torch.manual_seed(5)
    embedded = ours.trunk.train()(images)
    after_ours = torch.get_rng_state()
    torch.manual_seed(5)
    assert torch.equal(embedded, plain.train()(images)) and torch.equal(after_ours, torch.get_rng_state())


def test_the_default_model_has_no_patch_dropout():
    import lit_compclip

    torch.manual_seed(0)
    model = lit_compclip.create_model(text=SCRATCH_TEXT)
    assert isinstance(model.image.trunk.patch_drop, nn.Identity)
    torch.manual_seed(0)
    same = lit_compclip.create_model(image={"patch_dropout": 0.0}, text=SCRATCH_TEXT)
    want = model.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in same.state_dict().items())


@pytest.mark.parametrize("image, message", [
    ({"patch_dropout": 0.5}, "model.image.patch_dropout needs model.image.pool=model"),  # the default pool: flatten
    ({"pool": "model", "patch_dropout": 1.0}, "model.image.patch_dropout=1.0: "),
    ({"pool": "model", "patch_dropout": -0.1}, "model.image.patch_dropout=-0.1: "),
    ({"model": "resnet18", "img_size": None, "patch_size": None, "depth": None, "width": None, "heads": None,
      "stem": "patch", "pool": "model", "patch_dropout": 0.5}, "needs a ViT whose patch tokens timm can drop"),
])
def test_create_model_refuses_patch_dropout_where_it_cannot_apply_in_one_line(image, message):
    import lit_compclip

    with pytest.raises(ValueError) as e:
        lit_compclip.create_model(image=image, text=SCRATCH_TEXT)
    one_line_error(e, message)


@pytest.mark.parametrize("overrides, message", [
    (["model.image.patch_dropout=0.5"], "needs model.image.pool=model"),
    (["model.image.pool=model", "model.image.patch_dropout=1.0"], "must be in [0, 1)"),
    (["model.image.pool=model", "model.image.patch_dropout=-0.5"], "must be in [0, 1)"),
])
def test_compclip_config_refuses_patch_dropout_in_one_line(overrides, message, capsys):
    assert main(["config", DEFAULT, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compclip config: error: config key 'model.image.patch_dropout'")
    assert message in err
    assert main(["config", DEFAULT, "model.image.pool=model", "model.image.patch_dropout=0.5"]) == 0
    assert "patch_dropout: 0.5" in capsys.readouterr().out
