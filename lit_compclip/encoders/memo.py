"""One probe pass encodes each distinct caption and image once, whichever probes share them.

SugarCrepe++ reuses SugarCrepe's images and captions, What'sUp writes each image under two subsets, and several
probes repeat captions; within a pass the weights do not change, so an embedding computed once is the embedding.
`PassMemo` wraps any probe encoder for one pass. What does not depend on the weights (how many tokens a caption
keeps) is kept across passes by `TruncationCounts`.
"""

from __future__ import annotations

import hashlib

import torch

from lit_compclip.probes.base import truncation_flags


def image_key(image) -> tuple:
    """A PIL image's identity by content: the same file read twice, or two files with equal pixels, share it."""
    return image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest()


class TruncationCounts:
    """Per caption: is it cut by the encoder's tokenizer? Asked once per caption for a whole run."""

    def __init__(self):
        self.flags: dict[str, bool] = {}

    def count(self, count_truncated, texts: list[str]) -> int:
        missing = [t for t in dict.fromkeys(texts) if t not in self.flags]
        if missing:
            self.flags.update(zip(missing, truncation_flags(count_truncated, missing, len(missing))))
        return sum(self.flags[t] for t in texts)


class TransformedImages:
    """An image's model input (the deterministic eval transform's output) by content, kept from one probe pass to
    the next up to `budget_mb`: the weights change between passes, the pixels and the transform do not."""

    def __init__(self, budget_mb: float = 512):
        self.budget, self.used = budget_mb * 2 ** 20, 0
        self.tensors: dict[tuple, torch.Tensor] = {}

    def get(self, image, transform) -> torch.Tensor:
        key = image_key(image)
        x = self.tensors.get(key)
        if x is None:
            x = transform(image.convert("RGB"))
            size = x.numel() * x.element_size()
            if self.used + size <= self.budget:
                self.tensors[key] = x
                self.used += size
        return x


class PassMemo:
    """`encoder` with its embeddings remembered for one probe pass (make a new one after the weights change)."""

    def __init__(self, encoder, truncation: TruncationCounts | None = None):
        self.encoder = encoder
        self.truncation = truncation
        self.texts: dict[str, torch.Tensor] = {}
        self.images: dict[tuple, torch.Tensor] = {}
        self.encoded = {"texts": 0, "images": 0}  # how many the wrapped encoder actually ran on

    def __getattr__(self, name):  # max_tokens, info, ...: the wrapped encoder's
        if name == "encoder":
            raise AttributeError(name)
        found = getattr(self.encoder, name)
        if name == "count_truncated" and self.truncation is not None:
            return lambda texts: self.truncation.count(found, list(texts))
        return found

    def encode_text(self, texts) -> torch.Tensor:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.texts]
        if missing:
            out = self.encoder.encode_text(missing)
            self.texts.update(zip(missing, out))
            self.encoded["texts"] += len(missing)
        return torch.stack([self.texts[t] for t in texts])

    def encode_image(self, images) -> torch.Tensor:
        keys = [image_key(im) for im in images]
        first = {}
        for key, im in zip(keys, images):
            if key not in self.images:
                first.setdefault(key, im)
        if first:
            out = self.encoder.encode_image(list(first.values()))
            self.images.update(zip(first, out))
            self.encoded["images"] += len(first)
        return torch.stack([self.images[k] for k in keys])
