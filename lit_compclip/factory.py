"""The library's two ways to a model: create_model() builds a fresh one from the config's model section, load() reads a
trained one from a checkpoint, a run folder or a native export folder (`compclip export`). Neither imports Lightning,
W&B or the synthetic world, and neither writes anything: the text tower's disk cache stays off unless a folder is
given."""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Mapping

from lit_compclip.errors import BUILD_ERRORS, ConfigError, first_line
from lit_compclip.model import CompClipModel


# The schema's model section (lit_compclip/config/schema.py, ModelConfig: what `compclip train` builds by default), here
# because the library never imports the config; tests/test_library.py checks that the two agree. The text cache is
# off: the schema's folder is relative to the working folder, for the trainer to fill in.
DEFAULT_MODEL: dict[str, Any] = {
    "embed_dim": 256, "init_logit_scale": math.log(1 / 0.07), "max_logit_scale": 100.0, "length_groups": 2,
    "compile": False, "compile_mode": None,
    "image": {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 64, "patch_size": 8, "depth": 4,
              "width": 128, "heads": 4, "pos_embed": "learn", "pool": "flatten", "stem": "conv", "stem_norm": "group",
              "stem_groups": 8, "stem_convs": [0, 1, 1], "augment": True, "crop_scale": [0.9, 1.0],
              "grad_checkpointing": False, "channels_last": False, "patch_dropout": 0.0},
    "text": {"tower": "sentence_transformers", "model": "all-MiniLM-L6-v2", "unfreeze_layers": 2, "cache_dir": None,
             "cache_dtype": "float16"},
}


def merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `changes`, the image and text sections key by key; a text section naming another tower
    replaces the default one (its options belong to the default tower), as the config files do."""
    out = dict(base)
    for key, value in changes.items():
        if key in ("image", "text") and isinstance(value, Mapping):
            section = dict(out.get(key) or {})
            if key == "text" and value.get("tower", section.get("tower")) != section.get("tower"):
                section = {}
            value = {**section, **value}
        out[key] = value
    return out


def create_model(config: Mapping[str, Any] | None = None, **options) -> CompClipModel:
    """A fresh (untrained) CompClipModel: the default towers (a conv-stem ViT at 64 px and MiniLM with its last 2
    layers trained), changed by `config` (a config's model section, e.g. `model:` of a run's config.yaml) and then by
    `options` (its keys: embed_dim, image, text, init_logit_scale, max_logit_scale, length_groups, compile).
    image={"depth": 6} changes one image option; text={"tower": "scratch"} starts from that tower's own defaults.
    Random weights come from torch's generator: seed it first (torch.manual_seed) for the same model each time."""
    model = merged(merged(copy.deepcopy(DEFAULT_MODEL), config or {}), options)
    try:
        return CompClipModel.from_config(model)
    except TypeError as e:  # an option the model does not take
        raise ConfigError(f"create_model: {first_line(e)}") from None


def load(path: str, device: str = "cpu", cache_dir: str | None = None) -> CompClipModel:
    """The trained CompClipModel of a training checkpoint (`runs/NAME/checkpoints/last.ckpt`), of a run folder
    (`runs/NAME`: its checkpoints/last.ckpt) or of a native export folder (`compclip export`: its compclip_config.json,
    model.safetensors and text tower files; no checkpoint or run folder needed), in eval mode on `device`. A checkpoint
    is read weights-only and an export's weights with safetensors, so nothing in either can run code. `cache_dir`: a
    folder for the frozen text layers' disk cache (the run's own setting is ignored: it names a folder relative to
    where the run was started). Errors are one-line ConfigErrors naming the file or folder."""
    return _load(path, device, lambda run_folder: cache_dir)


def load_as_run(path: str, device: str = "cpu") -> CompClipModel:
    """`load` with the text cache the run itself used (its folder taken as the run named it: relative to the working
    folder), for `compclip probe`: a float16 cache rounds the frozen layers' output, and the probes must score the
    model as training's probe passes did."""
    return _load(path, device, lambda run_folder: run_folder)


def _load(path: str, device: str, cache_folder) -> CompClipModel:
    from lit_compclip.checkpoints import checkpoint_file, load_weights, read_model_checkpoint

    path = str(path)
    native = is_native_folder(path)
    if native:
        config, weights = read_native_folder(path)
    else:
        path = checkpoint_file(path)
        config, weights = read_model_checkpoint(path)
    kind = "export" if native else "checkpoint"
    # The file's weights replace any pretrained ones (no hub, no download); compiling would only slow a first call.
    config = {**config, "compile": False}
    config["image"] = {**config.get("image", {}), "pretrained": False}
    text = dict(config.get("text", {}))
    cache_dir = cache_folder(text.get("cache_dir"))
    if "cache_dir" in text or cache_dir is not None:  # a tower without a cache fails on the option, as it should
        text["cache_dir"] = cache_dir
    config["text"] = text
    try:
        model = CompClipModel.from_config(config)
    except (*BUILD_ERRORS, TypeError) as e:
        raise ConfigError(f"{kind} {path!r}: its model cannot be built here ({first_line(e)})") from None
    load_weights(model, weights, path, kind)
    return model.to(device).eval()


# ---- native export folders (written by lit_compclip.export.native, read here: the library never imports the export
# layer). Only plain files: JSON, safetensors, the text tower's own folder.

NATIVE_CONFIG = "compclip_config.json"  # its presence makes a folder a native export
NATIVE_WEIGHTS = "model.safetensors"  # CompClipModel.state_dict(), shared tensors stored once (ALIASES)
NATIVE_PREPROCESS = "preprocess.json"  # what model.transform does, for readers without this package
NATIVE_TEXT = "text"  # the text tower's files: its whole language model folder, or a scratch tower's tokenizer
NATIVE_FORMAT, NATIVE_VERSION = "lit_compclip", 1
ALIASES = "aliases"  # safetensors metadata: JSON {name: the name whose tensor it shares}


def is_native_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, NATIVE_CONFIG))


def native_config(folder: str) -> dict:
    """The model section of a native export, its folder paths made absolute, or a one-line ConfigError. The config
    names the text tower's folder relative to the export, so a moved export still loads."""
    folder = os.path.abspath(folder)
    where = os.path.join(folder, NATIVE_CONFIG)
    try:
        with open(where, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"export {where!r} cannot be read ({first_line(e)})") from None
    if not isinstance(spec, dict) or spec.get("format") != NATIVE_FORMAT or not isinstance(spec.get("model"), dict):
        raise ConfigError(f"export {where!r} is not a lit_compclip export config (no format {NATIVE_FORMAT!r} and "
                          f"model section)")
    version = spec.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= NATIVE_VERSION:
        raise ConfigError(f"export {where!r} has format version {version!r}; this lit_compclip reads versions up to "
                          f"{NATIVE_VERSION} (a newer lit_compclip wrote it: upgrade)")
    config = copy.deepcopy(spec["model"])
    for key in spec.get("relative_paths", []):  # e.g. "text.model"
        *parents, name = str(key).split(".")
        section = config
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        value = section.get(name) if isinstance(section, dict) else None
        inside = isinstance(value, str) and not os.path.isabs(value) and \
            os.path.normpath(value).split(os.sep)[0] != os.pardir
        if not inside:
            raise ConfigError(f"export {where!r}: {key} must be a folder inside the export, not {value!r}")
        section[name] = os.path.join(folder, value)
    return config


def read_native_folder(folder: str) -> tuple[dict, dict]:
    """(native_config(folder), the weights by name, read with safetensors: no pickle), or a one-line ConfigError."""
    from safetensors import SafetensorError, safe_open

    config = native_config(folder)
    weights_file = os.path.join(os.path.abspath(folder), NATIVE_WEIGHTS)
    try:
        with safe_open(weights_file, framework="pt", device="cpu") as f:
            aliases = json.loads((f.metadata() or {}).get(ALIASES, "{}"))
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise ConfigError(f"export {weights_file!r} cannot be read ({first_line(e)})") from None
    if not isinstance(aliases, dict):
        raise ConfigError(f"export {weights_file!r}: its {ALIASES!r} metadata is not a JSON object")
    for name, same in aliases.items():  # a tied tensor comes back under each of its names
        if same not in weights:
            raise ConfigError(f"export {weights_file!r}: {name!r} is stored as {same!r}, which it does not hold")
        weights[name] = weights[same]
    return config, weights

