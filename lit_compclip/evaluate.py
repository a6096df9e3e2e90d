"""`compclip probe`: score a checkpoint with the configured probes (or ones named on the command line)."""

from __future__ import annotations

import os
import time
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lit_compclip.checkpoints import load_module, read_checkpoint_file
from lit_compclip.config import ConfigError, load_config

USAGE = ("compclip probe --ckpt PATH [EXP.yaml ...] [key=value ...] [--probe NAME [option=value ...]]... "
         "[--dump DIR] [--out DIR]")


def parse_args(args: list[str]) -> dict[str, Any]:
    """Split the command line into the checkpoint, dump/out folders, experiment files, config overrides and
    probes. Inside a `--probe NAME` group, `option=value` without a dot is that probe's option; a dotted key is
    a config override wherever it stands."""
    out: dict[str, Any] = {"ckpt": None, "dump": None, "out": None, "files": [], "overrides": [], "probes": {}}
    current = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--ckpt", "--dump", "--out", "--probe"):
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"compclip probe: {arg} needs a value; usage: {USAGE}")
            value = args[i + 1]
            if arg == "--probe":
                current = out["probes"].setdefault(value, {})
            else:
                out[arg[2:]] = value
            i += 2
            continue
        if "=" in arg and current is not None and "." not in arg.split("=", 1)[0]:
            key, value = arg.split("=", 1)
            try:
                current[key] = yaml.safe_load(value) if value else value  # numbers, booleans, lists; else text
            except yaml.YAMLError:
                current[key] = value
        elif arg.endswith((".yaml", ".yml")) and "=" not in arg and not out["overrides"]:
            out["files"].append(arg)
        elif arg.startswith("--") and "=" not in arg and i + 1 < len(args):
            out["overrides"] += [arg, args[i + 1]]  # `--key value`, as for train
            i += 1
        else:
            out["overrides"].append(arg)
        i += 1
    if not out["ckpt"]:
        raise ConfigError(f"compclip probe: --ckpt PATH is required; usage: {USAGE}")
    return out


def suites_for(cfg: DictConfig, named: dict[str, dict]) -> dict[str, dict]:
    """The config's probe suites, or only the `--probe` ones (a configured name starts from its options)."""
    configured = OmegaConf.to_container(cfg.probes.suites)
    if not named:
        return configured
    return {name: {**configured.get(name, {}), **options} for name, options in named.items()}


def probe_checkpoint(args: list[str]) -> dict[str, Any]:
    """Run `compclip probe`; returns {"probes": metrics, "out": folder, "dump": folder or None, "seconds"}."""
    from lit_compclip.synth import ensure_synth

    start = time.perf_counter()
    parsed = parse_args(list(args))
    cfg = load_config(parsed["files"], parsed["overrides"])
    suites = suites_for(cfg, parsed["probes"])
    if not suites:
        raise ConfigError("compclip probe: no probes configured; name one with --probe NAME option=value ...")
    if not parsed["probes"]:
        read_checkpoint_file(parsed["ckpt"], mmap=True)  # a bad checkpoint stops us before the world is built
        ensure_synth(cfg)  # the default suites are the synthetic world's probe sets
    from lit_compclip.callbacks import build_probes, run_probes, write_results  # Lightning: seconds to import

    try:
        probes = build_probes(suites, cfg.probes.get("limit"))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    module = load_module(parsed["ckpt"])
    records: dict = {}
    metrics = run_probes(probes, module, records)
    ckpt = os.path.abspath(parsed["ckpt"])
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    default_out = os.path.join(os.path.dirname(os.path.dirname(ckpt)), f"probe-{stem}")
    out = parsed["out"] or parsed["dump"] or default_out
    write_results(metrics, records, out, cfg.probes.failures, parsed["dump"], f"Probe failures of {parsed['ckpt']}")
    return {"probes": metrics, "out": out, "dump": parsed["dump"], "seconds": time.perf_counter() - start}
