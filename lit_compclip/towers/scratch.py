"""The paper's baseline text tower: a CLIP-style causal transformer trained from scratch on a given tokenizer."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_compclip.towers.devices import to_device
from lit_compclip.towers.sentence_transformers import resolve_model_path


class ScratchTextTower(nn.Module):
    """Token + position embeddings, pre-norm causal transformer, features taken at the last real token (CLIP's EOT)."""

    def __init__(self, embed_dim: int, tokenizer: str = "all-MiniLM-L6-v2", width: int = 256, layers: int = 4,
                 heads: int = 4, max_seq_len: int = 64, grad_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoTokenizer

        path = resolve_model_path(tokenizer)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise ValueError(f"model.text.tokenizer: cannot load tokenizer {tokenizer!r} ({type(e).__name__}); give "
                             f"a local folder or the bundled 'all-MiniLM-L6-v2'") from None
        if width % heads:
            raise ValueError(f"model.text.width={width} must be divisible by model.text.heads={heads}")
        self.max_seq_len = max_seq_len
        self.grad_checkpointing = grad_checkpointing  # recompute each block in backward instead of storing it
        self.token_embedding = nn.Embedding(len(self.tokenizer), width)
        self.position_embedding = nn.Parameter(torch.empty(max_seq_len, width).normal_(std=0.01))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        mask = torch.full((max_seq_len, max_seq_len), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_len, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def count_truncated(self, texts: list[str]) -> int:
        return sum(len(ids) > self.max_seq_len for ids in self.tokenizer(texts)["input_ids"])

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = to_device(tokens, self.token_embedding.weight.device)
        ids, attention = tokens["input_ids"], tokens["attention_mask"]
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.position_embedding[:n]  # (B, T, W)
        # Causal attention means padding after the last real token never reaches it; no padding mask needed.
        # With is_causal, a mask and no padding mask, training calls F.scaled_dot_product_attention(is_causal=True)
        # (the fused kernels); in inference the layer's own fused fast path runs.
        mask = self.causal_mask[:n, :n]
        for block in self.transformer.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, src_mask=mask, is_causal=True, use_reentrant=False)
            else:
                x = block(x, src_mask=mask, is_causal=True)  # (B, T, W)
        x = self.ln_final(x)
        last = attention.sum(dim=1) - 1  # (B,) index of the final [SEP]/EOT token
        return self.proj(x[torch.arange(x.shape[0]), last])  # (B, embed_dim)
