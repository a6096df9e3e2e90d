"""`compclip probe`: score a checkpoint or a third-party encoder with the configured probes (or ones named on the
command line); writes probes.json, failures.md, encoder.json and CLIP_benchmark-style results."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lit_compclip.config import ConfigError, load_config

USAGE = ("compclip probe (--ckpt PATH | --encoder KIND:TARGET) [EXP.yaml ...] [key=value ...] "
         "[--probe NAME [option=value ...]]... [--dump DIR] [--out DIR] [--device DEVICE]; encoders: "
         "compclip:CKPT, open_clip:ARCH@TAG_OR_FILE, hf:FOLDER_OR_NAME")
FLAGS = ("--ckpt", "--encoder", "--device", "--dump", "--out", "--probe")


def parse_args(args: list[str]) -> dict[str, Any]:
    """Split the command line into the checkpoint or encoder, device, dump/out folders, experiment files, config
    overrides and probes. Inside a `--probe NAME` group, `option=value` without a dot is that probe's option; a
    dotted key is a config override wherever it stands."""
    out: dict[str, Any] = {"ckpt": None, "encoder": None, "device": None, "dump": None, "out": None, "files": [],
                           "overrides": [], "probes": {}}
    current = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in FLAGS:
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
    if not out["ckpt"] and not out["encoder"]:
        raise ConfigError(f"compclip probe: --ckpt PATH is required (or --encoder KIND:TARGET); usage: {USAGE}")
    if out["ckpt"] and out["encoder"]:
        raise ConfigError("compclip probe: give --ckpt PATH or --encoder KIND:TARGET, not both "
                          "(--encoder compclip:PATH is --ckpt PATH)")
    return out


def default_out(spec: str) -> str:
    """runs/probe-<spec>: the spec with a local path shortened to its file name and odd characters made `_`."""
    kind, _, target = spec.partition(":")
    parts = [os.path.basename(os.path.normpath(p)) if os.path.exists(os.path.expanduser(p)) else p
             for p in target.split("@")]
    name = re.sub(r"[^A-Za-z0-9._@-]+", "_", f"{kind}_{'@'.join(parts)}").strip("_.")
    return os.path.join("runs", f"probe-{name}")


def suites_for(cfg: DictConfig, named: dict[str, dict]) -> dict[str, dict]:
    """The config's probe suites, or only the `--probe` ones (a configured name starts from its options)."""
    configured = OmegaConf.to_container(cfg.probes.suites)
    if not named:
        return configured
    return {name: {**configured.get(name, {}), **options} for name, options in named.items()}


def probe_checkpoint(args: list[str]) -> dict[str, Any]:
    """Run `compclip probe`; returns {"probes": metrics, "out": folder, "dump": folder or None, "seconds",
    "encoder": what was used, "clip_benchmark": the result files written}."""
    from lit_compclip.encoders import build_encoder, check_encoder
    from lit_compclip.probes import run_suite, split_suite
    from lit_compclip.probes.export import clip_benchmark_results, write_clip_benchmark
    from lit_compclip.synth import ensure_synth

    start = time.perf_counter()
    parsed = parse_args(list(args))
    cfg = load_config(parsed["files"], parsed["overrides"])
    suites = suites_for(cfg, parsed["probes"])
    if not suites:
        raise ConfigError("compclip probe: no probes configured; name one with --probe NAME option=value ...")
    spec = parsed["encoder"] or f"compclip:{parsed['ckpt']}"
    if parsed["device"] is not None:
        import torch

        try:
            kind = torch.device(parsed["device"]).type
        except RuntimeError:
            raise ConfigError(f"compclip probe: --device {parsed['device']!r} is not a torch device (cpu, cuda, "
                              f"cuda:1, ...)") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"compclip probe: --device {parsed['device']!r}, but torch sees no CUDA GPU")
    check_encoder(spec)  # a missing file or an unknown model stops us before the world is built
    if not parsed["probes"]:
        ensure_synth(cfg)  # the default suites are the synthetic world's probe sets
    from lit_compclip.callbacks import build_probes, write_results  # Lightning: seconds to import

    try:
        probes = build_probes(suites, cfg.probes.get("limit"))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    encoder = build_encoder(spec, parsed["device"])  # after the probes: a bad probe option costs no model load
    records: dict = {}
    metrics = run_suite(probes, encoder, records)  # as training's probe callback runs them
    if parsed["ckpt"]:
        ckpt = os.path.abspath(parsed["ckpt"])
        stem = os.path.splitext(os.path.basename(ckpt))[0]
        fallback = os.path.join(os.path.dirname(os.path.dirname(ckpt)), f"probe-{stem}")
    else:
        fallback = default_out(spec)
    out = parsed["out"] or parsed["dump"] or fallback
    title = f"Probe failures of {parsed['ckpt'] or spec}"
    write_results(metrics, records, out, cfg.probes.failures, parsed["dump"], title)
    info = encoder.info
    with open(os.path.join(out, "encoder.json"), "w") as f:
        json.dump(info, f, indent=1)
    types = {name: split_suite(name, suite)[0] for name, suite in suites.items()}
    exported = clip_benchmark_results(metrics, types, str(info["model"]), str(info["pretrained"]), info)
    paths = write_clip_benchmark(exported, os.path.join(out, "clip_benchmark"))
    return {"probes": metrics, "out": out, "dump": parsed["dump"], "seconds": time.perf_counter() - start,
            "encoder": info, "clip_benchmark": paths}
