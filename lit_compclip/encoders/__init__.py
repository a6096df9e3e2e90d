"""Encoders `compclip probe` scores, chosen by a `KIND:TARGET` spec from a plain registry (imported only when used).

An encoder is what a probe sees (probes/base.Encoder): `encode_image` / `encode_text` returning L2-normalised
float32 (N, D) CPU tensors, plus `info`, a dict of what was used (model, weights, preprocessing, tokenizer, context
length, dtype, device) that `compclip probe` stores beside its results, and where the tokenizer tells,
`max_tokens` / `count_truncated(texts)` (the long-caption probes report truncation with them)."""

from __future__ import annotations

from lit_compclip.errors import first_line
from lit_compclip.errors import ConfigError
from lit_compclip.registry import resolve

# kind -> "module:class"; the class takes (target, device) and has a cheap `check(target)` (a missing file, an unknown
# model: one-line errors before anything heavy is loaded). Adding one = one file + one line here.
ENCODERS = {
    "compclip": "lit_compclip.encoders.compclip:CompClipEncoder",
    "open_clip": "lit_compclip.encoders.open_clip:OpenClipEncoder",
    "hf": "lit_compclip.encoders.hf:HFEncoder",
    "sentence_transformers": "lit_compclip.encoders.sentence_transformers:SentenceTransformersEncoder",
}
EXAMPLES = ("compclip:RUN/checkpoints/last.ckpt, compclip:EXPORT_FOLDER, open_clip:ViT-B-32@openai, "
            "open_clip:ARCH@FILE, open_clip:local-dir:EXPORT_FOLDER, sentence_transformers:EXPORT_FOLDER, "
            "hf:google/siglip-base-patch16-224")


def split_spec(spec: str) -> tuple[str, str]:
    """'KIND:TARGET' -> (kind, target); a malformed spec or an unknown kind is a one-line ConfigError."""
    kind, sep, target = str(spec).partition(":")
    if not sep or not kind or not target:
        raise ConfigError(f"encoder {spec!r} is not of the form KIND:TARGET (kinds: {sorted(ENCODERS)}; "
                          f"e.g. {EXAMPLES})")
    if kind not in ENCODERS:
        try:
            resolve(ENCODERS, kind, "encoder kind")
        except ValueError as e:
            raise ConfigError(f"encoder {spec!r}: {e}") from None
    return kind, target


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """`device` (default: default_device()) if torch can run on it here; a one-line ConfigError otherwise."""
    import torch

    try:
        kind = torch.device(device or default_device()).type
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}, but torch sees no CUDA GPU")
    return device or default_device()


def fp32_on(device: str) -> None:
    """fp32 as the benchmarks' rules say: no TF32 in matmuls or convolutions on a GPU (process-wide; commands that
    score or embed only)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _one_line(spec: str, e: Exception) -> ConfigError:
    return ConfigError(f"encoder {spec!r}: {first_line(e)}")


def check_encoder(spec: str) -> None:
    """Fail now, with one line, if `spec` names nothing that can be loaded (loads no model)."""
    kind, target = split_spec(spec)
    try:
        resolve(ENCODERS, kind, "encoder kind").check(target)
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise _one_line(spec, e) from None


def build_encoder(spec: str, device: str | None = None):
    """The encoder `spec` names, in fp32 on `device` (default: cuda when there is one, else cpu); one-line errors."""
    import torch

    kind, target = split_spec(spec)
    cls = resolve(ENCODERS, kind, "encoder kind")
    device = device or default_device()
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"encoder {spec!r}: device {device!r} asked for, but torch sees no CUDA GPU")
    fp32_on(device)
    try:
        encoder = cls(target, device=device)
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise _one_line(spec, e) from None
    encoder.info = {"spec": spec, "kind": kind, **encoder.info}
    return encoder
