"""lit_compclip: CLIP-style training that learns visual composition (arXiv 2412.15396) with Lightning.

As a library: `lit_compclip.load(checkpoint_run_or_export_folder)` gives a trained CompClipModel (a plain nn.Module with
encode_image, encode_text, tokenize, transform and logit_scale), `lit_compclip.create_model(...)` a fresh one. Neither
imports Lightning, W&B or the synthetic world; training lives in lit_compclip.training."""

__version__ = "0.1.0"
__all__ = ["CompClipModel", "create_model", "load"]

# Imported on first use: `import lit_compclip` (every command's first step) stays free of torch and the towers.
_LAZY = {"CompClipModel": "lit_compclip.model", "create_model": "lit_compclip.factory", "load": "lit_compclip.factory"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_compclip' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
