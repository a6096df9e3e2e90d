"""Config sections that belong to a plug-in, reached by name so that nothing here imports one: each names a module
with SCHEMA (the section's dataclass), check(cfg), pending(cfg, path) and prepare(cfg). A section left null (the
default) is off. The synthetic world is the one plug-in shipped."""

from __future__ import annotations

import importlib
from types import ModuleType

from omegaconf import DictConfig

PLUGINS = {"synth": "lit_compclip.synth.plugin"}


def active(cfg: DictConfig) -> list[tuple[str, ModuleType]]:
    """(section, plug-in module) of each plug-in section the config sets."""
    return [(name, importlib.import_module(path)) for name, path in PLUGINS.items() if cfg.get(name) is not None]


def check(cfg: DictConfig) -> None:
    for _, plugin in active(cfg):
        plugin.check(cfg)


def pending(cfg: DictConfig, path: str) -> bool:
    """Whether the data at `path` is still to be made by a plug-in's prepare() (so it cannot be read yet)."""
    return any(plugin.pending(cfg, path) for _, plugin in active(cfg))


def prepare(cfg: DictConfig, paths: list[str] | None = None) -> None:
    """Make what the config's plug-ins provide and the run reads (the synthetic world, built once): that behind the
    data paths in `paths`, or by default every path the config reads (shards and probe suites). The one caller of
    every plug-in's prepare: training, `compclip probe`, sweeps and the benchmarks all come through here."""
    for _, plugin in active(cfg):
        plugin.prepare(cfg, paths)
