"""The CLIP-style model itself, a plain nn.Module: an image tower and a text tower into one normalised embedding space,
and the learned temperature. Training (lit_compclip.training) wraps it; lit_compclip.load reads a trained one."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lit_compclip.towers import build_text_tower, encode_by_length
from lit_compclip.towers.image import ImageTower
from lit_compclip.towers.pretrained import transformer_layers

# Keys of the config's model section that shape the training loss, not the model (CompClip reads them).
LOSS_KEYS = ("local_loss",)


def import_timm_without_wandb() -> None:
    """Import timm with wandb hidden: timm imports wandb, when installed, for its own training script's summaries
    (timm.utils.summary), which costs 0.9 s and loads a logger into every process that only encodes. Nothing here
    calls it; a wandb imported before (the trainer's logger) is left as it is, and it imports normally after."""
    if "timm" in sys.modules or "wandb" in sys.modules:
        return
    sys.modules["wandb"] = None  # `import wandb` raises ImportError, which timm catches
    try:
        import timm  # noqa: F401
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]


class CompClipModel(nn.Module):
    """encode_image(images) and encode_text(texts) give L2-normalised (B, embed_dim) embeddings; `transform` turns a
    PIL image into the image tower's input (`train_transform`: with training's crops); `logit_scale` is the clamped
    temperature the loss multiplies similarities by. Built from the config's model section (`model:` in a run's
    config.yaml); lit_compclip.create_model fills in the defaults."""

    def __init__(self, embed_dim: int, image: Mapping[str, Any], text: Mapping[str, Any], init_logit_scale: float,
                 max_logit_scale: float, length_groups: int = 1, compile: bool = False,
                 compile_mode: str | None = None):
        super().__init__()
        import_timm_without_wandb()
        # Built in this order (image, text, scale), which fixes the initial weights a seed gives.
        self.image = ImageTower(embed_dim=embed_dim, **image)
        self.text = build_text_tower(text, embed_dim=embed_dim)
        if compile:  # in place (weight names unchanged); each compiles on first use: slow first steps
            options = {"mode": compile_mode} if compile_mode else {}
            self.image.trunk.compile(**options)
            for block in transformer_layers(self.text):  # blocks only: a tower's own Python (tokens, cache) stays eager
                block.compile(**options)
        # one element, not 0-d: FSDP refuses scalar parameters
        self.log_logit_scale = nn.Parameter(torch.full((1,), float(init_logit_scale)))
        self.max_logit_scale = float(max_logit_scale)
        # Captions are encoded in this many groups of similar length (towers.encode_by_length): the same embeddings
        self.length_groups = int(length_groups)
        self.train_transform, self.transform = self.image.transforms()
        # Hugging Face builds its models in eval mode: without this the trained text layers would run without dropout
        # in training until something switched the model back.
        self.train()

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> CompClipModel:
        """The model a config's model section describes (its loss options left to the trainer)."""
        return cls(**{k: v for k, v in model.items() if k not in LOSS_KEYS})

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale).squeeze(0)  # 0-d, as the losses take it

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The text tower's tokens of `texts` (input_ids, attention_mask, ...), padded and cut to its max_seq_len."""
        return self.text.tokenize(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images, each as `transform` makes it -> (B, D) unit vectors."""
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B captions -> (B, D) unit vectors."""
        # The tokens stay on the host: the text tower moves them to the device once it has read what it needs.
        return F.normalize(encode_by_length(self.text, self.tokenize(texts), self.length_groups), dim=-1)

    def forward(self, images: torch.Tensor | None = None, texts: list[str] | None = None):
        """(image embeddings, text embeddings, logit scale), as open_clip's CLIP returns them; None for an input not
        given."""
        image_emb = self.encode_image(images) if images is not None else None
        text_emb = self.encode_text(texts) if texts is not None else None
        return image_emb, text_emb, self.logit_scale
