"""Seeded synthetic world of coloured shapes with counterfactual families: the default data and probe suite."""

from __future__ import annotations

import os

from lit_compclip.synth.world import hard_negative_stats
from lit_compclip.synth.write import config_args, differs, generate, under_world

__all__ = ["build_synth", "ensure_synth", "generate", "hard_negative_stats", "synth_args"]


def synth_args(cfg) -> dict:
    """The generator's arguments in `cfg.synth` (without out_dir and auto)."""
    return config_args(cfg.synth)


def build_synth(cfg, overwrite: bool = False) -> dict:
    """Generate the synthetic world described by `cfg.synth`; returns the generator's summary."""
    return generate(cfg.synth.out_dir, overwrite=overwrite, **synth_args(cfg))


def ensure_synth(cfg) -> None:
    """Build the synthetic world on first use when the configured data lives inside `synth.out_dir`."""
    from lit_compclip.config import ConfigError
    from lit_compclip.ranks import launched_apart

    out = os.path.normpath(cfg.synth.out_dir)
    paths = [cfg.data.train_shards, cfg.data.val_shards or ""]
    paths += [str(v) for suite in cfg.probes.suites.values() for v in suite.values()]
    uses_synth = any(under_world(out, p) for p in paths)
    if not (cfg.synth.auto and uses_synth):
        return
    why = differs(out, synth_args(cfg))
    if why == "":
        return
    if launched_apart():  # every rank would write the same files at once
        state = "is not built" if why is None else f"was built differently ({why})"
        raise ConfigError(f"synth.out_dir: the synthetic world in {out} {state}; build it once before "
                          f"starting the ranks: compclip synth EXP.yaml ...")
    if why is None:
        print(f"building the synthetic world in {out} (once) ...", flush=True)
    else:  # derived data: rebuilt from the config, never trained on silently when it no longer matches
        print(f"rebuilding the synthetic world in {out}: it was built differently ({why}) ...", flush=True)
    build_synth(cfg, overwrite=why is not None)
