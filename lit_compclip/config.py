"""Structured configs (the defaults ARE the embedded default experiment), merged and checked before anything runs."""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from lit_compclip.registry import suggest


FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


class ConfigError(ValueError):
    """A user-caused configuration problem, reported as one line (the CLI exits with status 2)."""


# What libraries (timm, transformers, sentence-transformers, Lightning) raise for a value they cannot build from.
BUILD_ERRORS = (ValueError, OSError, RuntimeError, KeyError, ImportError)


def first_line(e: BaseException) -> str:
    """An exception's first non-empty message line (its type's name when it has none)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    return next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)


def _named_option(msg: str, options: dict[str, Any]) -> str | None:
    """Which of `options` (name -> value) a library's message is about: the first one it names (`devices`), else the
    one whose text value it holds (DeepSpeedStrategy for strategy=deepspeed)."""
    named = [(m.start(), k) for k in options for m in [re.search(rf"\b{k}\b", msg, re.IGNORECASE)] if m]
    if named:
        return min(named)[1]
    return next((k for k, v in options.items()
                 if isinstance(v, str) and len(v) >= 3 and v != "auto" and v.lower() in msg.lower()), None)


@contextlib.contextmanager
def reported_as(key: str, errors: tuple[type[BaseException], ...] = BUILD_ERRORS, options: dict | None = None):
    """Turn `errors` raised while something is built from config key `key` (model, trainer, ...) into one ConfigError
    line: the library's first message line, after the key (`key.option` for the one of `options` it is about) unless
    it already names a key under `key`. Other exceptions (bugs) pass as they are."""
    try:
        yield
    except ConfigError:
        raise
    except errors as e:
        msg = first_line(e)
        if re.search(rf"(?<![\w.]){re.escape(key)}[.=:]", msg):  # e.g. "model.text.cache_dir: ..."
            raise ConfigError(msg) from e
        option = _named_option(msg, options or {})
        name = f"{key}.{option}" if option else key
        raise ConfigError(f"config key {name!r}: {msg}") from e


@dataclass
class SynthConfig:
    out_dir: str = "data/synth"  # built by `compclip synth`, or by `compclip train` when absent
    auto: bool = True  # build it on first use (rebuild it when built otherwise) when data paths point inside out_dir
    train_families: int = 1875  # 8 scenes each: 4 counterfactuals and their shape twins (4 with shape_twins=0)
    # each training family also with one object's shape replaced (synth/world.py, docs/SYNTHETIC_WORLD.md)
    shape_twins: int = 1
    eval_families: int = 400
    probe_size: int = 400
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 2
    seed: int = 0
    # > 0: each training sample also gets `recaption_one_attribute`, with this share of its anchored lists naming
    # the first object by colour or shape alone (for data.later_caption_fields; docs/SYNTHETIC_WORLD.md)
    one_attribute_anchors: float = 0.0
    one_attribute_colour: float = 0.5  # of those one-attribute anchors, the share naming the colour ("the red one")
    # this share of the training lists names the object at the far end again ("the blue square is the rightmost"), not
    # the left (top) one: then no object is the one every caption names twice (docs/RESEARCH_LOG.md, issue 18)
    far_end_anchors: float = 0.0
    # 1: each training sample also gets `plain_list`, its objects listed with no place: the default's epoch 2 trains a
    # quarter of its samples on it (data.later_caption_fields; docs/RESEARCH_LOG.md, issue 18)
    plain_lists: int = 1


@dataclass
class HardNegativesConfig:
    source: Optional[str] = None  # None: off; scene: false captions from the json scene graph; rules: word swaps
    per_sample: int = 1  # false captions per training sample (fewer where the source cannot make that many)


@dataclass
class DataConfig:
    train_shards: str = "data/synth/train"  # a folder, a brace pattern, a URL, or several joined with '::'
    val_shards: Optional[str] = "data/synth/val"
    caption_fields: Dict[str, float] = field(default_factory=lambda: {"recaption": 1.0})  # 'txt' or .json fields
    # A caption curriculum: from epoch `later_epoch` (1-based) on, training reads these sources instead (null: never).
    # The default: a quarter of epoch 2's samples read the place-free list (synth.plain_lists), which is as true of the
    # place-swapped twin in the batch, so a list's embedding learns to favour neither object (docs/RESEARCH_LOG.md).
    later_caption_fields: Optional[Dict[str, float]] = field(
        default_factory=lambda: {"recaption": 0.75, "plain_list": 0.25})
    later_epoch: int = 2
    sentence_sample: int = 1  # >0: train on a random subset of at most this many sentences (the paper's refinement)
    batch_size: int = 64  # 16 families of 4 counterfactuals
    num_workers: int = 1
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    resampled: bool = False
    samples_per_epoch: Optional[int] = None
    group_key: Optional[str] = "family"  # keep counterfactual siblings in one batch (see docs/SYNTHETIC_WORLD.md)
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)  # extra image->text negatives


@dataclass
class ImageConfig:
    model: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    img_size: Optional[int] = 64
    patch_size: Optional[int] = 8
    depth: Optional[int] = 4
    width: Optional[int] = 128
    heads: Optional[int] = 4
    pos_embed: str = "learn"  # or "sincos": fixed 2-D sin-cos (ViTs only)
    # "flatten" projects all patch tokens, so where an object sits shapes the embedding from the first step (ViTs
    # only); "model": the trunk's own pooling (a ViT's class token must first learn to carry place).
    pool: str = "flatten"
    stem: str = "conv"  # 3x3 convolutions of stride 2 (shapes are told apart sooner); "patch": the ViT's own patchify
    stem_norm: str = "group"  # the conv stem's norm: GroupNorm per image, or "batch" (BatchNorm: depends on the batch)
    stem_groups: int = 8  # GroupNorm's groups (1: one mean and variance per image)
    # 3x3 stride-1 convolutions after each of the conv stem's halvings (one count per halving of patch_size). [0, 1, 1]:
    # tokens see 39 px, past a whole object (19-26 px); it fixed the held-out relation phrasings and lifted
    # swap-object in the runs that chose it (docs/RESEARCH_LOG.md, stem convolutions).
    stem_convs: List[int] = field(default_factory=lambda: [0, 1, 1])
    augment: bool = True
    crop_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])
    grad_checkpointing: bool = False  # recompute the trunk's blocks in backward: less memory, ~30% more compute
    channels_last: bool = False  # NHWC trunk and batch: faster convolutions on GPU (CNN trunks, a ViT's patch conv)


@dataclass
class ModelConfig:
    embed_dim: int = 256
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    local_loss: bool = True  # each process scores only its own rows of the global-batch loss: O(b x B) memory
    # Captions are encoded in this many groups of similar length, each padded only to its own longest (1: one
    # padded batch): 1.30x faster steps on the synthetic world (`make bench`); the embeddings are the same.
    length_groups: int = 2
    compile: bool = False  # torch.compile the image trunk and the text tower; the first steps (and new lengths) compile
    image: ImageConfig = field(default_factory=ImageConfig)
    # `tower` picks the registry entry; every other key goes to that tower's constructor and is checked there.
    # The frozen layers' output is cached on disk and shared by runs (lit_compclip/text_cache.py); null = off.
    text: Dict[str, Any] = field(default_factory=lambda: {"tower": "sentence_transformers",
                                                          "model": "all-MiniLM-L6-v2", "unfreeze_layers": 2,
                                                          "cache_dir": "${cache_dir}/text", "cache_dtype": "float16"})


@dataclass
class OptimConfig:
    lr: float = 1e-3
    # Learning rate of the pretrained text layers (None = lr): 5e-4, half the fresh image tower's 1e-3, lifted
    # VG-Attribution and retrieval and kept the relations in the runs that chose it (docs/RESEARCH_LOG.md, format 7).
    text_lr: Optional[float] = 5e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 50
    text_frozen_steps: int = 0  # pretrained text layers untrained for the first N steps, then warmed up
    min_lr_ratio: float = 0.0
    # GradCache: encode each process's data.batch_size samples this many at a time, the loss still over the whole
    # (global) batch; one extra forward pass per step. null (or >= data.batch_size): the whole batch at once.
    micro_batch_size: Optional[int] = None


@dataclass
class FSDPConfig:
    # Used when trainer.strategy=fsdp (GPUs only): each transformer block of both towers is one FSDP unit.
    sharding_strategy: str = "FULL_SHARD"  # or SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD
    cpu_offload: bool = False  # parameters (and their gradients) live in CPU memory between uses
    state_dict_type: str = "full"  # checkpoints: "full" (one file, rank 0) or "sharded" (a folder, every rank)


@dataclass
class TrainerConfig:
    max_epochs: int = 2
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # or ddp, fsdp (see trainer.fsdp), or any Lightning strategy name
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    precision: Optional[str] = None  # None: bf16-mixed on GPU, 32-true on CPU
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    fast_dev_run: Any = False
    limit_train_batches: Optional[float] = None
    # Validation batches per epoch (an int), a fraction of them (a float <= 1.0), or null for all: 8 batches (512 of
    # the synthetic world's 1,600 validation samples) save about 13 s of the default run's 10 minutes.
    limit_val_batches: Any = 8
    enable_progress_bar: bool = True
    deterministic: bool = False
    checkpoint_every_n_steps: Optional[int] = None  # also save checkpoints/last.ckpt every N steps (resumable)


@dataclass
class ProbesConfig:
    every_n_epochs: int = 1
    limit: Optional[int] = None  # score only the first N examples of each probe file (quick runs, tests)
    dump: bool = True  # at the end of fit, per-example results to <run>/probe_records/<probe>/<subset>.jsonl
    failures: int = 8  # worst failures per subset shown in <run>/failures.md and the W&B tables
    # name -> options; `type` picks the probe (default: the name itself); the rest goes to the probe's constructor.
    suites: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "sugarcrepe": {"annotations": "data/synth/probes/sugarcrepe", "images": "data/synth/probes/sugarcrepe/images"},
        # The newer sets follow synth.out_dir, so a world built elsewhere brings them along.
        "sugarcrepe_pp": {"annotations": "${synth.out_dir}/probes/sugarcrepe_pp",
                          "images": "${synth.out_dir}/probes/sugarcrepe/images"},  # SugarCrepe's images, as in COCO
        "aro": {"root": "data/synth/probes/aro", "images": "data/synth/probes/aro/images"},
        "winoground": {"examples": "data/synth/probes/winoground/examples.jsonl",
                       "images": "data/synth/probes/winoground/images"},
        "whatsup": {"root": "${synth.out_dir}/probes/whatsup"},
        "docci": {"type": "retrieval", "annotations": "data/synth/probes/docci/docci_descriptions.jsonlines",
                  "images": "data/synth/probes/docci/images", "format": "docci"},
    })


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto: online if an API key is configured, else offline; or online / offline / disabled
    project: str = "lit_compclip"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    name: str = "default"
    seed: int = 0
    run_dir: Optional[str] = None  # default runs/<name>
    cache_dir: str = "data/cache"  # derived data shared by runs: the text tower's frozen-layer outputs
    init_from: Optional[str] = None  # a checkpoint to start from: its weights only (fresh optimizer, schedule, step)
    # Continue a run exactly (step, epoch, optimizer, schedule, data position) in its own folder: a checkpoint path,
    # last (the run's checkpoints/last.ckpt) or auto (last when there is one, else a fresh run: for requeued jobs).
    resume: Optional[str] = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def _keys(node, prefix="") -> list[str]:
    out = []
    for k in node.keys() if isinstance(node, DictConfig) else []:
        full = f"{prefix}{k}"
        out.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not child._is_missing() and child._metadata.object_type is not dict:
            out += _keys(child, full + ".")
    return out


def _one_line(e: OmegaConfBaseException, where: str, schema) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) and "not in" in msg:
        return ConfigError(f"unknown config key {key!r} in {where}{suggest(key, _keys(schema))}")
    if isinstance(e, ValidationError) and "value 'None'" in msg:
        return ConfigError(f"config key {key!r} in {where} has no value; it needs one ({msg.split('for ')[-1]})")
    if isinstance(e, ValidationError):
        return ConfigError(f"bad value for config key {key!r} in {where}: {msg}")
    return ConfigError(f"config key {key!r} in {where}: {msg}")


def normalise_overrides(args: list[str]) -> list[str]:
    """Accept `key=value`, `--key=value` and `--key value` (the form W&B sweeps pass)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise ConfigError(f"override --{a} has no value")
                a, i = f"{a}={args[i + 1]}", i + 1
        if "=" not in a:
            raise ConfigError(f"override {a!r} is not of the form key=value")
        out.append(a)
        i += 1
    return out


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Experiment files are the leading *.yaml/*.yml arguments without '=', then any `--experiment PATH` (the form a
    W&B sweep passes, `--experiment=PATH` too); everything else is an override."""
    args, files, rest = list(args), [], []
    while args and args[0].endswith((".yaml", ".yml")) and "=" not in args[0] and not args[0].startswith("--"):
        files.append(args.pop(0))
    while args:
        arg = args.pop(0)
        if arg == "--experiment":
            if not args:
                raise ConfigError("--experiment needs a path to an experiment YAML file")
            files.append(args.pop(0))
        elif arg.startswith("--experiment="):
            files.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return files, rest


# Maps whose meaning depends on a name inside them: a new tower or a new probe list replaces, never merges.
def _clear_replaced(cfg: DictConfig, new: DictConfig, key: str | None = None) -> None:
    """Empty the maps that `new` replaces whole: any of them when `new` is an experiment file (key None), else only the
    map an override names whole (`key`)."""
    text = OmegaConf.select(new, "model.text", default=None)
    if isinstance(text, DictConfig) and text.get("tower", cfg.model.text.get("tower")) != cfg.model.text.get("tower"):
        cfg.model.text = {}
    # A caption mixture is whole (alt_text.yaml's {alt_text: 1.0} must not keep the default recaption beside it); a
    # dotted override of one field (data.caption_fields.alt_text=0.2) still adds to it.
    for path in ("probes.suites", "data.caption_fields", "data.later_caption_fields"):
        if key in (None, path) and isinstance(OmegaConf.select(new, path, default=None), DictConfig):
            OmegaConf.update(cfg, path, {}, merge=False)


def load_config(files: list[str] = (), overrides: list[str] = ()) -> DictConfig:
    """Defaults <- each experiment YAML in order <- key=value overrides; checked, one-line ConfigError otherwise."""
    schema = OmegaConf.structured(Config)
    cfg = schema.copy()
    later_named = False  # whether a file or an override sets data.later_caption_fields (see _fit_default_curriculum)
    for path in files:
        if not os.path.isfile(path):
            raise ConfigError(f"experiment file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        later_named |= isinstance(loaded.get("data"), DictConfig) and "later_caption_fields" in loaded.data
        try:
            _clear_replaced(cfg, loaded)
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as e:
            raise _one_line(e, path, schema) from None
    dotlist = normalise_overrides(list(overrides))
    for item in dotlist:
        try:
            new = OmegaConf.from_dotlist([item])
            key = item.split("=", 1)[0].strip()
            later_named |= key.startswith("data.later_caption_fields")
            _clear_replaced(cfg, new, key)
            cfg = OmegaConf.merge(cfg, new)
        except OmegaConfBaseException as e:
            raise _one_line(e, f"override {item!r}", schema) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config key {missing[0]!r} has no value; set it in an experiment file or as an override")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise _one_line(e, "interpolation", schema) from None
    if not later_named:
        _fit_default_curriculum(cfg)
    check_values(cfg)
    return cfg


def _fit_default_curriculum(cfg: DictConfig) -> None:
    """The default curriculum's epoch 2 reads `plain_list`, which only a synthetic world built with synth.plain_lists=1
    holds: on any other training data it is off (null) unless a file or an override names data.later_caption_fields."""
    from lit_compclip.synth.write import under_world, world_manifest_args

    if not under_world(cfg.synth.out_dir, str(cfg.data.train_shards)):
        holds = False
    elif cfg.synth.auto:  # the world is built (or rebuilt) from these arguments
        holds = cfg.synth.plain_lists == 1
    else:  # a world used as it is: its manifest says (none yet: the missing shards stop the run)
        built = world_manifest_args(cfg.synth.out_dir)
        holds = built is None or built.get("plain_lists") == 1
    if not holds:
        cfg.data.later_caption_fields = None


FIELD_SAMPLES = 64  # the first samples of the shards whose caption fields are checked before a run starts


def check_caption_fields(cfg: DictConfig) -> bool:
    """Each field data.caption_fields and data.later_caption_fields name occurs in the first samples of the training
    shards, and each of caption_fields in the validation shards': a field the shards do not hold is skipped in every
    sample, silently narrowing the mixture, or leaving no batch at all. Reads only local shards (remote or missing
    ones are left to the loader and check_inputs). Returns whether shards of a synthetic world still to be (re)built
    were left out: call it again once the world is built."""
    from lit_compclip.shards import sample_fields
    from lit_compclip.synth.write import config_args, differs, under_world, world_args

    caption, later = dict(cfg.data.caption_fields), dict(cfg.data.later_caption_fields or {})
    deferred = False
    for key, named in (("train_shards", {**caption, **later}), ("val_shards", caption)):
        spec = cfg.data[key]
        if not spec:
            continue
        if cfg.synth.auto and under_world(cfg.synth.out_dir, str(spec)) \
                and differs(cfg.synth.out_dir, world_args(**config_args(cfg.synth))) != "":
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
    try:
        # not lit_compclip.synth: it imports config
        from lit_compclip.synth.write import (OPTIONAL_FIELDS, config_args, under_world, world_args,
                                              world_manifest_args)

        args = world_args(**config_args(cfg.synth))
    except ValueError as e:  # 'synth: NAME must ...'
        name = re.match(r"synth: (?:need )?(\w+)", str(e))
        raise ConfigError(f"config key 'synth.{name.group(1) if name else '?'}': {str(e).removeprefix('synth: ')}") \
            from None
    need(len(cfg.data.caption_fields) > 0, "data.caption_fields", "name at least one caption field")
    later = cfg.data.later_caption_fields
    need(later is None or len(later) > 0, "data.later_caption_fields", "name at least one caption field, or null")
    need(cfg.data.later_epoch >= 2, "data.later_epoch", "must be >= 2 (epochs count from 1; epoch 1 reads "
         "data.caption_fields)")
    # A field that only a synth option writes (the default's epoch-2 `plain_list`) would be missing from every sample
    # of a world built without it, and of any other shards: each one skipped, or the mixture silently changed.
    on_world = under_world(cfg.synth.out_dir, str(cfg.data.train_shards))
    built = args if cfg.synth.auto else world_manifest_args(cfg.synth.out_dir) if on_world else None
    for name, fields in (("caption_fields", cfg.data.caption_fields), ("later_caption_fields", later or {})):
        for k, w in fields.items():
            need(isinstance(w, (int, float)) and w > 0, f"data.{name}.{k}", "weights must be positive numbers")
            if k not in OPTIONAL_FIELDS:
                continue
            need(on_world, f"data.{name}.{k}", f"only the synthetic world writes {k}, and data.train_shards lies "
                 f"outside synth.out_dir ({cfg.synth.out_dir}): set data.{name}=null or name fields your shards hold")
            arg, ok, want = OPTIONAL_FIELDS[k]
            need(built is None or ok(built[arg]), f"data.{name}.{k}", f"the synthetic world writes {k} only with "
                 f"synth.{arg}{want} (it is {built and built[arg]})")
    need(cfg.data.sentence_sample >= 0, "data.sentence_sample", "must be >= 0")
    need(not cfg.data.resampled or bool(cfg.data.samples_per_epoch), "data.samples_per_epoch",
         "required when data.resampled=true")
    need(cfg.data.hard_negatives.per_sample >= 1, "data.hard_negatives.per_sample", "must be >= 1")
    if cfg.data.hard_negatives.source is not None:
        from lit_compclip.negatives import SOURCES

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
