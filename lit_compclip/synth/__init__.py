"""Seeded synthetic world of coloured shapes with counterfactual families: the default data and probe suite."""

from __future__ import annotations

import os

from lit_compclip.synth.world import hard_negative_stats
from lit_compclip.synth.write import config_args, differs, generate, refusal, under_world

__all__ = ["build_synth", "ensure_synth", "generate", "hard_negative_stats", "synth_args"]


def synth_args(cfg) -> dict:
    """The generator's arguments in `cfg.synth` (without out_dir and auto)."""
    return config_args(cfg.synth)


def check_out_dir(cfg, overwrite: bool, hint: str) -> None:
    """A one-line ConfigError before anything is rendered when the world cannot be built in `synth.out_dir`: a file
    in the way, a folder we may not write in, or (without `overwrite`) a world built otherwise or half built there;
    `hint` says how to rebuild it anyway."""
    from lit_compclip.cli_args import check_writable_folder
    from lit_compclip.config import ConfigError

    check_writable_folder(cfg.synth.out_dir, "synth.out_dir", ConfigError)
    why = None if overwrite else refusal(cfg.synth.out_dir, synth_args(cfg))
    if why:
        raise ConfigError(f"synth.out_dir: {why}; {hint}, or choose another synth.out_dir")


def build_synth(cfg, overwrite: bool = False, hint: str = "pass --overwrite to rebuild it") -> dict:
    """Generate the synthetic world described by `cfg.synth`; returns the generator's summary. What can be checked
    first is a one-line ConfigError (`hint` says how to rebuild a world it refuses), and so is a failure to write,
    which leaves nothing half-built (see generate)."""
    check_out_dir(cfg, overwrite, hint)
    return _generate(cfg, overwrite)


def _generate(cfg, overwrite: bool) -> dict:
    from lit_compclip.config import ConfigError

    try:
        return generate(cfg.synth.out_dir, overwrite=overwrite, **synth_args(cfg))
    except OSError as e:  # a full disk, a folder that became unwritable
        raise ConfigError(f"synth.out_dir: cannot write the synthetic world in {cfg.synth.out_dir!r} "
                          f"({e.strerror or type(e).__name__})") from None


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
    check_out_dir(cfg, why is not None, "remove it, or rebuild it with `compclip synth EXP.yaml ... --overwrite`")
    if why is None:
        print(f"building the synthetic world in {out} (once) ...", flush=True)
    else:  # derived data: rebuilt from the config, never trained on silently when it no longer matches
        print(f"rebuilding the synthetic world in {out}: it was built differently ({why}) ...", flush=True)
    _generate(cfg, overwrite=why is not None)
