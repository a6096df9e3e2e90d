import pytest
import torch
from PIL import Image

from helpers import assert_close_by_norm

from lit_compclip.towers import TEXT_TOWERS, build_text_tower
from lit_compclip.towers.image import ImageTower

CAPTIONS = ["a large red circle to the left of a small blue square", "a blue square", "shapes"]


@pytest.mark.parametrize("name", sorted(TEXT_TOWERS))
def test_every_text_tower_forward_and_backward(name, random_lm):
    options = {"tower": name, "max_seq_len": 16}
    if name == "transformers":  # no default model: a tiny random decoder folder
        options["model"] = random_lm("qwen2")
    tower = build_text_tower(options, embed_dim=32)
    out = tower(tower.tokenize(CAPTIONS))
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    out.sum().backward()
    assert any(p.grad is not None for p in tower.parameters() if p.requires_grad)
    assert tower.count_truncated(["word " * 40, "short"]) == 1


def test_sentence_transformers_trains_only_the_last_layers_and_head():
    tower = build_text_tower({"tower": "sentence_transformers", "unfreeze_layers": 2}, embed_dim=8)
    trainable = {n.split(".layer.")[-1].split(".")[0] for n, p in tower.named_parameters()
                 if p.requires_grad and ".layer." in n}
    assert trainable == {"4", "5"}  # MiniLM-L6: blocks 4 and 5 of 0..5
    assert all(not p.requires_grad for n, p in tower.named_parameters() if "embeddings" in n)
    tower.train()
    assert not tower.st[0].auto_model.embeddings.training  # frozen part kept deterministic
    assert tower.trainable[0].training


def test_sentence_transformers_rejects_too_many_unfrozen_layers():
    with pytest.raises(ValueError, match="unfreeze_layers=9.*6 layers"):
        build_text_tower({"tower": "sentence_transformers", "unfreeze_layers": 9}, embed_dim=8)


def test_scratch_tower_ignores_padding_after_the_caption(float64):
    torch.manual_seed(0)
    tower = build_text_tower({"tower": "scratch", "width": 32, "layers": 2, "heads": 2}, embed_dim=8).eval()
    alone = tower(tower.tokenize(["a red circle"]))
    padded = tower(tower.tokenize(["a red circle", "a much longer caption that forces padding on the first"]))
    assert_close_by_norm(padded[0], alone[0], 1e-10)  # causal: a row never reads past its last token


def test_unknown_text_tower_option_names_it():
    with pytest.raises(ValueError, match="unknown option 'layer'.*did you mean 'layers'"):
        build_text_tower({"tower": "scratch", "layer": 2}, embed_dim=8)


def test_image_tower_size_overrides_and_transforms():
    tower = ImageTower(embed_dim=16, img_size=32, patch_size=8, depth=2, width=64, heads=2)
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    train_tf, eval_tf = tower.transforms()
    img = Image.new("RGB", (48, 48))
    img.paste((255, 0, 0), (0, 0, 24, 48))  # red left half
    x = eval_tf(img)
    assert x.shape == (3, 32, 32) and x[0, :, :8].mean() > x[0, :, -8:].mean()
    names = repr(train_tf)
    assert "Flip" not in names and "ColorJitter" not in names  # would falsify "left of" and colour words


def test_image_tower_unknown_model_suggests():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch16_22'.*did you mean"):
        ImageTower(embed_dim=8, model="vit_tiny_patch16_22")


def test_pretrained_image_weights_fail_clearly_offline():
    with pytest.raises(RuntimeError, match="pretrained weights .* not available offline"):
        ImageTower(embed_dim=8, pretrained=True, img_size=32, patch_size=8, depth=1, width=64, heads=2)


def test_sincos_position_embedding_is_fixed_and_distinct_per_patch():
    tower = ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pos_embed="sincos")
    pos = tower.trunk.pos_embed
    assert not pos.requires_grad and not pos[0, 0].any()  # class token gets no position
    patches = pos[0, 1:]  # (16, 32)
    assert torch.cdist(patches, patches).add(torch.eye(16) * 1e3).min() > 0.1


def test_flatten_pool_makes_the_embedding_depend_on_where_things_are():
    torch.manual_seed(0)
    tower = ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pool="flatten").eval()
    img = torch.zeros(1, 3, 32, 32)
    left, right = img.clone(), img.clone()
    left[..., 8:16, 0:8], right[..., 8:16, 24:32] = 1.0, 1.0  # one bright patch, left or right
    assert not torch.allclose(tower(left), tower(right), atol=1e-4)
    assert tower.proj.in_features == 16 * 32


def test_image_tower_rejects_unknown_pool_and_pos_embed():
    with pytest.raises(ValueError, match="pool='max'.*'model' or 'flatten'"):
        ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pool="max")
    with pytest.raises(ValueError, match="pos_embed='rope'"):
        ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pos_embed="rope")


def test_conv_stem_replaces_the_patchify_layer_with_stride_2_convolutions_on_the_same_grid():
    torch.manual_seed(0)
    tower = ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pool="flatten",
                       stem="conv")
    convs = [m for m in tower.trunk.patch_embed.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [((3, 3), (2, 2), 8), ((3, 3), (2, 2), 16),
                                                                         ((3, 3), (2, 2), 32)]
    assert tuple(tower.trunk.patch_embed.grid_size) == (4, 4) and tower.proj.in_features == 16 * 32
    img = torch.zeros(2, 3, 32, 32)
    img[1, :, 6:10, 6:10] = 1.0  # a small square across the border of four 8-pixel patches
    out = tower(img)
    assert out.shape == (2, 8) and not torch.allclose(out[0], out[1], atol=1e-4)
    out.sum().backward()
    assert convs[0].weight.grad is not None and convs[0].weight.grad.abs().sum() > 0  # the stem trains


def _token_field(stem_convs) -> int:
    """Width in pixels of the input a middle token of the conv stem depends on (through its convolutions: a
    BatchNorm stem in eval mode, since GroupNorm's statistics span the whole image)."""
    torch.manual_seed(0)
    tower = ImageTower(embed_dim=8, img_size=64, patch_size=8, depth=1, width=32, heads=2, pool="flatten",
                       stem="conv", stem_norm="batch", stem_convs=stem_convs).eval()
    img = torch.randn(1, 3, 64, 64, requires_grad=True)
    tower.trunk.patch_embed(img)[0, 4 * 8 + 4].sum().backward()  # token (4, 4) of the 8x8 grid
    cols = img.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    return int(cols.max() - cols.min() + 1)


def test_stem_convs_add_stride_1_convolutions_after_each_halving_and_widen_what_a_token_sees():
    # three stride-2 3x3 convolutions see 15 px (an object of the synthetic world is 19-26 px); a stride-1 one
    # after halving i adds 2 * 2**(i+1) px
    fields = {tuple(c): _token_field(c) for c in ([0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 2])}
    assert fields == {(0, 0, 0): 15, (0, 0, 1): 31, (0, 1, 1): 39, (1, 1, 1): 43, (0, 0, 2): 47}
    tower = ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, pool="flatten",
                       stem="conv", stem_convs=[1, 0, 1])
    convs = [m for m in tower.trunk.patch_embed.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.stride[0], c.out_channels) for c in convs] == [(2, 8), (1, 8), (2, 16), (2, 32), (1, 32)]
    assert tuple(tower.trunk.patch_embed.grid_size) == (4, 4)  # the same tokens
    for bad in ([0, 1], [0, -1, 0]):
        with pytest.raises(ValueError, match="stem_convs=.*one count >= 0 per halving"):
            ImageTower(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2, stem="conv",
                       stem_convs=bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stem="pixels"), "stem='pixels': choose 'patch' or 'conv'"), (dict(stem="conv", patch_size=6), "power of 2"),
    (dict(stem="conv", pretrained=True), "no pretrained weights"),
    (dict(stem="conv", model="resnet18", img_size=None, depth=None, heads=None), "needs a ViT")])
def test_image_tower_rejects_unknown_stem_and_odd_patch_sizes(kwargs, match):
    args = dict(embed_dim=8, img_size=32, patch_size=8, depth=1, width=32, heads=2) | kwargs
    with pytest.raises(ValueError, match=match):
        ImageTower(**args)
