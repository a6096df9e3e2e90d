"""The native export: a folder `lit_compclip.load(folder)` rebuilds with no checkpoint, no run folder and nothing else
on disk: the model's weights (safetensors), its config (compclip_config.json), the text tower's own files (the whole
language model folder of a pretrained tower, as sentence-transformers or transformers saves it, frozen and trained
layers alike; a scratch tower's tokenizer), and the image preprocessing as JSON. The file names and the reading are
the library's (lit_compclip.factory), which never imports this layer."""

from __future__ import annotations

import json
import os

from lit_compclip.errors import ConfigError
from lit_compclip.factory import (ALIASES, NATIVE_CONFIG, NATIVE_FORMAT, NATIVE_PREPROCESS, NATIVE_TEXT,
                                  NATIVE_VERSION, NATIVE_WEIGHTS, load)

OPTIONS: dict[str, str] = {}
TOLERANCE = 1e-6  # the same weights and code: only the summation order of another process may differ


def _text_kind(model) -> tuple[str, str]:
    """(how the text tower's files are saved, the option of model.text naming their folder)."""
    from lit_compclip.towers.scratch import ScratchTextTower
    from lit_compclip.towers.sentence_transformers import SentenceTransformerTower
    from lit_compclip.towers.transformers_lm import TransformersTower

    if isinstance(model.text, SentenceTransformerTower):
        return "sentence_transformers", "model"
    if isinstance(model.text, TransformersTower):
        return "transformers", "model"
    if isinstance(model.text, ScratchTextTower):
        return "tokenizer", "tokenizer"
    raise ConfigError(f"the native format cannot save a text tower of type {type(model.text).__name__} (it knows "
                      f"sentence_transformers, transformers and scratch towers)")


def check(model, options: dict) -> None:
    _text_kind(model)


def save_text_files(model, folder: str) -> None:
    """The text tower's files in `folder`, holding the model's current weights (trained and frozen)."""
    kind, _ = _text_kind(model)
    if kind == "sentence_transformers":  # the whole pipeline: transformer, pooling, any Dense or Normalize module
        model.text.st.save(folder, create_model_card=False)
    elif kind == "transformers":
        model.text.lm.save_pretrained(folder)
        model.text.tokenizer.save_pretrained(folder)  # as the tower set it: padding token and side
    else:
        model.text.tokenizer.save_pretrained(folder)


def export_config(model_config: dict, text_option: str) -> dict:
    """What compclip_config.json holds: the model section as the library builds it (no pretrained download, no
    compile, no text cache; the loss's options left out) with the text tower's folder relative to the export."""
    from lit_compclip.model import LOSS_KEYS

    model = {k: v for k, v in model_config.items() if k not in LOSS_KEYS}
    model["compile"] = False
    model["image"] = {**model.get("image", {}), "pretrained": False}
    text = {k: v for k, v in model.get("text", {}).items() if k != "cache_dir"}
    text[text_option] = NATIVE_TEXT
    model["text"] = text
    from lit_compclip import __version__

    return {"format": NATIVE_FORMAT, "format_version": NATIVE_VERSION, "lit_compclip_version": __version__,
            "model": model, "relative_paths": [f"text.{text_option}"]}


def unshared(state: dict) -> tuple[dict, dict]:
    """(tensors safetensors can save, aliases): a tensor that is another one's exact view (tied weights) is stored
    once under the first name and listed as an alias; one that overlaps another otherwise is copied; each contiguous."""
    tensors, aliases, seen, storages = {}, {}, {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.numel():
            ptr = tensor.untyped_storage().data_ptr()
            view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
            if view in seen:
                aliases[name] = seen[view]
                continue
            seen[view] = name
            if ptr in storages:
                tensor = tensor.clone()
            storages.add(ptr)
        tensors[name] = tensor.contiguous()
    return tensors, aliases


def preprocess(transform) -> dict:
    """What the eval transform does to a PIL image, as readers without this package need it: resize (shorter side),
    interpolation, centre crop (crop_pct = crop / resize), normalisation; `steps` names every step."""
    steps = list(getattr(transform, "transforms", [transform]))
    out: dict = {"steps": [repr(s).replace("\n", " ") for s in steps]}
    for step in steps:
        kind = type(step).__name__
        if kind == "Resize":
            size = step.size if isinstance(step.size, int) else list(step.size)
            out.update(resize=size, interpolation=getattr(step.interpolation, "value", str(step.interpolation)))
        elif kind == "CenterCrop":
            crop = [int(n) for n in step.size]
            out["input_size"] = [3, *crop]
            if isinstance(out.get("resize"), int):
                out["crop_pct"] = min(crop) / out["resize"]
        elif kind == "Normalize":
            out.update(mean=[float(v) for v in step.mean], std=[float(v) for v in step.std])
    return out


def write(model, folder: str, info: dict, options: dict) -> list[str]:
    from safetensors.torch import save_file

    _, text_option = _text_kind(model)
    save_text_files(model, os.path.join(folder, NATIVE_TEXT))
    tensors, aliases = unshared(model.state_dict())
    save_file(tensors, os.path.join(folder, NATIVE_WEIGHTS), metadata={"format": "pt", ALIASES: json.dumps(aliases)})
    files = {NATIVE_CONFIG: export_config(info["model_config"], text_option),
             NATIVE_PREPROCESS: preprocess(model.transform)}
    for name, data in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    notes = [f"`{NATIVE_WEIGHTS}`: the whole model's weights (safetensors, read without pickle); "
             f"`{NATIVE_CONFIG}`: the model section it is built from (format version {NATIVE_VERSION}); "
             f"`{NATIVE_TEXT}/`: the text tower's own files; `{NATIVE_PREPROCESS}`: the image preprocessing."]
    text = info["model_config"].get("text") or {}
    if text.get("cache_dir") and text.get("cache_dtype", "float32") != "float32":
        notes.append(f"The run cached its frozen text layers' output in {text['cache_dtype']}; the export has no "
                     f"cache, so its text embeddings are the checkpoint's computed without that rounding (as "
                     f"`lit_compclip.load` of the checkpoint gives them).")
    return notes


def load_back(folder: str):
    from lit_compclip.export import ModelEncoder

    return ModelEncoder(load(folder))
