"""`compclip probe`: score a checkpoint or a third-party encoder with the configured probes (or ones named on the
command line); writes probes.json, failures.md, encoder.json and CLIP_benchmark-style results."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lit_compclip.cli_args import UsageError, check_writable_folder, new_folder
from lit_compclip.config import ConfigError, load_config

USAGE = ("compclip probe (--ckpt PATH | --encoder KIND:TARGET) [EXP.yaml ...] [key=value ...] "
         "[--probe NAME [option=value ...]]... [--dump DIR] [--out DIR] [--device DEVICE]; encoders: "
         "compclip:CKPT_OR_EXPORT, open_clip:ARCH@TAG_OR_FILE, open_clip:local-dir:EXPORT, sentence_transformers:EXPORT, "
         "hf:FOLDER_OR_NAME")
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
        flag, eq, inline = arg.partition("=")
        if flag in FLAGS:  # `--out DIR` or `--out=DIR`
            value = inline if eq else args[i + 1] if i + 1 < len(args) else None
            if value is None or (not eq and value.startswith("--")):
                raise UsageError(f"{flag} needs a value; usage: {USAGE}")
            if not value.strip():
                raise UsageError(f"{flag} is given an empty value")
            if flag == "--probe":
                current = out["probes"].setdefault(value, {})
            elif out[flag[2:]] is not None:
                raise UsageError(f"{flag} is given twice ({out[flag[2:]]!r} and {value!r})")
            else:
                out[flag[2:]] = value
            i += 1 if eq else 2
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
        raise UsageError(f"--ckpt PATH is required (or --encoder KIND:TARGET); usage: {USAGE}")
    if out["ckpt"] and out["encoder"]:
        raise UsageError("give --ckpt PATH or --encoder KIND:TARGET, not both (--encoder compclip:PATH is --ckpt PATH)")
    return out


def default_out(spec: str) -> str:
    """runs/probe-<spec>: the spec with a local path shortened to its file name and odd characters made `_`."""
    kind, _, target = spec.partition(":")
    parts = [p.removeprefix("local-dir:") for p in target.split("@")]  # an exported folder is named by itself
    parts = [os.path.basename(os.path.normpath(p)) if os.path.exists(os.path.expanduser(p)) else p for p in parts]
    name = re.sub(r"[^A-Za-z0-9._@-]+", "_", f"{kind}_{'@'.join(parts)}").strip("_.")
    return os.path.join("runs", f"probe-{name}")


def unused_folder(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist, so an earlier result is never overwritten."""
    candidate, n = path, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


def run_config(ckpt: str) -> str | None:
    """The config.yaml of the run a checkpoint belongs to (RUN/checkpoints/NAME.ckpt), or None (an export folder
    belongs to no run)."""
    from lit_compclip.factory import is_native_folder

    if is_native_folder(ckpt):
        return None
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt))), "config.yaml")
    return path if os.path.isfile(path) else None


def probe_config(parsed: dict[str, Any]) -> DictConfig:
    """The config `compclip probe` scores with: the experiment files given, else the checkpoint's own run's
    config.yaml (its probe suites), else the schema's (no suites: --probe names them); then the overrides."""
    files = parsed["files"] or ([own] if parsed["ckpt"] and (own := run_config(parsed["ckpt"])) else [])
    return load_config(files, parsed["overrides"], data=False)


def suite_paths(suites: dict[str, dict]) -> list[str]:
    """Every value of the suites' options that could be a path: what a plug-in may have to make first."""
    return [str(v) for suite in suites.values() for v in suite.values() if isinstance(v, str)]


def suites_for(cfg: DictConfig, named: dict[str, dict]) -> dict[str, dict]:
    """The config's probe suites, or only the `--probe` ones (a configured name starts from its options)."""
    configured = OmegaConf.to_container(cfg.probes.suites)
    if not named:
        return configured
    return {name: {**configured.get(name, {}), **options} for name, options in named.items()}


@contextlib.contextmanager
def staged(folder: str):
    """A hidden folder beside `folder` to write into: its files are moved into `folder` (created, or merged over what
    is there) once the block succeeds, and nothing is left when it fails. Beside it, not elsewhere: failures.md links
    its images by paths relative to its own folder."""
    target = os.path.abspath(os.path.expanduser(folder))
    with new_folder(target):
        stage = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.partial-")
        try:
            yield stage
            for root, _, files in os.walk(stage):
                dest = os.path.join(target, os.path.relpath(root, stage))
                os.makedirs(dest, exist_ok=True)
                for name in files:
                    os.replace(os.path.join(root, name), os.path.join(dest, name))
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def probe_checkpoint(args: list[str]) -> dict[str, Any]:
    """Run `compclip probe`; returns {"probes": metrics, "out": folder, "dump": folder or None, "seconds",
    "encoder": what was used, "clip_benchmark": the result files written}. Everything a bad input can stop is
    checked before the model is loaded; results are written only once every probe has run (see staged)."""
    from lit_compclip.encoders import build_encoder, check_device, check_encoder
    from lit_compclip.factory import is_native_folder
    from lit_compclip.probes import run_suite, split_suite
    from lit_compclip.probes.base import UnreadableImage
    from lit_compclip.probes.export import clip_benchmark_results, write_clip_benchmark
    from lit_compclip.config.plugins import prepare

    start = time.perf_counter()
    parsed = parse_args(list(args))
    spec = parsed["encoder"] or f"compclip:{parsed['ckpt']}"
    if parsed["device"] is not None:
        check_device(parsed["device"])
    check_encoder(spec)  # first: a missing checkpoint is named as such, and stops us before the world is built
    cfg = probe_config(parsed)
    suites = suites_for(cfg, parsed["probes"])
    if not suites:
        raise ConfigError("no probe suites: the checkpoint's run folder has no config.yaml naming some; give an "
                          "experiment file, or name a probe with --probe NAME option=value ...")
    if parsed["ckpt"] and not is_native_folder(parsed["ckpt"]):  # beside the checkpoints folder: the run's
        ckpt = os.path.abspath(parsed["ckpt"])
        stem = os.path.splitext(os.path.basename(ckpt))[0]
        fallback = os.path.join(os.path.dirname(os.path.dirname(ckpt)), f"probe-{stem}")
    else:
        fallback = default_out(spec)
    out = parsed["out"] or parsed["dump"] or unused_folder(fallback)
    check_writable_folder(out, "--out" if parsed["out"] else "--dump" if parsed["dump"] else "output folder")
    for flag in ("out", "dump"):
        if parsed[flag] and os.path.isfile(os.path.join(parsed[flag], "probes.json")):
            raise ConfigError(f"--{flag} {parsed[flag]!r} already holds probes.json, an earlier result, which is never "
                              f"overwritten: choose another folder")
    if parsed["dump"] and parsed["dump"] != out:  # without --out, out is the dump folder, checked above
        check_writable_folder(parsed["dump"], "--dump")
    if not parsed["probes"]:  # the configured suites: only what they read (a synthetic world's probe sets)
        prepare(cfg, suite_paths(suites))
    from lit_compclip.probes.report import write_results
    from lit_compclip.probes import build_probes

    try:
        probes = build_probes(suites, cfg.probes.get("limit"))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    encoder = build_encoder(spec, parsed["device"])  # after the probes: a bad probe option costs no model load
    records: dict = {}
    try:
        metrics = run_suite(probes, encoder, records)  # as training's probe callback runs them
    except (UnreadableImage, FileNotFoundError) as e:  # an image cut short, or removed since the probes were built
        raise ConfigError(f"{e}; no results were written") from None
    title = f"Probe failures of {parsed['ckpt'] or spec}"
    info = encoder.info
    types = {name: split_suite(name, suite)[0] for name, suite in suites.items()}
    exported = clip_benchmark_results(metrics, types, str(info["model"]), str(info["pretrained"]), info)
    same = parsed["dump"] is not None and os.path.abspath(parsed["dump"]) == os.path.abspath(out)
    try:
        with contextlib.ExitStack() as stack:
            folder = stack.enter_context(staged(out))
            dump = None if not parsed["dump"] else folder if same else stack.enter_context(staged(parsed["dump"]))
            write_results(metrics, records, folder, cfg.probes.failures, dump, title)
            with open(os.path.join(folder, "encoder.json"), "w") as f:
                json.dump(info, f, indent=1)
            written = write_clip_benchmark(exported, os.path.join(folder, "clip_benchmark"))
    except OSError as e:  # a full disk, a folder that became unwritable while the probes ran
        raise ConfigError(f"cannot write the results to {out!r} ({e.strerror or type(e).__name__})") from None
    paths = [os.path.join(out, os.path.relpath(p, folder)) for p in written]
    return {"probes": metrics, "out": out, "dump": parsed["dump"], "seconds": time.perf_counter() - start,
            "encoder": info, "clip_benchmark": paths}
