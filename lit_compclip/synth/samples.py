"""The world's samples: its families drawn from seeded streams, each sample's KEY.json record and its image bytes,
all pure functions of (arguments, key) so that any process (or a probe) can make them again."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from lit_compclip.synth import captions as cap
from lit_compclip.synth.world import MEMBERS, TWIN_MEMBERS, encode, render, sample_family, shape_twin

FAMILY_SIZE = len(MEMBERS)


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


def families(split: str, first_family: int, n_families: int, first_key: int, args: dict) -> Iterator[Sample]:
    """The samples of families first_family.. in `split`, keys numbered from `first_key`."""
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


def record(sample: Sample, seed: int, plain_lists: int = 0) -> dict:
    """The KEY.json content; captions come from rngs seeded by (seed, key) so a probe can rebuild them. With
    `plain_lists` a training record also holds `plain_list`: its objects listed with no place (captions.plain_list)."""
    split = "train" if sample.split == "train" else "eval"
    out = {"key": sample.name,
           "alt_text": cap.alt_text(sample.scene, random.Random(f"{seed}/alt/{sample.key}"), split),
           "recaption": cap.recaption(sample.scene, random.Random(f"{seed}/recaption/{sample.key}"), split)}
    if plain_lists and split == "train":
        out["plain_list"] = cap.plain_list(sample.scene, random.Random(f"{seed}/plain_list/{sample.key}"), split)
    return {**out, "family": sample.family, "member": sample.member, "split": sample.split, "scene": sample.scene}


def image_bytes(sample: Sample, args: dict, fmt: str = "jpg") -> bytes:
    return encode(render(sample.scene, args["image_size"], (args["seed"], sample.key)), fmt)
