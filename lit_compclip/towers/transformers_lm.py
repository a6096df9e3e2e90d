"""Pretrained text tower: a plain pretrained language model through transformers' AutoModel (the paper's
Gemma-2-2B; Llama, Qwen2/3, Mistral, ...), from a local folder or the Hugging Face cache, never the network.

Its hidden states are pooled over real tokens (`mean`), at the last real token (`last`) or at an end-of-sequence
token appended to every caption (`eos`: a decoder's only position that has read the whole caption when it stays
causal). Shared machinery (last N trained, bidirectional tail, prefix cache): pretrained.py.
"""

from __future__ import annotations

import torch

from lit_compclip.errors import first_line
from lit_compclip.towers.pretrained import PretrainedTextTower, last_token_index, position_ids

POOLING = ("mean", "last", "eos")


class TransformersTower(PretrainedTextTower):
    """AutoModel + pooling + projection; the last `unfreeze_layers` blocks trained, optionally bidirectional."""

    def __init__(self, embed_dim: int, model: str, unfreeze_layers: int = 4, bidirectional: bool = False,
                 pooling: str = "mean", max_seq_len: int = 64, padding_side: str | None = None,
                 cache_dir: str | None = None, cache_budget_gb: float = 4.0, cache_dtype: str = "float32",
                 grad_checkpointing: bool = False, attn_implementation: str | None = None,
                 frozen_dtype: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in POOLING:
            raise ValueError(f"model.text.pooling={pooling!r}: choose one of {', '.join(POOLING)}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"model.text.padding_side={padding_side!r}: choose left, right or null (the tokenizer's)")
        if not max_seq_len >= 2:
            raise ValueError(f"model.text.max_seq_len={max_seq_len!r}: must be >= 2")
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            config = AutoConfig.from_pretrained(model, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
            self.lm = AutoModel.from_pretrained(model, local_files_only=True, dtype=torch.float32, **kwargs)
        except Exception as e:  # a missing folder, an uncached hub name, an unknown architecture
            raise ValueError(f"model.text.model: cannot load {model!r} with transformers ({type(e).__name__}: "
                             f"{first_line(e)}); give a local folder or a model already in the Hugging "
                             f"Face cache (nothing is downloaded)") from None
        if config.is_encoder_decoder:
            raise ValueError(f"model.text.model: {model!r} is an encoder-decoder ({config.model_type}); give an "
                             f"encoder or a decoder language model")
        if padding_side:
            self.tokenizer.padding_side = padding_side
        if self.tokenizer.pad_token_id is None:  # decoders often ship none; padding is masked, any id will do
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"model.text.model: the tokenizer of {model!r} has neither a padding nor an "
                                 f"end-of-sequence token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pooling = pooling
        self.append_eos = pooling == "eos" and not self._adds_eos()
        if pooling == "eos" and self.tokenizer.eos_token_id is None:
            raise ValueError(f"model.text.pooling=eos: the tokenizer of {model!r} has no end-of-sequence token")
        self._setup(embed_dim, self.lm.config.hidden_size, model, unfreeze_layers, bidirectional, cache_dir,
                    cache_budget_gb, cache_dtype, grad_checkpointing, frozen_dtype, max_seq_len)

    def _adds_eos(self) -> bool:
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[-1] == self.tokenizer.eos_token_id

    def cache_key_extra(self) -> tuple:
        return (self.append_eos, getattr(self.lm.config, "_attn_implementation", None))

    def _ids(self, texts: list[str]) -> list[list[int]]:
        room = self.max_seq_len - int(self.append_eos)  # an appended EOS is never cut off
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=room)["input_ids"]
        return [row + [self.tokenizer.eos_token_id] for row in ids] if self.append_eos else ids

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": self._ids(texts)}, return_tensors="pt")  # the tokenizer's side
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def count_truncated(self, texts: list[str]) -> int:
        room = self.max_seq_len - int(self.append_eos)
        return sum(len(ids) > room for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"])

    def _token_states(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = tokens["attention_mask"]
        kwargs = {"position_ids": position_ids(mask)} if self.causal else {}
        return self.lm(input_ids=tokens["input_ids"], attention_mask=mask, use_cache=False,
                       **kwargs).last_hidden_state  # (B, L, width)

    def _run(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        states, mask = self._token_states(tokens), tokens["attention_mask"]
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(states.dtype)
            return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        return states[torch.arange(len(states), device=states.device), last_token_index(mask)]  # (B, width)
