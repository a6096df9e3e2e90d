"""Write the synthetic world: img2dataset-style shards, probe sets in the benchmarks' official formats, a manifest."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from lit_compclip.cli_args import new_folder
from lit_compclip.synth import captions as cap
from lit_compclip.synth.world import (HELD_OUT, INVERSE, MAX_OBJECTS, MEMBERS, RELATIONS, SIZES, TWIN_MEMBERS,
                                      _sample_layout, encode, render, sample_family, scene_dict, shape_twin, size_scale)

# Training caption fields written only when an argument asks for them: field -> (argument, what it must be).
OPTIONAL_FIELDS = {"recaption_one_attribute": ("one_attribute_anchors", lambda v: v > 0, " > 0"),
                   "plain_list": ("plain_lists", lambda v: v == 1, "=1")}
# Arguments added after a format, with the value an older manifest's world was built with (nothing to rebuild).
LATER_ARGS = {"one_attribute_anchors": 0.0, "one_attribute_colour": 0.5, "far_end_anchors": 0.0,
              "plain_lists": 0}
FORMAT_VERSION = 8  # 2: recaptions say where objects are; 3: every recaption sentence complete on its own, larger
# shapes; 4: the object list names the leftmost (topmost) object again instead of saying where each object is;
# 5: shape twins, vertical relations trained as above / on top of and below / underneath; 6: SugarCrepe++ and
# What'sUp probe sets (the shards and the older probe sets byte for byte as in 5); 7: larger objects (sides 0.30
# and 0.40 of the image, not 0.26 and 0.36) in a 7% margin (not 10%); every caption as in 6; 8: the training
# families' swap_both member exchanges only the shapes (sizes stay in place); val shards and probe sets as in 7
FAMILY_SIZE = len(MEMBERS)
OUTPUTS = ("manifest.json", "train", "val", "probes")  # everything generate() writes (and overwrite removes)
BOX_PAD = 0.05  # ARO crop boxes: padding around the two objects, as a fraction of the image
WHATSUP_PLACEMENTS = {"left of": "left_of", "right of": "right_of", "above": "on", "below": "under"}  # file names
WHATSUP_NOISE = 17  # in What'sUp images' noise seeds (seed, 17, group, placement): apart from the shards' (seed, key)


@dataclass(frozen=True)
class Sample:
    key: int  # running index, unique across splits
    family: int
    member: str
    split: str  # "train" or "val"
    scene: dict

    @property
    def name(self) -> str:
        return f"{self.key:09d}"


def unit_size(split: str, args: dict) -> int:
    """Samples per family in `split`: the counterfactuals, and in training each shape twin's as well."""
    return FAMILY_SIZE * (1 + args["shape_twins"]) if split == "train" else FAMILY_SIZE


def _families(split: str, first_family: int, n_families: int, first_key: int, args: dict) -> Iterator[Sample]:
    unit = unit_size(split, args)
    for f in range(first_family, first_family + n_families):
        rng = random.Random(f"{args['seed']}/family/{f}")
        n = rng.randint(args["min_objects"], args["max_objects"])
        scenes = sample_family(rng, n, "train" if split == "train" else "eval", args["image_size"])
        names = list(MEMBERS)
        if split == "train" and args["shape_twins"]:  # same family id: a batch holds it too (data.group_key)
            scenes, names = scenes + shape_twin(scenes, rng), names + list(TWIN_MEMBERS)
        for m, scene in enumerate(scenes):
            yield Sample(first_key + (f - first_family) * unit + m, f, names[m], split, scene)


def record(sample: Sample, seed: int, one_attribute_anchors: float = 0.0, one_attribute_colour: float = 0.5,
           far_end_anchors: float = 0.0, plain_lists: int = 0) -> dict:
    """The KEY.json content; captions come from rngs seeded by (seed, key) so a probe can rebuild them. With
    `one_attribute_anchors` > 0 a training record also holds `recaption_one_attribute`: its recaption drawn again
    from the same stream (the same anchored list; the relation sentences after it drawn afresh), with that share of
    the anchored lists naming the first object by one attribute, a share `one_attribute_colour` of them by its colour
    (captions.anchored_list; `data.later_caption_fields` can switch to it for the later epochs). With `far_end_anchors` > 0 that share of the training samples' lists (both fields) names
    the object at the far end instead, 'the blue square is the rightmost', drawn from a stream of its own. With
    `plain_lists` a training record also holds `plain_list`: its objects listed with no place (captions.plain_list)."""
    split = "train" if sample.split == "train" else "eval"
    far = (split == "train" and far_end_anchors > 0
           and random.Random(f"{seed}/far_end/{sample.key}").random() < far_end_anchors)
    out = {"key": sample.name,
           "alt_text": cap.alt_text(sample.scene, random.Random(f"{seed}/alt/{sample.key}"), split),
           "recaption": cap.recaption(sample.scene, random.Random(f"{seed}/recaption/{sample.key}"), split,
                                      far_end=far)}
    if plain_lists and split == "train":
        out["plain_list"] = cap.plain_list(sample.scene, random.Random(f"{seed}/plain_list/{sample.key}"), split)
    if one_attribute_anchors > 0 and split == "train":
        out["recaption_one_attribute"] = cap.recaption(
            sample.scene, random.Random(f"{seed}/recaption/{sample.key}"), split, one_attribute_anchors,
            one_attribute_colour, far)
    return {**out, "family": sample.family, "member": sample.member, "split": sample.split, "scene": sample.scene}


def image_bytes(sample: Sample, args: dict, fmt: str = "jpg") -> bytes:
    return encode(render(sample.scene, args["image_size"], (args["seed"], sample.key)), fmt)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata so identical arguments give identical bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _files(sample: Sample, args: dict) -> tuple[dict, bytes]:
    """One sample's KEY.json record and KEY.jpg bytes (a pure function of the sample: any process may make them)."""
    return (record(sample, args["seed"], args["one_attribute_anchors"], args["one_attribute_colour"],
                   args["far_end_anchors"], args["plain_lists"]), image_bytes(sample, args))


def _made(samples: Iterator[Sample], args: dict, workers: int) -> Iterator[tuple[Sample, dict, bytes]]:
    """(sample, record, jpg) in the samples' order; rendered by `workers` processes when more than 1."""
    if workers <= 1:
        yield from ((s, *_files(s, args)) for s in samples)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    samples = list(samples)
    # spawn, not fork: the caller may be a training process with torch's threads running
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        made = pool.map(_files, samples, [args] * len(samples), chunksize=max(1, min(200, len(samples) // workers)))
        yield from ((s, *m) for s, m in zip(samples, made))


def _write_shards(folder: Path, samples: Iterator[Sample], args: dict, workers: int = 1,
                  keep: dict[int, bytes] | None = None) -> dict:
    """Shards of args["shard_size"] samples; `keep` (if given) collects each sample's JPEG bytes by key."""
    folder.mkdir(parents=True)
    n = shards = alt_words = recap_words = 0
    tar = None
    for sample, rec, jpg in _made(samples, args, workers):
        if n % args["shard_size"] == 0:
            if tar:
                tar.close()
            tar = tarfile.open(folder / f"shard-{shards:06d}.tar", "w", format=tarfile.USTAR_FORMAT)
            shards += 1
        _add(tar, f"{sample.name}.jpg", jpg)
        if keep is not None:
            keep[sample.key] = jpg
        _add(tar, f"{sample.name}.json", json.dumps(rec).encode())
        _add(tar, f"{sample.name}.txt", rec["alt_text"].encode())
        n += 1
        alt_words += len(rec["alt_text"].split())
        recap_words += len(rec["recaption"].split())
    if tar:
        tar.close()
    return {"samples": n, "shards": shards, "alt_text_words": alt_words, "recaption_words": recap_words}


def _pair_box(a: dict, b: dict, size: int) -> dict:
    """Padded pixel box around two objects, clamped inside the image."""
    pad = BOX_PAD * size
    x0 = max(0, math.floor(min(a["bbox"][0], b["bbox"][0]) - pad))
    y0 = max(0, math.floor(min(a["bbox"][1], b["bbox"][1]) - pad))
    x1 = min(size, math.ceil(max(a["bbox"][0] + a["bbox"][2], b["bbox"][0] + b["bbox"][2]) + pad))
    y1 = min(size, math.ceil(max(a["bbox"][1] + a["bbox"][3], b["bbox"][1] + b["bbox"][3]) + pad))
    # Grow to a square (as far as the image allows): CLIP-style preprocessing centre-crops a long box, which
    # would cut an object out of a left/right pair and make the relation unscorable.
    side = min(size, max(x1 - x0, y1 - y0))
    x0 = min(max(0, (x0 + x1 - side) // 2), size - side)
    y0 = min(max(0, (y0 + y1 - side) // 2), size - side)
    return {"bbox_x": x0, "bbox_y": y0, "bbox_w": side, "bbox_h": side}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _write_probes(root: Path, evals: list[Sample], args: dict, jpgs: dict[int, bytes] | None = None) -> dict[str, int]:
    """SugarCrepe(++), ARO VG-R/VG-A, Winoground, DOCCI and What'sUp files from eval families only; returns examples
    per file.
    `jpgs`: the eval samples' JPEG bytes by key, already made for the validation shards."""
    size, counts, jpgs = args["image_size"], {}, jpgs or {}
    k = min(args["probe_size"], len(evals))

    def save(folder: Path, name: str, sample: Sample, fmt: str = "jpg") -> str:
        path = folder / "images" / f"{name}.{fmt}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            made = jpgs.get(sample.key) if fmt == "jpg" else None
            path.write_bytes(made or image_bytes(sample, args, fmt))
        return path.name

    folder = root / "sugarcrepe"
    for subset in cap.SUGARCREPE_SUBSETS:
        rng = random.Random(f"{args['seed']}/sugarcrepe/{subset}")
        pp_rng = random.Random(f"{args['seed']}/sugarcrepe_pp/{subset}")  # its own stream: SugarCrepe's stays as it was
        data, pp, key = {}, [], rng.randrange(5)
        for s in rng.sample(evals, k):
            pos, neg, parts = cap.sugarcrepe_parts(s.scene, subset, rng)
            filename = save(folder, f"{s.key:012d}", s)
            data[str(key)] = {"filename": filename, "caption": pos, "negative_caption": neg}
            key += rng.randint(1, 3)  # official keys skip numbers; readers must not assume 0..n-1
            if subset in cap.SUGARCREPE_PP_SUBSETS:  # SugarCrepe++ = SugarCrepe's example + a second true caption
                pp.append({"id": len(pp), "filename": filename, "caption": pos,
                           "caption2": cap.second_caption(parts, pp_rng), "negative_caption": neg})
        _dump(folder / f"{subset}.json", data)
        counts[f"sugarcrepe/{subset}"] = len(data)
        if pp:  # images: SugarCrepe's (the real SugarCrepe++ reuses COCO val2017 too)
            _dump(root / "sugarcrepe_pp" / f"{subset}.json", pp)
            counts[f"sugarcrepe_pp/{subset}"] = len(pp)

    folder = root / "aro"
    for name, make in (("visual_genome_relation", cap.aro_relation), ("visual_genome_attribution", cap.aro_attribution)):
        rng, rows = random.Random(f"{args['seed']}/aro/{name}"), []
        for s in rng.sample(evals, k):
            true, false, extra, (a, b) = make(s.scene, rng)
            rows.append({"image_path": save(folder, s.name, s), **_pair_box(a, b, size), "true_caption": true,
                         "false_caption": false, ("relation_name" if name.endswith("relation") else "attributes"): extra})
        _dump(folder / f"{name}.json", rows)
        counts[f"aro/{name}"] = len(rows)

    # Winoground: relation pairs (positions of 0 and 1 exchanged) and binding pairs (their colours exchanged).
    families = [evals[i:i + FAMILY_SIZE] for i in range(0, len(evals), FAMILY_SIZE)]
    rng = random.Random(f"{args['seed']}/winoground")
    relation = [(f[0], f[2]) for f in families] + [(f[1], f[3]) for f in families]
    binding = [(f[0], f[1]) for f in families] + [(f[2], f[3]) for f in families]
    n_rel = min(len(relation), math.ceil(args["probe_size"] / 2))
    pairs = [("relation", p) for p in rng.sample(relation, n_rel)]
    pairs += [("binding", p) for p in rng.sample(binding, min(len(binding), args["probe_size"] - n_rel))]
    rng.shuffle(pairs)
    folder, lines = root / "winoground", []
    for i, (kind, (s0, s1)) in enumerate(pairs):
        c0, c1 = cap.winoground_captions(s0.scene, s1.scene, kind, rng)
        lines.append({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1", "caption_0": c0, "caption_1": c1,
                      "tag": "Spatial-Relation" if kind == "relation" else "Adjective-Color", "secondary_tag": "",
                      "num_main_preds": 1, "collapsed_tag": "Relation" if kind == "relation" else "Object"})
        save(folder, f"ex_{i}_img_0", s0, "png")
        save(folder, f"ex_{i}_img_1", s1, "png")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "examples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    counts["winoground"] = len(lines)

    # DOCCI: whole families, so retrieving the right member needs binding and relations.
    n_fam = min(len(families), max(1, args["probe_size"] // FAMILY_SIZE))
    rng, folder, lines = random.Random(f"{args['seed']}/docci"), root / "docci", []
    for fam in rng.sample(families, n_fam):
        for s in fam:
            name = f"test_{len(lines):05d}"
            lines.append({"example_id": name, "split": "test", "image_file": save(folder, name, s),
                          "description": record(s, args["seed"])["recaption"]})
    (folder / "docci_descriptions.jsonlines").write_text("".join(json.dumps(line) + "\n" for line in lines))
    counts["docci"] = len(lines)
    counts.update(_write_whatsup(root / "whatsup", families, args))
    return counts


def _placement_scene(objects: list[tuple[str, str, str]], relation: str, rng: random.Random, size: int) -> dict:
    """Two objects (shape, colour, size) laid out so that the first is `relation` the second."""
    layout = _sample_layout(rng, 2, SIZES["large"] * size_scale(2))
    axis = "h" if relation in ("left of", "right of") else "v"
    layout = replace(layout, axis=axis, order=(0, 1) if relation in ("left of", "above") else (1, 0))
    scene = scene_dict(objects, layout, size)
    assert scene["relations"][0]["relation"] == relation
    return scene


def _write_whatsup(folder: Path, families: list[list[Sample]], args: dict) -> dict[str, int]:
    """What'sUp-style sets (amitakamath/whatsup_vlms's layout): per group, the first two objects of an eval family's
    base scene photographed in the four placements (object 0 left of / right of / above / below object 1), freshly
    laid out and rendered from their own seeds. `controlled_images_dataset.json` (Controlled-A's format: four
    options, the true one first; placements named left_of, right_of, on (above), under (below) in the file names)
    and `coco_qa_two_obj.json` (COCO-QA two-object's: the true caption and the opposite relation's) hold the same
    images. Held-out relation words throughout; the official two-object label rule ('left of', 'right of',
    'above', else 'below') therefore files 'over' under 'below' in its per-preposition breakdown (the accuracies
    do not use it)."""
    rng, size = random.Random(f"{args['seed']}/whatsup"), args["image_size"]
    groups = rng.sample(families, min(len(families), max(1, math.ceil(args["probe_size"] / len(RELATIONS)))))
    controlled, two = [], []
    for g, family in enumerate(groups):
        objects = [(o["shape"], o["colour"], o["size"]) for o in family[0].scene["objects"][:2]]
        names = [f"{colour}-{shape}-{g}" for shape, colour, _ in objects]  # the group number keeps pairs apart
        for m, relation in enumerate(RELATIONS):
            scene = _placement_scene(objects, relation, rng, size)
            jpg = encode(render(scene, size, (args["seed"], WHATSUP_NOISE, g, m)), "jpg")
            name = f"{names[0]}_{WHATSUP_PLACEMENTS[relation]}_{names[1]}.jpeg"
            image_id = len(two)
            for path in (folder / "controlled_images" / name, folder / "val2017" / f"{image_id:012d}.jpg"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpg)
            options = cap.whatsup_options(*scene["objects"], relation, rng)  # relation -> caption, the true first
            controlled.append({"image_path": f"data/controlled_images/{name}",
                               "caption_options": list(options.values())})
            two.append([image_id, options[relation], options[INVERSE[relation]]])
    _dump(folder / "controlled_images_dataset.json", controlled)
    _dump(folder / "coco_qa_two_obj.json", two)
    return {"whatsup/controlled_a": len(controlled), "whatsup/coco_qa_two": len(two)}


def _check_args(args: dict) -> None:
    shares = ("one_attribute_anchors", "one_attribute_colour", "far_end_anchors")
    for name in shares:
        share = args[name]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"synth: {name} must be a share in [0, 1], got {share!r}")
    for name, value in args.items():
        if name not in shares and (not isinstance(value, int) or isinstance(value, bool)):
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


def differs(out_dir, args: dict) -> str | None:
    """Why the world in `out_dir` is not the one `args` and this generator version describe: '' when it is, None
    when nothing is built there. Arguments left out of `args` are not compared."""
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unreadable manifest.json"
    old = {**LATER_ARGS, **stored.get("args", {}), "format_version": stored.get("format_version")}
    new = {**args, "format_version": FORMAT_VERSION}
    return ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)


def under_world(out_dir, path: str) -> bool:
    """Whether the data path `path` lies inside the world folder `out_dir` (what `synth.auto` builds the world for)."""
    return bool(path) and os.path.normpath(path).startswith(os.path.normpath(out_dir) + os.sep)


def world_manifest_args(out_dir) -> dict | None:
    """The generator arguments the world in `out_dir` was built with (older manifests' later arguments filled in), or
    None when no readable manifest is there."""
    try:
        manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("args"), dict):
        return None
    return {**LATER_ARGS, **manifest["args"]}


def eval_scenes(out_dir) -> dict[int, dict]:
    """The scenes of the validation (and probe) samples of the world in `out_dir`, by sample key, rebuilt from its
    manifest's arguments without rendering: what each probe image shows, for tools that split results by it.
    ValueError when the manifest is missing or another generator format wrote it."""
    path = Path(out_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no readable synthetic-world manifest ({e.__class__.__name__})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: world format {manifest.get('format_version')}, this code rebuilds format "
                         f"{FORMAT_VERSION}'s scenes")
    args = world_args(**{**LATER_ARGS, **manifest["args"]})
    n_train = args["train_families"] * unit_size("train", args)
    return {s.key: s.scene for s in _families("val", args["train_families"], args["eval_families"], n_train, args)}


def config_args(synth) -> dict:
    """The generator's arguments in a config's `synth` section (without out_dir and auto, which say where and when)."""
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(synth).items() if k not in ("out_dir", "auto")}


def world_args(train_families=4000, eval_families=400, shard_size=1000, image_size=64, min_objects=2, max_objects=2,
               seed=0, probe_size=400, shape_twins=1, one_attribute_anchors=0.0, one_attribute_colour=0.5,
               far_end_anchors=0.0, plain_lists=0) -> dict:
    """The generator's arguments, defaults filled in and checked (ValueError 'synth: NAME ...')."""
    args = {"train_families": train_families, "eval_families": eval_families, "shard_size": shard_size,
            "image_size": image_size, "min_objects": min_objects, "max_objects": max_objects, "seed": seed,
            "probe_size": probe_size, "shape_twins": shape_twins, "one_attribute_anchors": one_attribute_anchors,
            "one_attribute_colour": one_attribute_colour, "far_end_anchors": far_end_anchors,
            "plain_lists": plain_lists}
    _check_args(args)
    return args


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


def generate(out_dir, *, overwrite=False, workers: int | None = None, **kwargs) -> dict:
    """Write shards, probes and manifest.json under `out_dir` from `world_args(**kwargs)`; a no-op when its manifest
    holds the same arguments.

    Everything is written into a hidden folder inside `out_dir` first and moved into place at the end, the manifest
    last: a failed or interrupted build leaves any world there as it was, never a half-built one. The shards' images
    are rendered by `workers` processes (default: one per CPU, at most 8, for worlds of 2,000 training samples or
    more; a process pool costs more than it saves on a small one); the bytes do not depend on it."""
    args = world_args(**kwargs)
    train_families, eval_families, shape_twins = args["train_families"], args["eval_families"], args["shape_twins"]
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    why = None if overwrite else refusal(out, args)
    if why:
        raise ValueError(f"{why}; pass overwrite=True to rebuild it, or choose another out_dir")
    if not overwrite and manifest_path.exists():
        return {**json.loads(manifest_path.read_text()), "out_dir": str(out), "seconds": 0.0, "skipped": True}
    start = time.perf_counter()
    with new_folder(out):  # a failed first build leaves no folder behind
        stage = Path(tempfile.mkdtemp(dir=out, prefix=".building-"))
        try:
            n_train = train_families * unit_size("train", args)
            if workers is None:
                workers = min(8, os.cpu_count() or 1) if n_train >= 2000 else 1
            train = _write_shards(stage / "train", _families("train", 0, train_families, 0, args), args, workers)
            evals = list(_families("val", train_families, eval_families, n_train, args))
            jpgs: dict[int, bytes] = {}
            val = _write_shards(stage / "val", iter(evals), args, workers, keep=jpgs)
            probes = _write_probes(stage / "probes", evals, args, jpgs)
            manifest = {
                "format_version": FORMAT_VERSION, "args": args,
                "counts": {"train_samples": train["samples"], "train_shards": train["shards"],
                           "val_samples": val["samples"], "val_shards": val["shards"], "train_families": train_families,
                           "eval_families": eval_families, "probes": probes},
                "stats": {"alt_text_words_mean": round(train["alt_text_words"] / train["samples"], 2),
                          "recaption_words_mean": round(train["recaption_words"] / train["samples"], 2),
                          "held_out_combos": sorted(f"{c} {s}" for c, s in HELD_OUT),
                          "family_members": list(MEMBERS) + list(TWIN_MEMBERS) * shape_twins},
            }
            _dump(stage / "manifest.json", manifest)
            for p in OUTPUTS:  # only what we write: out_dir may hold other things
                path = out / p
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            for p in OUTPUTS[::-1]:  # the manifest last: a crash in between leaves no manifest, which is refused
                os.replace(stage / p, out / p)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return {**manifest, "out_dir": str(out), "seconds": round(time.perf_counter() - start, 2), "skipped": False}
