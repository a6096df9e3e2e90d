"""Image tower: any timm model by name (optionally resized) plus a linear projection, and its transforms."""

from __future__ import annotations

import torch
from torch import nn


class ImageTower(nn.Module):
    """A timm trunk with its classifier removed, followed by a bias-free projection to `embed_dim`."""

    def __init__(self, embed_dim: int, model: str = "vit_tiny_patch16_224", pretrained: bool = False,
                 img_size: int | None = 64, patch_size: int | None = 8, depth: int | None = 4,
                 width: int | None = 192, heads: int | None = 3, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.9, 1.0)):
        super().__init__()
        import timm

        if not timm.is_model(model):
            from lit_compclip.registry import suggest
            raise ValueError(f"unknown timm model {model!r}{suggest(model, timm.list_models())}")
        # Only the overrides that are set are passed, so any timm family works with its own defaults.
        overrides = {"img_size": img_size, "patch_size": patch_size, "depth": depth, "embed_dim": width,
                     "num_heads": heads}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        try:
            self.trunk = timm.create_model(model, pretrained=pretrained, num_classes=0, **overrides)
        except TypeError as e:
            raise ValueError(f"timm model {model!r} does not take these size overrides {overrides}: {e}") from None
        except Exception as e:  # hub/network failures surface as many exception types
            if not pretrained:
                raise
            raise RuntimeError(f"pretrained weights for timm model {model!r} are not available offline "
                               f"({type(e).__name__}); set model.image.pretrained=false or put the weights in the "
                               f"Hugging Face cache first") from None
        self.proj = nn.Linear(self.trunk.num_features, embed_dim, bias=False)
        self.augment = augment
        self.crop_scale = tuple(crop_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
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
