"""The world's manifest.json: the generator's arguments (checked), what the manifest records, and whether a folder
holds the world some arguments describe (the same, built otherwise, half built, or none)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lit_compclip.synth.samples import unit_size
from lit_compclip.synth.world import MAX_OBJECTS

# Training caption fields written only when an argument asks for them: field -> (argument, what it must be).
OPTIONAL_FIELDS = {"plain_list": ("plain_lists", lambda v: v == 1, "=1")}
# Arguments added after a format, with the value an older manifest's world was built with (nothing to rebuild).
LATER_ARGS = {"plain_lists": 0}
FORMAT_VERSION = 8  # 2: recaptions say where objects are; 3: every recaption sentence complete on its own, larger
# shapes; 4: the object list names the leftmost (topmost) object again instead of saying where each object is;
# 5: shape twins, vertical relations trained as above / on top of and below / underneath; 6: SugarCrepe++ and
# What'sUp probe sets (the shards and the older probe sets byte for byte as in 5); 7: larger objects (sides 0.30
# and 0.40 of the image, not 0.26 and 0.36) in a 7% margin (not 10%); every caption as in 6; 8: the training
# families' swap_both member exchanges only the shapes (sizes stay in place); val shards and probe sets as in 7
OUTPUTS = ("manifest.json", "train", "val", "probes")  # everything generate() writes (and overwrite removes)


def world_args(train_families=4000, eval_families=400, shard_size=1000, image_size=64, min_objects=2, max_objects=2,
               seed=0, probe_size=400, shape_twins=1, plain_lists=0) -> dict:
    """The generator's arguments, defaults filled in and checked (ValueError 'synth: NAME ...')."""
    args = {"train_families": train_families, "eval_families": eval_families, "shard_size": shard_size,
            "image_size": image_size, "min_objects": min_objects, "max_objects": max_objects, "seed": seed,
            "probe_size": probe_size, "shape_twins": shape_twins, "plain_lists": plain_lists}
    _check_args(args)
    return args


def _check_args(args: dict) -> None:
    for name, value in args.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"synth: {name} must be an integer, got {value!r}")
    lows = {"train_families": 1, "eval_families": 1, "image_size": 32, "probe_size": 1, "min_objects": 2}
    for name, low in lows.items():
        if args[name] < low:
            raise ValueError(f"synth: {name} must be >= {low}, got {args[name]}")
    for name in ("min_objects", "max_objects"):  # each message starts with the name of the value out of range
        if args[name] > MAX_OBJECTS:
            raise ValueError(f"synth: {name} must be <= {MAX_OBJECTS}, got {args[name]}")
    if args["min_objects"] > args["max_objects"]:
        raise ValueError(f"synth: need min_objects <= max_objects, got min_objects={args['min_objects']} "
                         f"max_objects={args['max_objects']}")
    for name in ("shape_twins", "plain_lists"):
        if args[name] not in (0, 1):
            raise ValueError(f"synth: {name} must be 0 or 1, got {args[name]}")
    unit = unit_size("train", args)
    if args["shard_size"] < unit or args["shard_size"] % unit:
        raise ValueError(f"synth: shard_size must be a positive multiple of a training family's {unit} samples "
                         f"(so no family straddles two shards), got {args['shard_size']}")


def config_args(synth) -> dict:
    """The generator's arguments in a config's `synth` section (without out_dir and auto, which say where and when)."""
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(synth).items() if k not in ("out_dir", "auto")}


def manifest(args: dict, counts: dict, stats: dict) -> dict:
    """What manifest.json holds: this generator's format, the arguments and what was written."""
    return {"format_version": FORMAT_VERSION, "args": args, "counts": counts, "stats": stats}


def differs(out_dir, args: dict) -> str | None:
    """Why the world in `out_dir` is not the one `args` (all of world_args) and this generator version describe: ''
    when it is, None when nothing is built there. A manifest naming an argument the generator no longer has
    describes another world: it differs too."""
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unreadable manifest.json"
    old = {**LATER_ARGS, **stored.get("args", {}), "format_version": stored.get("format_version")}
    new = {**args, "format_version": FORMAT_VERSION}
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    return ", ".join(changed + [f"{k}: {v!r} -> (no such argument)" for k, v in old.items() if k not in new])


def under_world(out_dir, path: str) -> bool:
    """Whether the data path `path` lies inside the world folder `out_dir` (what `synth.auto` builds the world for)."""
    return bool(path) and os.path.normpath(path).startswith(os.path.normpath(out_dir) + os.sep)


def world_manifest_args(out_dir) -> dict | None:
    """The generator arguments the world in `out_dir` was built with (older manifests' later arguments filled in), or
    None when no readable manifest is there."""
    try:
        stored = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("args"), dict):
        return None
    return {**LATER_ARGS, **stored["args"]}


def refusal(out_dir, args: dict) -> str | None:
    """Why generate() without overwrite refuses `out_dir` (a world built with other arguments, or a half-built one
    that has no manifest), or None when it builds there or finds the same world."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        why = differs(out, args)
        return f"the synthetic world in {out} was built with other arguments ({why})" if why else None
    if any((out / p).exists() for p in OUTPUTS):
        return f"{out} holds a partial synthetic world (no manifest.json: its build did not finish)"
    return None
