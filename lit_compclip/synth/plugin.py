"""The synthetic world as a plug-in: its config section (`synth:` in experiments/default.yaml), the checks of that
section and of the caption fields only the world writes, and the one build of the world a run needs. The config
(lit_compclip/config/plugins.py) reaches it by name; nothing else in the package imports the synthetic world."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from omegaconf import DictConfig

from lit_compclip.errors import ConfigError
from lit_compclip.synth.manifest import (OPTIONAL_FIELDS, config_args, differs, refusal, under_world, world_args,
                                         world_manifest_args)
from lit_compclip.synth.write import generate


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
    # 1: each training sample also gets `plain_list`, its objects listed with no place: the default's epoch 2 trains a
    # quarter of its samples on it (data.later_caption_fields; docs/RESEARCH_LOG.md, issue 18)
    plain_lists: int = 1


SCHEMA = SynthConfig


def _args(cfg: DictConfig) -> dict:
    """The generator's arguments in `cfg.synth`, checked: a one-line ConfigError naming the key otherwise."""
    try:
        return world_args(**config_args(cfg.synth))
    except ValueError as e:  # 'synth: NAME must ...'
        name = re.match(r"synth: (?:need )?(\w+)", str(e))
        raise ConfigError(f"config key 'synth.{name.group(1) if name else '?'}': {str(e).removeprefix('synth: ')}") \
            from None


def _paths(cfg: DictConfig) -> list[str]:
    """Every data path the config reads: the shards and each probe suite's values."""
    paths = [str(cfg.data.train_shards), str(cfg.data.val_shards or "")]
    return paths + [str(v) for suite in cfg.probes.suites.values() for v in suite.values()]


def check(cfg: DictConfig) -> None:
    """The section's values, and the caption fields only the world writes (the default's epoch-2 `plain_list`): one
    missing from every sample of a world built without it, or of any other shards, would skip every sample or
    silently change the mixture."""
    args = _args(cfg)
    on_world = under_world(cfg.synth.out_dir, str(cfg.data.train_shards))
    built = args if cfg.synth.auto else world_manifest_args(cfg.synth.out_dir) if on_world else None
    for name in ("caption_fields", "later_caption_fields"):
        for k in cfg.data[name] or {}:
            if k not in OPTIONAL_FIELDS:
                continue
            if not on_world:
                raise ConfigError(f"config key 'data.{name}.{k}': only the synthetic world writes {k}, and "
                                  f"data.train_shards lies outside synth.out_dir ({cfg.synth.out_dir}): set "
                                  f"data.{name}=null or name fields your shards hold")
            arg, ok, want = OPTIONAL_FIELDS[k]
            if built is not None and not ok(built[arg]):
                raise ConfigError(f"config key 'data.{name}.{k}': the synthetic world writes {k} only with "
                                  f"synth.{arg}{want} (it is {built[arg]})")


def pending(cfg: DictConfig, path: str) -> bool:
    """Whether `path` lies in a world that prepare() will (re)build: nothing there can be read yet."""
    return bool(cfg.synth.auto and under_world(cfg.synth.out_dir, path)
                and differs(cfg.synth.out_dir, _args(cfg)) != "")


def check_out_dir(cfg: DictConfig, overwrite: bool, hint: str) -> None:
    """A one-line ConfigError before anything is rendered when the world cannot be built in `synth.out_dir`: a file
    in the way, a folder we may not write in, or (without `overwrite`) a world built otherwise or half built there;
    `hint` says how to rebuild it anyway."""
    from lit_compclip.cli_args import check_writable_folder

    check_writable_folder(cfg.synth.out_dir, "synth.out_dir", ConfigError)
    why = None if overwrite else refusal(cfg.synth.out_dir, _args(cfg))
    if why:
        raise ConfigError(f"synth.out_dir: {why}; {hint}, or choose another synth.out_dir")


def build(cfg: DictConfig, overwrite: bool = False, hint: str = "pass --overwrite to rebuild it") -> dict:
    """Generate the world `cfg.synth` describes (`compclip synth`); returns the generator's summary. What can be
    checked first is a one-line ConfigError, and so is a failure to write, which leaves nothing half-built."""
    check_out_dir(cfg, overwrite, hint)
    return _generate(cfg, overwrite)


def _generate(cfg: DictConfig, overwrite: bool) -> dict:
    try:
        return generate(cfg.synth.out_dir, overwrite=overwrite, **_args(cfg))
    except OSError as e:  # a full disk, a folder that became unwritable
        raise ConfigError(f"synth.out_dir: cannot write the synthetic world in {cfg.synth.out_dir!r} "
                          f"({e.strerror or type(e).__name__})") from None


def prepare(cfg: DictConfig, paths: list[str] | None = None) -> None:
    """Build the world on first use (rebuild it when it was built otherwise) when one of `paths` (default: the data
    and probe suites the config reads) lies inside `synth.out_dir` and synth.auto is on."""
    from lit_compclip.ranks import launched_apart

    out = os.path.normpath(cfg.synth.out_dir)
    if not (cfg.synth.auto and any(under_world(out, p) for p in (_paths(cfg) if paths is None else paths))):
        return
    why = differs(out, _args(cfg))
    if why == "":
        return
    if launched_apart():  # every rank would write the same files at once
        state = "is not built" if why is None else f"was built differently ({why})"
        raise ConfigError(f"synth.out_dir: the synthetic world in {out} {state}; build it once before "
                          f"starting the ranks: compclip synth EXP.yaml ...")
    check_out_dir(cfg, why is not None, "remove it, or rebuild it with `compclip synth EXP.yaml ... --overwrite`")
    if why is None:
        print(f"building the synthetic world in {out} (once) ...", flush=True)
    else:  # derived data: rebuilt from the config, never trained on silently when it no longer matches
        print(f"rebuilding the synthetic world in {out}: it was built differently ({why}) ...", flush=True)
    _generate(cfg, overwrite=why is not None)
