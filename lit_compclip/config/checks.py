"""Checks of a loaded config that need no model: ranges, choices, the options of named towers and probes, the
trainer's values, and the caption fields the shards hold."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from lit_compclip.config.schema import ADAMW_IMPLEMENTATIONS, COMPILE_MODES, FSDP_SHARDING, ImageConfig
from lit_compclip.errors import ConfigError
from lit_compclip.registry import suggest


FIELD_SAMPLES = 64  # the first samples of the shards whose caption fields are checked before a run starts


def check_caption_fields(cfg: DictConfig) -> bool:
    """Each field data.caption_fields and data.later_caption_fields name occurs in the first samples of the training
    shards, and each of caption_fields in the validation shards': a field the shards do not hold is skipped in every
    sample, silently narrowing the mixture, or leaving no batch at all. Reads only local shards (remote or missing
    ones are left to the loader and check_inputs). Returns whether shards a plug-in has still to make (a synthetic
    world to be built) were left out: call it again once they are made."""
    from lit_compclip.config.plugins import pending
    from lit_compclip.data.shards import sample_fields

    caption, later = dict(cfg.data.caption_fields), dict(cfg.data.later_caption_fields or {})
    deferred = False
    for key, named in (("train_shards", {**caption, **later}), ("val_shards", caption)):
        spec = cfg.data[key]
        if not spec:
            continue
        if pending(cfg, str(spec)):
            deferred = True
            continue
        found = sample_fields(str(spec), FIELD_SAMPLES)
        if found is None:
            continue
        fields, samples = found
        for name in named:
            if name not in fields:
                which = "caption_fields" if name in caption else "later_caption_fields"
                raise ConfigError(f"config key 'data.{which}.{name}': none of the first {samples} samples of "
                                  f"data.{key} holds {name!r}{suggest(name, fields)}; their caption fields: "
                                  f"{', '.join(sorted(fields)) or 'none'} (txt is KEY.txt, the others KEY.json's)")
    return deferred


def check_values(cfg: DictConfig) -> None:
    """Checks that need no data or model: ranges, choices, and the options of named towers and probes."""
    from lit_compclip.probes import PROBES, split_suite
    from lit_compclip.registry import check_options, resolve
    from lit_compclip.towers import TEXT_TOWERS, split_tower_options

    def need(ok: bool, key: str, why: str):
        if not ok:
            raise ConfigError(f"config key {key!r}: {why}")

    need(re.fullmatch(r"[\w.-]+", cfg.name) is not None, "name", "use letters, digits, '.', '_' or '-'")
    need(cfg.data.batch_size > 0, "data.batch_size", "must be positive")
    need(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(cfg.data.jpeg_draft is None or cfg.data.jpeg_draft >= 1, "data.jpeg_draft",
         "must be >= 1 pixels, or null to decode at full size")
    need(len(cfg.data.caption_fields) > 0, "data.caption_fields", "name at least one caption field")
    later = cfg.data.later_caption_fields
    need(later is None or len(later) > 0, "data.later_caption_fields", "name at least one caption field, or null")
    need(cfg.data.later_epoch >= 2, "data.later_epoch", "must be >= 2 (epochs count from 1; epoch 1 reads "
         "data.caption_fields)")
    for name, fields in (("caption_fields", cfg.data.caption_fields), ("later_caption_fields", later or {})):
        for k, w in fields.items():
            need(isinstance(w, (int, float)) and w > 0, f"data.{name}.{k}", "weights must be positive numbers")
    for k, n in cfg.data.sentence_sample.items():
        need(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"data.sentence_sample.{k}",
             "give the most sentences to keep of this field's caption (an integer >= 1); leave a field out to keep "
             "its whole caption")
    need(not cfg.data.resampled or bool(cfg.data.samples_per_epoch), "data.samples_per_epoch",
         "required when data.resampled=true")
    need(cfg.data.hard_negatives.per_sample >= 1, "data.hard_negatives.per_sample", "must be >= 1")
    if cfg.data.hard_negatives.source is not None:
        from lit_compclip.data.negatives import SOURCES

        try:
            resolve(SOURCES, cfg.data.hard_negatives.source, "hard-negative source")
        except ValueError as e:
            raise ConfigError(f"config key 'data.hard_negatives.source': {e}") from None
    need(cfg.wandb.mode in ("auto", "online", "offline", "disabled"), "wandb.mode",
         "choose one of auto, online, offline, disabled")
    need(cfg.probes.every_n_epochs >= 1, "probes.every_n_epochs", "must be >= 1")
    need(cfg.probes.failures >= 0, "probes.failures", "must be >= 0")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(cfg.optim.lr >= 0, "optim.lr", "must be >= 0")
    need(cfg.optim.text_lr is None or cfg.optim.text_lr >= 0, "optim.text_lr", "must be >= 0, or null for optim.lr")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(cfg.optim.eps > 0, "optim.eps", "must be > 0")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas",
         "give two numbers in [0, 1)")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(cfg.optim.text_frozen_steps >= 0, "optim.text_frozen_steps", "must be >= 0")
    need(not (cfg.optim.micro_batch_size and cfg.model.image.stem == "conv" and cfg.model.image.stem_norm == "batch"),
         "optim.micro_batch_size", "GradCache with model.image.stem_norm=batch would normalise each micro-batch on "
         "its own, so its gradients would not be the whole batch's; use model.image.stem_norm=group")
    need(cfg.optim.implementation in ADAMW_IMPLEMENTATIONS, "optim.implementation",
         f"{cfg.optim.implementation!r}: choose {', '.join(m for m in ADAMW_IMPLEMENTATIONS if m)} or null (torch's "
         f"own choice)")
    need(cfg.optim.micro_batch_size is None or cfg.optim.micro_batch_size >= 1, "optim.micro_batch_size",
         "must be >= 1 samples, or null for no micro-batches")
    check_trainer(cfg.trainer, need)
    need(cfg.trainer.checkpoint_every_n_steps is None or cfg.trainer.checkpoint_every_n_steps >= 1,
         "trainer.checkpoint_every_n_steps", "must be >= 1, or null for checkpoints at epoch ends only")
    need(cfg.resume is None or bool(cfg.resume.strip()), "resume",
         "give a checkpoint path, last, auto, or null")
    v = cfg.trainer.limit_val_batches
    need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
         or (isinstance(v, float) and 0.0 <= v <= 1.0), "trainer.limit_val_batches",
         "give a number of batches (an integer >= 0), a fraction in [0, 1], or null for all")
    need(cfg.model.compile_mode in COMPILE_MODES, "model.compile_mode",
         f"{cfg.model.compile_mode!r}: choose {', '.join(m for m in COMPILE_MODES if m)} or null (torch's default)")
    need(cfg.model.compile or cfg.model.compile_mode is None, "model.compile_mode",
         "applies to model.compile=true only: set it, or leave the mode null")
    need(cfg.model.length_groups >= 1, "model.length_groups", "must be >= 1 (1: one padded batch)")
    need(cfg.model.embed_dim >= 1, "model.embed_dim", "must be >= 1")
    need(cfg.model.max_logit_scale > 0, "model.max_logit_scale", "must be > 0")
    for key in ("img_size", "patch_size", "depth", "width", "heads"):
        need(cfg.model.image[key] is None or cfg.model.image[key] >= 1, f"model.image.{key}",
             "must be >= 1, or null for the timm model's own")
    need(cfg.model.image.stem_groups >= 1, "model.image.stem_groups", "must be >= 1")
    convs, patch = list(cfg.model.image.stem_convs), cfg.model.image.patch_size
    halvings = patch.bit_length() - 1 if patch and patch & (patch - 1) == 0 else None
    need(all(n >= 0 for n in convs) and (halvings is None or cfg.model.image.stem != "conv" or len(convs) == halvings),
         "model.image.stem_convs", f"give one count >= 0 per halving of model.image.patch_size={patch}"
         + (f" ({halvings} of them, e.g. {[0] * halvings})" if halvings else ""))
    if cfg.model.image.stem == "patch":  # the stem_* keys shape the conv stem only; a changed one would be ignored
        defaults = ImageConfig()
        for key in ("stem_convs", "stem_norm", "stem_groups"):
            value = cfg.model.image[key]
            value = list(value) if key == "stem_convs" else value
            need(value == getattr(defaults, key), f"model.image.{key}",
                 f"shapes the conv stem only; set model.image.stem=conv, or leave it at {getattr(defaults, key)!r} "
                 f"with model.image.stem=patch")
    from lit_compclip.towers.image import check_patch_dropout  # torch: the tower option checks import it anyway

    try:  # the image tower's own rule, checked before anything is built
        check_patch_dropout(cfg.model.image.patch_dropout, cfg.model.image.pool)
    except ValueError as e:
        raise ConfigError(f"config key 'model.image.patch_dropout': {e}") from None
    crop = cfg.model.image.crop_scale
    need(len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1, "model.image.crop_scale",
         "give two numbers [min, max] with 0 < min <= max <= 1")
    for key, choices in (("pool", ("model", "flatten")), ("pos_embed", ("learn", "sincos")),
                         ("stem", ("patch", "conv")), ("stem_norm", ("group", "batch"))):
        need(cfg.model.image[key] in choices, f"model.image.{key}", f"choose {' or '.join(choices)}")
    need(not (cfg.model.image.pretrained and cfg.model.image.stem == "conv"), "model.image.stem",
         "a conv stem has no pretrained weights; set model.image.stem=patch with model.image.pretrained=true")
    need(cfg.trainer.fsdp.sharding_strategy in FSDP_SHARDING, "trainer.fsdp.sharding_strategy",
         f"choose one of {', '.join(FSDP_SHARDING)}")
    need(cfg.trainer.fsdp.state_dict_type in ("full", "sharded"), "trainer.fsdp.state_dict_type",
         "choose full or sharded")
    name, text = split_tower_options(cfg.model.text)
    try:
        tower = resolve(TEXT_TOWERS, name, "text tower")
    except ValueError as e:
        raise ConfigError(f"config key 'model.text.tower': {e}") from None
    try:
        check_options(tower, text, "model.text", given=("embed_dim",))
        check_option_types(tower, text, "model.text")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # Counts of the shipped towers; whether unfreeze_layers fits the model's layers is known once it is loaded.
    for key, low in (("unfreeze_layers", 0), ("max_seq_len", 1), ("layers", 1), ("width", 1), ("heads", 1)):
        value = text.get(key)
        need(not isinstance(value, (int, float)) or value >= low, f"model.text.{key}", f"must be >= {low}")
    for name, suite in cfg.probes.suites.items():
        kind, options = split_suite(name, suite)
        try:
            probe = resolve(PROBES, kind, "probe")
        except ValueError as e:
            raise ConfigError(f"probes.suites.{name}: {e}") from None
        try:
            check_options(probe, options, f"probes.suites.{name}", given=("limit",))
            check_option_types(probe, options, f"probes.suites.{name}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    from lit_compclip.config.plugins import check as check_plugins

    check_plugins(cfg)


_PLAIN_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}


def _accepts(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return bool in types
    return isinstance(value, types) or (float in types and isinstance(value, int))


def check_option_types(fn, options, where: str) -> None:
    """ValueError for an option whose parameter is annotated as plain bool/int/float/str (or `X | None`) and which
    holds another type: `model.text.unfreeze_layers=abc` fails here, not as a TypeError deep in the tower."""
    import inspect

    params = inspect.signature(fn).parameters
    for key, value in options.items():
        p = params.get(key)
        if p is None:
            continue
        note = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        parts = [t.strip() for t in str(note).split("|")]
        if not parts or not all(t in _PLAIN_TYPES for t in parts):
            continue  # a richer annotation (Sequence[str], ...): the constructor checks it
        types = tuple(_PLAIN_TYPES[t] for t in parts)
        if not _accepts(value, types):
            raise ValueError(f"{where}.{key}={value!r}: must be {' or '.join(parts)}")


def _devices_ok(devices) -> bool:
    """The forms Lightning takes for trainer.devices: auto, N >= 1, -1 (all), a list of ids, or "0,1"."""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    text = str(devices).strip()
    return text == "auto" or (re.fullmatch(r"-1|\d+|(\d+\s*,\s*)+\d*", text) is not None and text != "0")


def check_trainer(t: DictConfig, need) -> None:
    """Trainer values Lightning would refuse (names checked against its registries), before anything is built;
    whether a named accelerator is present here is left to the Trainer (`compclip config` runs anywhere)."""
    need(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", "must be >= 1, or -1 for trainer.max_epochs")
    need(t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps >= 1), "trainer.max_epochs",
         "must be >= 1 (or -1 with trainer.max_steps set)")
    need(t.num_nodes >= 1, "trainer.num_nodes", "must be >= 1")
    need(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
    need(t.gradient_clip_val is None or t.gradient_clip_val >= 0, "trainer.gradient_clip_val",
         "must be >= 0, or null for no clipping")
    need(_devices_ok(t.devices), "trainer.devices",
         f"{t.devices!r} is not a device count (>= 1, or -1 for all), a list of device ids, or auto")
    if t.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        names = StrategyRegistry.available_strategies()
        shown = [n for n in names if "find_unused" not in n]  # the variants would fill the line
        need(t.strategy.lower() in names, "trainer.strategy", f"unknown strategy {t.strategy!r}"
             f"{suggest(t.strategy, names)}; choose auto or one of {', '.join(shown)} (or a *_find_unused_* variant)")
    if t.accelerator not in ("auto", "gpu"):
        from lightning.pytorch.accelerators import AcceleratorRegistry

        names = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
        need(t.accelerator in names, "trainer.accelerator",
             f"unknown accelerator {t.accelerator!r}{suggest(t.accelerator, names)}; choose one of {', '.join(names)}")
    if t.precision is not None:
        try:  # Lightning's own list of precision flags (a private name: if it moves, the Trainer still checks)
            from typing import get_args

            from lightning.fabric.connector import (_PRECISION_INPUT_INT, _PRECISION_INPUT_STR,
                                                    _PRECISION_INPUT_STR_ALIAS)
        except ImportError:
            return
        names = [str(p) for p in get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS)
                 + get_args(_PRECISION_INPUT_INT)]
        need(t.precision in names, "trainer.precision", f"unknown precision {t.precision!r}"
             f"{suggest(t.precision, names)}; choose one of {', '.join(dict.fromkeys(names))}, or null (bf16-mixed "
             f"on GPU, 32-true on CPU)")
