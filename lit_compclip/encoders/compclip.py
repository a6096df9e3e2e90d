"""This project's own checkpoints as a probe encoder (`compclip:PATH`), and the in-training wrapper it builds on."""

from __future__ import annotations

import torch


class ModuleEncoder:
    """What a probe may see of a CompClipModel (lit_compclip.model): encode_image / encode_text on the CPU in fp32,
    nothing else."""

    def __init__(self, model, inputs=None):
        self.module = model
        self.inputs = inputs  # encoders.memo.TransformedImages: model inputs kept across probe passes

    def _input(self, image) -> torch.Tensor:
        m = self.module
        if self.inputs is None:
            return m.transform(image.convert("RGB"))
        return self.inputs.get(image, m.transform)

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        m = self.module
        x = torch.stack([self._input(im) for im in images]).to(m.device)  # (N, 3, H, W)
        with torch.autocast(device_type=m.device.type, enabled=False):
            return m.encode_image(x).float().cpu()

    @torch.no_grad()
    def encode_text(self, texts) -> torch.Tensor:
        m = self.module
        with torch.autocast(device_type=m.device.type, enabled=False):
            return m.encode_text(list(texts)).float().cpu()

    def count_truncated(self, texts) -> int:
        return self.module.text.count_truncated(list(texts))

    @property
    def max_tokens(self) -> int:
        """The truncation policy: captions keep their first `max_tokens` tokens (special tokens included)."""
        return self.module.text.max_seq_len


class CompClipEncoder(ModuleEncoder):
    """A lit_compclip training checkpoint (read weights-only) or native export folder in eval mode on `device`, its weights in the dtypes the
    run kept them in (fp32, or a frozen text prefix in the run's `frozen_dtype`); encoded with autocast off."""

    @staticmethod
    def check(target: str) -> None:
        from lit_compclip.checkpoints import read_checkpoint_file
        from lit_compclip.factory import is_native_folder, native_config

        if is_native_folder(target):  # `compclip export`'s native folder: its config read and checked
            native_config(target)
            return
        read_checkpoint_file(target, mmap=True)  # tensors memory-mapped: cheap, and as strict as loading

    def __init__(self, target: str, device: str = "cpu"):
        from lit_compclip.factory import load_as_run

        super().__init__(load_as_run(target, device))  # the run's text cache: scored as training's probes were
        text = self.module.text
        tokenizer = getattr(text, "tokenizer", None)
        if tokenizer is None:  # a sentence-transformers tower keeps it inside
            tokenizer = getattr(getattr(text, "st", None), "tokenizer", None)
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in self.module.parameters()})
        self.info = {"model": "compclip", "pretrained": target, "dtype": "/".join(dtypes), "device": str(device),
                     "text_tower": type(text).__name__, "text_model": getattr(text, "model_name", None),
                     "tokenizer": type(tokenizer).__name__ if tokenizer is not None else None,
                     "context_length": self.max_tokens, "image_preprocess": str(self.module.transform)}
