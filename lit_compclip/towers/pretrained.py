"""What every pretrained text tower shares: a language model frozen but for its last N blocks, optionally made
bidirectional there, its frozen prefix cached on disk, and a projection into the joint space.

Encoders (BERT, MiniLM) and decoders (Qwen2/3, Llama, Mistral, Gemma 2/3) go through the same code: the model's own
forward always runs, so it builds its masks, rotary positions and pooling itself; a cached prefix enters by making
the frozen blocks pass their input through (the last one hands over the cached hidden states), and bidirectional
blocks get a padding-only mask from transformers' own mask builders (`towers.bidirectional`). Both are checked on
the model when the tower is built, so a model or transformers version they do not hold for is refused, never
trained silently causal.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from lit_compclip.errors import first_line
from lit_compclip.text_cache import PrefixCache, check_options, fingerprint, token_keys
from lit_compclip.towers.devices import to_device
from lit_compclip.towers.bidirectional import check_tail, make_bidirectional

log = logging.getLogger(__name__)

FROZEN_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_layers(module: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList (encoder.layer in BERT, layers in others)."""
    stacks = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError(f"cannot find the transformer layers of {type(module).__name__}")
    return max(stacks, key=len)


def is_causal_model(layers: nn.ModuleList) -> bool:
    """Whether the blocks attend causally (a decoder): transformers marks their attention modules `is_causal`."""
    return any(getattr(m, "is_causal", False) for layer in layers for m in layer.modules())


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.bool()).amax(1)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a caption's tokens sit at 0..n-1 whatever its padding (a
    left-padded row would otherwise start at its padding length: equal under rotary positions only up to rounding)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted hidden states are in hand."""


class PretrainedTextTower(nn.Module):
    """The paper's lever 2. Subclasses load `self.lm` (the transformers model holding the block stack) and
    implement `tokenize`, `count_truncated`, `_run(tokens) -> (B, width)` (the model and its pooling) and
    `_token_states(tokens) -> (B, L, width)` (the last block's output); `_setup` does the rest."""

    pretrained_prefix = "lm."  # parameter names of the pretrained model (their own learning rate: optim.text_lr)
    lm: nn.Module

    def _setup(self, embed_dim: int, width: int, model_name: str, unfreeze_layers: int, bidirectional: bool,
               cache_dir: str | None, cache_budget_gb: float, cache_dtype: str, grad_checkpointing: bool,
               frozen_dtype: str | None, max_seq_len: int) -> None:
        self.model_name, self.max_seq_len, self.width = model_name, max_seq_len, width
        try:
            layers = transformer_layers(self.lm)
        except ValueError as e:
            raise ValueError(f"model.text.model: {e} ({model_name!r})") from None
        if not 0 <= unfreeze_layers <= len(layers):
            raise ValueError(f"model.text.unfreeze_layers={unfreeze_layers} but {model_name!r} has {len(layers)} layers")
        if frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"model.text.frozen_dtype={frozen_dtype!r}: choose one of "
                             f"{', '.join(str(k) for k in FROZEN_DTYPES if k)} or null")
        check_options(cache_budget_gb, cache_dtype)  # here: the cache itself opens at first use
        self._stack, self.first_trained = (layers,), len(layers) - unfreeze_layers  # a tuple: no second registration
        self.causal = is_causal_model(layers)
        self.pipeline.requires_grad_(False)
        self.trainable = list(layers[self.first_trained:])  # a plain list: no second registration
        for layer in self.trainable:
            layer.requires_grad_(True)
        if frozen_dtype:  # the frozen blocks (and embeddings) in a smaller type: memory on GPU; the tail keeps its own
            trained = {id(p) for layer in self.trainable for p in layer.parameters()}
            for p in self.frozen_parameters():
                if id(p) not in trained:
                    p.data = p.data.to(FROZEN_DTYPES[frozen_dtype])
            if self.trainable:
                self.trainable[0].register_forward_pre_hook(self._into_tail_dtype, with_kwargs=True)
        self.frozen_dtype = frozen_dtype
        self.proj = nn.Linear(width, embed_dim, bias=False)
        if grad_checkpointing:
            try:
                self.lm.gradient_checkpointing_enable({"use_reentrant": False})
            except ValueError as e:  # transformers: "... does not support gradient checkpointing"
                raise ValueError(f"model.text.grad_checkpointing: {first_line(e)}") from None
        self.bidirectional = bool(bidirectional)
        if self.bidirectional:
            make_bidirectional(self)
        if cache_dir and unfreeze_layers == len(layers):
            log.warning("model.text.cache_dir: every layer of %s is trained, so there is no frozen prefix to cache; "
                        "the text cache is off for this run", model_name)
            cache_dir = None
        self.cache: PrefixCache | None = None
        self.cache_options = (cache_dir, cache_budget_gb, cache_dtype) if cache_dir else None
        check_tail(self)

    # -- the trained tail -----------------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        # Frozen layers stay in eval mode (no dropout), so their output for a caption never changes.
        super().train(mode)
        self.pipeline.eval()
        for layer in self.trainable:
            layer.train(mode)
        return self

    @property
    def pipeline(self) -> nn.Module:
        """Every pretrained part (the model; a sentence-transformers pipeline's pooling and heads too): frozen and
        in eval mode but for the trained blocks."""
        return self.lm

    @property
    def layers(self) -> nn.ModuleList:
        return self._stack[0]

    @property
    def fully_frozen(self) -> bool:
        return self.first_trained == len(self.layers)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters below the first trained block (embeddings, frozen blocks): what the cache's output
        depends on."""
        after = {id(p) for layer in self.trainable for p in layer.parameters()}
        if self.fully_frozen:
            return list(self.pipeline.parameters())
        before = []
        for name, p in self.lm.named_parameters():
            if id(p) in after:
                break  # parameters are listed in module order: embeddings, blocks, then the final norm
            before.append(p)
        return before

    def _into_tail_dtype(self, module, args, kwargs):
        """With frozen_dtype set, the hidden states (and rotary tables) enter the trained blocks in their type."""
        dtype = module.parameters().__next__().dtype
        cast = (lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        args = tuple(cast(a) for a in args)
        for key in ("hidden_states", "position_embeddings"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = tuple(cast(v) for v in value) if isinstance(value, tuple) else cast(value)
        return args, kwargs

    # -- forward, with the frozen prefix cached -------------------------------------------------------------------

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens on the host or on the tower's device (B, L) -> (B, embed_dim). The cache's bookkeeping reads the
        host's copy, so that nothing waits for the device (see `to_device`)."""
        device = self.proj.weight.device
        if self.cache_options is None:
            pooled = self._run(to_device(tokens, device))  # (B, width), the model's own pooling
        elif self.fully_frozen:  # the final embedding itself is cached
            pooled = self._cached(tokens)
        else:
            hidden = self._cached(tokens)  # (B, L, width) as the first trained layer sees it
            with self._prefix_from(hidden):
                pooled = self._run(to_device(tokens, device))
        return self.proj(pooled.to(self.proj.weight.dtype))  # (B, embed_dim)

    @contextlib.contextmanager
    def _prefix_from(self, hidden: torch.Tensor):
        """Run the model as if its frozen blocks had produced `hidden`: each passes its input through, the last
        one hands over `hidden`. The model's forward still builds the masks and rotary positions the trained blocks
        need, and the trained blocks' input is `hidden` itself, so activation checkpointing recomputes from it."""
        frozen = list(self.layers)[:self.first_trained]

        def passthrough(*args, **kwargs):
            return args[0] if args else kwargs["hidden_states"]

        def handover(*args, **kwargs):
            return hidden

        for layer in frozen[:-1]:
            layer.forward = passthrough
        frozen[-1].forward = handover
        try:
            yield
        finally:
            for layer in frozen:
                del layer.forward

    def _open_cache(self) -> PrefixCache:
        # Opened at first use, after any checkpoint was loaded: the namespace hashes the frozen weights themselves.
        if self.cache is None:
            directory, budget, dtype = self.cache_options
            what = "pooled" if self.fully_frozen else f"layer{self.first_trained}"
            extra = (self.model_name, what, self.max_seq_len, dtype) + self.cache_key_extra()
            space = fingerprint(self.frozen_parameters(), *extra)
            self.cache = PrefixCache(directory, f"{what}-{space}", budget, dtype)
        return self.cache

    def cache_key_extra(self) -> tuple:
        """What else the frozen output depends on (a subclass's pooling, appended tokens)."""
        return ()

    def _cached(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen part's output per row, from the cache where present, computed (and stored) where not."""
        device = self.proj.weight.device
        host = {k: v.cpu() for k, v in tokens.items()}  # the caller's own tensors where they are on the host
        cache, mask = self._open_cache(), host["attention_mask"]
        keys = token_keys(host["input_ids"], mask)
        found, missing = cache.get(keys, self.width)
        if missing:
            with torch.no_grad():  # (M, L', width) or (M, width), brought back once as the cache stores it
                new = cache.round(self.frozen_output(to_device({k: v[missing] for k, v in host.items()}, device)))
            real = mask[missing].bool()
            rows = [new[j][real[j]] if new.ndim == 3 else new[j].clone() for j in range(len(missing))]
            cache.put([keys[i] for i in missing], rows)
            found.update(zip(missing, rows))
        dtype = self.trainable[0].parameters().__next__().dtype if self.trainable else self.proj.weight.dtype
        # every row is a float32 CPU tensor: join them, then one copy to the device
        if self.fully_frozen:
            return torch.stack([found[i].reshape(self.width) for i in range(len(keys))]).to(device, dtype)
        out = torch.zeros(*mask.shape, self.width, device=device, dtype=dtype)  # (B, L, width); padding stays zero
        # each row at its real positions, on either padding side, by indices counted on the host: a boolean index
        # on the device would wait for it to count them
        where = to_device(mask.bool().nonzero(as_tuple=True), device)
        out[where] = torch.cat([found[i] for i in range(len(keys))]).to(device, dtype)
        return out

    def frozen_output(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the cache holds: the hidden states entering the first trained layer (B, L, width), or the final
        embedding (B, width) of a fully frozen tower."""
        return self._run(tokens) if self.fully_frozen else self._prefix(tokens)

    def _prefix(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states entering the first trained layer; the trained layers are never run for them."""
        seen = {}

        def grab(module, args, kwargs):
            seen["hidden"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = self.layers[self.first_trained].register_forward_pre_hook(grab, with_kwargs=True, prepend=True)
        try:
            self._token_states(tokens)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["hidden"]  # (B, L, width)

    def cache_stats(self) -> dict[str, float] | None:
        """Hit rate and size of the text cache so far (None without a cache)."""
        if self.cache is None:
            return None
        c = self.cache
        return {"hit_rate": c.hit_rate, "hits": float(c.hits), "misses": float(c.misses),
                "size_mb": c.size_bytes() / 2 ** 20, "errors": float(c.errors)}
