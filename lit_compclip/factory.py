"""The library's two ways to a model: create_model() builds a fresh one from the config's model section, load() reads a
trained one from a checkpoint or a run folder. Neither imports Lightning, W&B or the synthetic world, and neither
writes anything: the text tower's disk cache stays off unless a folder is given."""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from lit_compclip.errors import BUILD_ERRORS, ConfigError, first_line
from lit_compclip.model import CompClipModel


# The schema's model section (lit_compclip/config/schema.py, ModelConfig: what `compclip train` builds by default), here
# because the library never imports the config; tests/test_library.py checks that the two agree. The text cache is
# off: the schema's folder is relative to the working folder, for the trainer to fill in.
DEFAULT_MODEL: dict[str, Any] = {
    "embed_dim": 256, "init_logit_scale": math.log(1 / 0.07), "max_logit_scale": 100.0, "length_groups": 2,
    "compile": False,
    "image": {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 64, "patch_size": 8, "depth": 4,
              "width": 128, "heads": 4, "pos_embed": "learn", "pool": "flatten", "stem": "conv", "stem_norm": "group",
              "stem_groups": 8, "stem_convs": [0, 1, 1], "augment": True, "crop_scale": [0.9, 1.0],
              "grad_checkpointing": False, "channels_last": False},
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
    """The trained CompClipModel of a training checkpoint (`runs/NAME/checkpoints/last.ckpt`) or of a run folder
    (`runs/NAME`: its checkpoints/last.ckpt), in eval mode on `device`. The file is read weights-only, so nothing in
    it can run code. `cache_dir`: a folder for the frozen text layers' disk cache (the run's own setting is ignored:
    it names a folder relative to where the run was started). Errors are one-line ConfigErrors naming the file."""
    return _load(path, device, lambda run_folder: cache_dir)


def load_as_run(path: str, device: str = "cpu") -> CompClipModel:
    """`load` with the text cache the run itself used (its folder taken as the run named it: relative to the working
    folder), for `compclip probe`: a float16 cache rounds the frozen layers' output, and the probes must score the
    model as training's probe passes did."""
    return _load(path, device, lambda run_folder: run_folder)


def _load(path: str, device: str, cache_folder) -> CompClipModel:
    from lit_compclip.checkpoints import checkpoint_file, load_weights, read_model_checkpoint

    path = checkpoint_file(str(path))
    config, weights = read_model_checkpoint(path)
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
        raise ConfigError(f"checkpoint {path!r}: its model cannot be built here ({first_line(e)})") from None
    load_weights(model, weights, path)
    return model.to(device).eval()
