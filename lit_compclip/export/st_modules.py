"""This package's sentence-transformers module: the image tower before its projection (the eval transform, the timm
trunk with this package's options, its pooling), which no standard module holds. Saved as a config JSON and
safetensors weights; sentence-transformers imports it from modules.json by name (`trust_remote_code=True`)."""

from __future__ import annotations

import os
from typing import Any

import torch
from sentence_transformers.base.modules import InputModule
from torch import nn

from lit_compclip.model import import_timm_without_wandb
from lit_compclip.towers.image import ImageTower, flat_tokens


def load_image(item: Any):
    """A PIL image as RGB (as the probes and training read images); a path sentence-transformers took for an image
    (an existing image file) is opened."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, os.PathLike)) and os.path.isfile(item):
        with Image.open(item) as im:
            return im.convert("RGB")
    raise ValueError(f"CompClipImage takes PIL images or image file paths, not {type(item).__name__}")


class CompClipImage(InputModule):
    """PIL images -> `sentence_embedding` (B, features): lit_compclip's eval transform, then its ImageTower with the
    projection left out (a standard Dense module follows it in the exported pipeline). `image` is the config's
    `model.image` section the tower was built from."""

    config_keys = ["image"]
    config_file_name = "compclip_image_config.json"
    save_in_root = False

    def __init__(self, image: dict[str, Any]):
        super().__init__()
        import_timm_without_wandb()
        # A fresh trunk: the saved weights replace it, nothing is downloaded
        self.image = {**image, "pretrained": False}
        self.tower = ImageTower(embed_dim=1, **self.image)
        self.tower.proj = nn.Identity()  # ImageTower.forward itself (channels_last, pooling), before the projection
        _, self.transform = self.tower.transforms()
        tokens = flat_tokens(self.tower.trunk) if self.tower.pool == "flatten" else 1
        self.features = self.tower.trunk.num_features * tokens  # what the projection takes

    @property
    def modalities(self) -> list[str]:
        return ["image"]

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.transform(load_image(x)) for x in inputs])}  # (B, 3, H, W)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        features["sentence_embedding"] = self.tower(features["pixel_values"])  # (B, features)
        return features

    def get_embedding_dimension(self) -> int:
        return self.features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)  # safetensors always: never a pickle

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs) -> CompClipImage:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        config = cls.load_config(model_name_or_path, **hub)
        if "image" not in config:
            raise ValueError(f"{model_name_or_path}/{subfolder}: no {cls.config_file_name} with the image options")
        module = cls(**config)
        return cls.load_torch_weights(model_name_or_path, model=module, **hub)  # every name and shape, or an error
