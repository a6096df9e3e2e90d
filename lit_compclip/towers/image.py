"""Image tower: any timm model by name (optionally resized) plus a linear projection, and its transforms."""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch
from torch import nn

from lit_compclip.errors import first_line

HUB_TIMEOUT = 5  # seconds: one look at the Hugging Face hub before deciding it cannot be reached


@contextlib.contextmanager
def _hub_quiet():
    """huggingface_hub logs a warning for every retry of a download it cannot reach (22 lines over a minute): kept
    off the terminal, where a failure is one line of ours."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_hub_weights(model: str) -> None:
    """Fail in seconds, with one line, when timm's pretrained weights for `model` are on the Hugging Face hub but
    neither in the local cache nor reachable: huggingface_hub retries an unreachable hub with backoff for about a
    minute before it gives up. Cached weights, a reachable hub and weights kept elsewhere are left to timm."""
    import huggingface_hub as hub
    from huggingface_hub.errors import HfHubHTTPError
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model)
    except RuntimeError:  # an unknown tag: timm.create_model says so itself
        return
    repo, _, revision = (getattr(cfg, "hf_hub_id", None) or "").partition("@")
    if not repo:
        return
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                 "pytorch_model.bin"]
    if any(isinstance(hub.try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files):
        return
    try:
        hub.get_hf_file_metadata(hub.hf_hub_url(repo, files[0], revision=revision or None), timeout=HUB_TIMEOUT)
    except HfHubHTTPError:  # the hub answered (a file it lacks, a gated repo): timm's download reports the rest
        return
    except Exception as e:  # no network, offline mode, a timeout
        raise RuntimeError(f"model.image.pretrained: pretrained weights for timm model {model!r} are not available "
                           f"offline: not in the Hugging Face cache, and the hub ({hub.constants.ENDPOINT}) cannot be "
                           f"reached ({type(e).__name__}); set model.image.pretrained=false, or fetch them once where "
                           f"it can be (`hf download {repo}`)") from None


def fix_sincos_pos_embed(trunk: nn.Module) -> None:
    """Replace a ViT's learned position embedding by a fixed 2-D sin-cos one (as big_vision and MoCo v3 do).

    Trained from scratch on little data, a learned embedding starts as noise and positions ("left of", "above")
    are learned late; the fixed one gives every patch its place from the first step."""
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    pos = getattr(trunk, "pos_embed", None)
    grid = getattr(getattr(trunk, "patch_embed", None), "grid_size", None)
    if not isinstance(pos, nn.Parameter) or grid is None:
        raise ValueError(f"model.image.pos_embed='sincos' needs a ViT with a learned pos_embed, "
                         f"not {type(trunk).__name__}")
    n_prefix = pos.shape[1] - grid[0] * grid[1]  # class token(s) that get position embeddings
    table = build_sincos2d_pos_embed(list(grid), dim=pos.shape[-1])  # (H*W, C)
    with torch.no_grad():
        pos.zero_()
        pos[0, n_prefix:] = table
    pos.requires_grad_(False)


def flat_tokens(trunk: nn.Module) -> int:
    """Patch tokens of a ViT, for pool='flatten': a projection with weights per place, so that where an object
    sits changes the embedding from the first step (pooled tokens must first learn to carry it)."""
    grid = getattr(getattr(trunk, "patch_embed", None), "grid_size", None)
    if grid is None or not hasattr(trunk, "num_prefix_tokens"):
        raise ValueError(f"model.image.pool='flatten' needs a ViT, not {type(trunk).__name__}")
    return grid[0] * grid[1]


PATCH_DROPOUT_NEEDS_VIT = ("model.image.patch_dropout needs a ViT whose patch tokens timm can drop (its "
                           "patch_drop_rate), not timm model {model!r}; set model.image.patch_dropout=0")


def check_patch_dropout(rate, pool: str) -> None:
    """FLIP's patch dropout (Li et al., 2023), as timm's PatchDropout does it: in training each image keeps a random
    int(N * (1 - rate)) of its N patch tokens (class and register tokens always), in evaluation all of them."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"model.image.patch_dropout={rate!r}: the fraction of patch tokens dropped in training must "
                         f"be in [0, 1)")
    if rate and pool == "flatten":
        raise ValueError("model.image.patch_dropout needs model.image.pool=model: pool='flatten' projects every patch "
                         "token by its place, so none can be dropped")


STEM_NORMS = ("group", "batch")


def conv_stem(patch_size: int | None, width: int | None, norm: str = "group", groups: int = 8,
              extra: Sequence[int] | None = None):
    """A ViT's patchify stem replaced by 3x3 convolutions of stride 2, one per halving of `patch_size` (timm's
    ConvStem inside its HybridEmbed): "early convolutions help transformers see better" (Xiao et al., 2021). Each
    token then sees across its patch's borders, so shapes that span two or three patches are told apart sooner.

    `extra[i]` 3x3 convolutions of stride 1 follow halving i at its resolution and width: after the last one each
    widens what a token sees by two patches (patch 8: 15 px, 31 px with one); after the earlier ones they add
    layers where outlines are still a few pixels wide."""
    from functools import partial

    from timm.layers import GroupNormAct
    from timm.models.vision_transformer_hybrid import ConvStem, HybridEmbed

    if not patch_size or patch_size < 2 or patch_size & (patch_size - 1) or not width:
        raise ValueError(f"model.image.stem='conv' needs model.image.patch_size a power of 2 (>= 2) and "
                         f"model.image.width set, not patch_size={patch_size!r}, width={width!r}")
    if norm not in STEM_NORMS:
        raise ValueError(f"model.image.stem_norm={norm!r}: choose {' or '.join(STEM_NORMS)}")
    halvings = patch_size.bit_length() - 1
    extra = [0] * halvings if extra is None else extra
    if not isinstance(extra, Sequence) or len(extra) != halvings or any(not isinstance(n, int) or n < 0 for n in extra):
        raise ValueError(f"model.image.stem_convs={extra!r}: one count >= 0 per halving of patch_size={patch_size} "
                         f"({halvings} of them), e.g. {[0] * halvings}")
    widths = [max(8, width // 2 ** (halvings - 1 - i)) for i in range(halvings)]  # e.g. 32, 64, 128
    channels, strides = [], []
    for w, n in zip(widths, extra):
        channels += [w] * (1 + n)
        strides += [2] + [1] * n
    if norm == "batch":  # Xiao et al.'s choice; its statistics depend on the batch (see README, "What is exact")
        norm_layer = nn.BatchNorm2d
    else:
        # GroupNorm normalises each image on its own, so an embedding never depends on the rest of the batch:
        # GradCache's micro-batches, DDP's shards and evaluation compute the function of one whole-batch step.
        # Measured on the default run, two seeds each (docs/RESEARCH_LOG.md): 8 groups and 1 group both keep the
        # probes near BatchNorm's; a per-pixel LayerNorm lost most of the stem's gain.
        if any(c % groups for c in channels[:-1]):
            raise ValueError(f"model.image.stem_groups={groups} must divide the conv stem's normalised channels "
                             f"{tuple(channels[:-1])} (from model.image.width={width})")
        norm_layer = partial(GroupNormAct, num_groups=groups)
    backbone = ConvStem(depth=len(channels), channels=tuple(channels), stride=tuple(strides), act_layer=nn.GELU,
                        norm_layer=norm_layer)
    return partial(HybridEmbed, backbone=backbone)


class ImageTower(nn.Module):
    """A timm trunk with its classifier removed, followed by a bias-free projection to `embed_dim`."""

    def __init__(self, embed_dim: int, model: str = "vit_tiny_patch16_224", pretrained: bool = False,
                 img_size: int | None = 64, patch_size: int | None = 8, depth: int | None = 4,
                 width: int | None = 128, heads: int | None = 4, pos_embed: str = "learn", pool: str = "model",
                 stem: str = "patch",  # the config's default is "conv" (lit_compclip/config/schema.py)
                 stem_norm: str = "group", stem_groups: int = 8, stem_convs: Sequence[int] | None = None,
                 augment: bool = True, crop_scale: tuple[float, float] = (0.9, 1.0),
                 grad_checkpointing: bool = False, channels_last: bool = False, patch_dropout: float = 0.0):
        super().__init__()
        import timm
        from timm.layers import PatchDropout

        if not timm.is_model(model):
            from lit_compclip.registry import suggest
            raise ValueError(f"model.image.model: unknown timm model {model!r}{suggest(model, timm.list_models())}")
        # Only the overrides that are set are passed, so any timm family works with its own defaults.
        overrides = {"img_size": img_size, "patch_size": patch_size, "depth": depth, "embed_dim": width,
                     "num_heads": heads}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if stem == "conv":  # the convolutions take the patch size's stride; the ViT then sees 1x1 "patches"
            if pretrained:
                raise ValueError("model.image.stem='conv' has no pretrained weights (they hold a patchify stem); "
                                 "set model.image.stem=patch with model.image.pretrained=true")
            overrides.update(embed_layer=conv_stem(patch_size, width, stem_norm, stem_groups, stem_convs), patch_size=1)
        elif stem != "patch":
            raise ValueError(f"model.image.stem={stem!r}: choose 'patch' or 'conv'")
        check_patch_dropout(patch_dropout, pool)
        if patch_dropout:  # passed only when on: at 0 timm's Identity stays, and the model is today's
            overrides["patch_drop_rate"] = patch_dropout
        sizes = {k: v for k, v in overrides.items() if k not in ("embed_layer", "patch_drop_rate")}
        if pretrained:
            check_hub_weights(model)
        try:
            with _hub_quiet():
                self.trunk = timm.create_model(model, pretrained=pretrained, num_classes=0, **overrides)
        except TypeError as e:
            if "patch_drop_rate" in str(e):
                raise ValueError(PATCH_DROPOUT_NEEDS_VIT.format(model=model)) from None
            hint = "; model.image.stem='conv' needs a ViT: set model.image.stem=patch" if stem == "conv" else ""
            raise ValueError(f"model.image.model: timm model {model!r} does not take these size overrides {sizes}: "
                             f"{e}{hint}") from None
        except Exception as e:  # hub/network failures surface as many exception types
            if pretrained:
                raise RuntimeError(f"model.image.pretrained: pretrained weights for timm model {model!r} cannot be "
                                   f"loaded ({type(e).__name__}: {first_line(e, 160)}); set "
                                   f"model.image.pretrained=false or put the weights in the Hugging Face cache "
                                   f"first") from None
            if isinstance(e, (ValueError, AssertionError)):  # timm checks the sizes it is given with these
                raise ValueError(f"model.image: timm cannot build {model!r} with {sizes}: {first_line(e)}") from e
            raise
        if patch_dropout and not isinstance(getattr(self.trunk, "patch_drop", None), PatchDropout):
            raise ValueError(PATCH_DROPOUT_NEEDS_VIT.format(model=model))  # a model that took the option and ignored it
        if pos_embed == "sincos":
            fix_sincos_pos_embed(self.trunk)
        elif pos_embed != "learn":
            raise ValueError(f"model.image.pos_embed={pos_embed!r}: choose 'learn' or 'sincos'")
        if pool == "model":  # the trunk's own pooling (a ViT's class token, a CNN's average)
            features = self.trunk.num_features
        elif pool == "flatten":
            features = self.trunk.num_features * flat_tokens(self.trunk)
        else:
            raise ValueError(f"model.image.pool={pool!r}: choose 'model' or 'flatten'")
        self.pool = pool
        self.proj = nn.Linear(features, embed_dim, bias=False)
        self.augment = augment
        self.crop_scale = tuple(crop_scale)
        if grad_checkpointing:
            try:
                self.trunk.set_grad_checkpointing(True)
            except (AssertionError, NotImplementedError, AttributeError):
                raise ValueError(f"model.image.grad_checkpointing: timm model {model!r} does not support gradient "
                                 f"checkpointing") from None
        self.channels_last = channels_last
        if channels_last:  # only 4-D weights (convolutions) change layout; .to(device) keeps it
            self.trunk.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # (B, C, H, W) stored as NHWC
        if self.pool == "flatten":
            tokens = self.trunk.forward_features(images)  # (B, prefix + N, C)
            return self.proj(tokens[:, self.trunk.num_prefix_tokens:].flatten(1))  # (B, embed_dim)
        return self.proj(self.trunk(images))  # (B, embed_dim), not normalised

    def transforms(self):
        """(train, eval) transforms from the timm model's data config; no flips or colour jitter, which would
        falsify captions that name sides and colours."""
        from timm.data import create_transform, resolve_model_data_config

        cfg = resolve_model_data_config(self.trunk)
        size = getattr(self.trunk.patch_embed, "img_size", None) if hasattr(self.trunk, "patch_embed") else None
        input_size = (3, *size) if size else cfg["input_size"]  # the pretrained cfg keeps 224 after resizing
        common = dict(input_size=input_size, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"])
        evaluate = create_transform(**common, is_training=False, crop_pct=1.0)
        if not self.augment:
            return evaluate, evaluate
        train = create_transform(**common, is_training=True, hflip=0.0, color_jitter=None,
                                 scale=self.crop_scale, ratio=(1.0, 1.0))
        return train, evaluate
