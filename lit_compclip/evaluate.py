"""`compclip probe`: score a checkpoint with the configured probes (or ones named on the command line)."""

from __future__ import annotations

import os
import time
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

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


def read_checkpoint_file(path: str, mmap: bool = False):
    """What the torch file at `path` holds (memory-mapped tensors with `mmap`), or a one-line ConfigError."""
    import torch

    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # truncated, not a torch file, ...
        raise ConfigError(f"checkpoint {path!r} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                          ) from None


def load_module(path: str):
    """The trained CompClip on the CPU in eval mode, or a one-line ConfigError naming the file."""
    from lit_compclip.model import CompClip

    checkpoint = read_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"checkpoint {path!r} is not a lit_compclip training checkpoint (no state_dict or "
                          f"hyper_parameters)")
    hp = checkpoint["hyper_parameters"]
    try:
        # scored eagerly: compiling for one pass over the probes costs more than it saves
        module = CompClip({**hp["model"], "compile": False}, hp["optim"], hp.get("total_steps"))
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(f"checkpoint {path!r} does not match this version's model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]})") from None
    return module.eval()


def suites_for(cfg: DictConfig, named: dict[str, dict]) -> dict[str, dict]:
    """The config's probe suites, or only the `--probe` ones (a configured name starts from its options)."""
    configured = OmegaConf.to_container(cfg.probes.suites)
    if not named:
        return configured
    return {name: {**configured.get(name, {}), **options} for name, options in named.items()}


def probe_checkpoint(args: list[str]) -> dict[str, Any]:
    """Run `compclip probe`; returns {"probes": metrics, "out": folder, "dump": folder or None, "seconds"}."""
    from lit_compclip.callbacks import build_probes, run_probes, write_results
    from lit_compclip.train import ensure_synth

    start = time.perf_counter()
    parsed = parse_args(list(args))
    cfg = load_config(parsed["files"], parsed["overrides"])
    suites = suites_for(cfg, parsed["probes"])
    if not suites:
        raise ConfigError("compclip probe: no probes configured; name one with --probe NAME option=value ...")
    if not parsed["probes"]:
        read_checkpoint_file(parsed["ckpt"], mmap=True)  # a bad checkpoint stops us before the world is built
        ensure_synth(cfg)  # the default suites are the synthetic world's probe sets
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
