"""transformers CLIP / SigLIP / SigLIP2 models as probe encoders: `hf:PATH_OR_NAME` (a folder or the local HF cache).

The model's own processor prepares images and text, its get_image_features / get_text_features embed them, fp32."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from lit_compclip.errors import first_line
from lit_compclip.errors import ConfigError

# SigLIP was trained on text padded to the tokenizer's full length (its pooled output is the last token); its
# processor does not say so itself (SigLIP2's does: padding="max_length", max_length=64).
PAD_TO_MAX = {"siglip", "siglip2"}
HUGE = 10 ** 6  # tokenizers without a length of their own report ~1e30 as model_max_length


def _features(out) -> torch.Tensor:
    """transformers >= 5 returns the projected embedding as `pooler_output`; earlier versions the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unloadable(target: str, local: bool, e: Exception) -> ConfigError:
    hint = "" if local else (f" (not in the local Hugging Face cache: download it once with `hf download {target}`, "
                             "or pass a folder)")
    return ConfigError(f"hf:{target}: {'folder' if local else 'model'} cannot be loaded{hint} ({type(e).__name__}: "
                       f"{first_line(e, 160)})")


class HFEncoder:
    """A transformers model with get_image_features / get_text_features and its AutoProcessor, local files only."""

    @staticmethod
    def check(target: str) -> tuple[str, bool]:
        """(the name or folder to load, whether it is a local folder); reads only the model's config."""
        from transformers import AutoConfig

        name = os.path.expanduser(target)
        local = target.startswith((".", "/", "~")) or os.path.exists(name)
        if local and not os.path.isdir(name):
            raise ConfigError(f"hf:{target}: folder {name!r} not found")
        try:
            AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as e:
            raise _unloadable(target, local, e) from None
        return name, local

    def __init__(self, target: str, device: str = "cpu"):
        from transformers import AutoModel, AutoProcessor

        name, local = self.check(target)
        try:
            model = AutoModel.from_pretrained(name, local_files_only=True, dtype=torch.float32)
            processor = AutoProcessor.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as e:
            raise _unloadable(target, local, e) from None
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ConfigError(f"hf:{target}: {type(model).__name__} has no get_image_features / get_text_features "
                              f"(a CLIP, SigLIP or SigLIP2 model is needed)")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "image_processor", None) is None:
            raise ConfigError(f"hf:{target}: its processor ({type(processor).__name__}) lacks a tokenizer or an "
                              f"image processor")
        self.model = model.to(device).eval()
        self.processor, self.device = processor, torch.device(device)
        model_type = model.config.model_type
        self.text_kwargs = self._text_kwargs(processor, model, model_type)
        self.context_length = int(self.text_kwargs["max_length"])
        self.info = {"model": target, "pretrained": "hf", "model_class": type(model).__name__,
                     "model_type": model_type, "dtype": "float32", "device": str(device),
                     "processor": type(processor).__name__,
                     "image_processor": processor.image_processor.to_dict(),
                     "tokenizer": type(tokenizer).__name__, "text_kwargs": dict(self.text_kwargs),
                     "context_length": self.context_length}

    @staticmethod
    def _text_kwargs(processor, model, model_type: str) -> dict:
        """The processor's own text defaults, completed: truncation at the model's length, SigLIP padded to it."""
        kwargs = dict(getattr(processor, "text_kwargs", None) or {})
        limit = processor.tokenizer.model_max_length
        if not limit or limit > HUGE:
            text_config = getattr(model.config, "text_config", model.config)
            limit = getattr(text_config, "max_position_embeddings", None)
        kwargs.setdefault("max_length", limit)
        kwargs.setdefault("truncation", True)
        kwargs.setdefault("padding", "max_length" if model_type in PAD_TO_MAX else True)
        return kwargs

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        return F.normalize(_features(self.model.get_image_features(**inputs)).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_text(self, texts) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", **self.text_kwargs).to(self.device)
        return F.normalize(_features(self.model.get_text_features(**inputs)).float(), dim=-1).cpu()

    @property
    def max_tokens(self) -> int:
        """Captions keep their first `max_tokens` tokens, special tokens included."""
        return self.context_length

    def count_truncated(self, texts) -> int:
        ids = self.processor.tokenizer(list(texts))["input_ids"]
        return sum(len(i) > self.context_length for i in ids)
