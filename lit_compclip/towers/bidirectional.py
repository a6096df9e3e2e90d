"""The trained blocks of a decoder tower made to attend both ways (the paper's choice), and the check, when a causal
tower is built, that its frozen prefix stays causal, its trained blocks attend as configured and padding changes
nothing: a model or transformers version for which these do not hold is refused in one line."""

from __future__ import annotations

import torch

from lit_compclip.errors import first_line

ATTENTION_BACKENDS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")  # those bidirectional is made for


def padding_from_mask(mask) -> torch.Tensor | None:
    """The (B, L) key-padding mask behind the mask a block was given: a 2-D padding mask (flash attention) as is,
    a 4-D causal one (boolean, or additive floats with 0 where allowed) as the keys some query may see - every real
    token sees at least itself, under a causal or a sliding-window mask alike. None: no padding."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 4):
        raise TypeError(f"an attention mask of type {type(mask).__name__}")
    if mask.ndim == 2:
        return mask.bool()
    allowed = mask if mask.dtype == torch.bool else mask == 0
    return allowed.any(dim=-2)[:, 0]


def make_bidirectional(tower) -> None:
    """The trained blocks attend both ways (the paper's choice); the frozen prefix stays causal, as its
    pretrained weights expect. Each trained block's attention is marked non-causal (SDPA and flash attention
    read the flag) and gets a padding-only mask in its backend's format, rebuilt from the mask it was given."""
    if not tower.causal:
        raise ValueError(f"model.text.bidirectional: {tower.model_name!r} is an encoder whose layers already attend "
                         f"both ways; the option is for decoder language models")
    config = tower.lm.config
    backend = getattr(config, "_attn_implementation", None)
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"model.text.bidirectional: attention implementation {backend!r} of {tower.model_name!r} "
                         f"is not one bidirectional blocks are built for; set model.text.attn_implementation to "
                         f"one of {', '.join(ATTENTION_BACKENDS)}")
    from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

    kinds = getattr(config, "layer_types", None) or ["full_attention"] * len(tower.layers)
    for index in range(tower.first_trained, len(tower.layers)):
        layer = tower.layers[index]
        for m in layer.modules():
            if hasattr(m, "is_causal"):
                m.is_causal = False
        build = (create_bidirectional_sliding_window_mask if kinds[index] == "sliding_attention"
                 else create_bidirectional_mask)

        def hook(module, args, kwargs, build=build):
            if "attention_mask" not in kwargs:
                raise TypeError("the block's attention mask was not passed by name")
            hidden = args[0] if args else kwargs["hidden_states"]
            padding = padding_from_mask(kwargs["attention_mask"])
            kwargs["attention_mask"] = build(config=config, inputs_embeds=hidden, attention_mask=padding)
            return args, kwargs

        layer.register_forward_pre_hook(hook, with_kwargs=True)


def check_tail(tower) -> None:
    """Two short captions through the built tower: at the entry to the first trained block the first token must
    not see the last (the prefix stays causal); after the blocks it must see it exactly when bidirectional is
    on; and padding must not change a caption's outputs. A model or transformers version for which these do
    not hold is refused here, in one line, rather than trained as something else."""
    if not (tower.causal and tower.trainable):
        return
    tokens = tower.tokenize(["a red circle left of a blue square", "a green star above a large white cross "
                                                                   "and a small purple diamond"])
    mask = tokens["attention_mask"]
    n = int(mask[0].sum())
    if n < 3:
        return
    real = mask[0].bool()
    ids = tokens["input_ids"].clone()
    at = int(torch.nonzero(real)[-1])  # the last real token (an appended EOS, where the tower adds one)
    other = ids.clone()
    other[0, at] = (ids[0, at] + 1) % max(int(ids.max()) + 1, 2)
    if other[0, at] == ids[0, at]:
        return
    changed = {**tokens, "input_ids": other}
    was = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            first = int(torch.nonzero(real)[0])
            entry = [tower._prefix({k: v[:1] for k, v in t.items()})[0, first] for t in (tokens, changed)]
            out = [tower._token_states({k: v[:1] for k, v in t.items()})[0, first] for t in (tokens, changed)]
            padded = tower._token_states(tokens)[0][real]
            alone = tower._token_states({k: v[:1, real] for k, v in tokens.items()})[0]
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"model.text.bidirectional: the trained blocks of {tower.model_name!r} cannot be run with "
                         f"a rebuilt mask ({type(e).__name__}: {first_line(e, 160)})") from None
    finally:
        tower.train(was)
    tol = 2e-2 if tower.frozen_dtype in ("bfloat16", "float16") else 1e-4
    sees_last = (out[0] - out[1]).norm() > tol * out[0].norm()
    problems = []
    if (entry[0] - entry[1]).norm() > tol * entry[0].norm():
        problems.append("the frozen prefix is not causal")
    if sees_last != tower.bidirectional:
        problems.append("the trained blocks stayed causal" if tower.bidirectional else
                        "the trained blocks see later tokens")
    if (padded - alone).norm() > tol * alone.norm():
        problems.append("padding changes a caption's output")
    if problems:
        import transformers

        raise ValueError(f"model.text: with {tower.model_name!r} under attention "
                         f"{getattr(tower.lm.config, '_attn_implementation', None)!r} and transformers "
                         f"{transformers.__version__}, {'; '.join(problems)}; set model.text.bidirectional=false "
                         f"or model.text.attn_implementation=eager")
