"""Hard negatives from a synthetic sample's scene graph (`data.hard_negatives.source: scene`, registered in
lit_compclip/data/negatives.py): every sentence of a negative is false of the scene, in the training phrasing."""

from __future__ import annotations

import random

from lit_compclip.data.captions import split_sentences
from lit_compclip.synth.captions import RELATION_SENTENCES, anchored_list, axis_end, locations, noun, relation_words
from lit_compclip.synth.world import INVERSE, relation_between

SCENE_KINDS = ("swap_colour", "swap_size", "swap_shape", "swap_relation")


def _relation(scene: dict, i: int, j: int) -> str:
    """Object i relative to object j along the scene's axis, as the captions state it."""
    axis = "h" if axis_end(scene) == "left" else "v"
    return relation_between(scene["objects"], i, j, axis)["relation"]


def _matches(obj: dict, stated: dict) -> bool:
    return all(obj[k] == v for k, v in stated.items())


def _anchored_holds(scene: dict, listed: list[dict], first: dict, end: str) -> bool:
    """True iff every listed (stated attributes) names an object of the scene and `first` names the one at `end`."""
    objs, where = scene["objects"], locations(scene)
    return (all(any(_matches(o, stated) for o in objs) for stated in listed)
            and any(_matches(o, first) and where[n] == end for n, o in enumerate(objs)))


def _relation_holds(scene: dict, subject: dict, relation: str, obj: dict) -> bool:
    objs = scene["objects"]
    return any(_relation(scene, a, b) == relation for a in range(len(objs)) for b in range(len(objs))
               if a != b and _matches(objs[a], subject) and _matches(objs[b], obj))


def _relation_sentence(subject: dict, relation: str, obj: dict, with_size: bool, rng: random.Random) -> str:
    text = rng.choice(RELATION_SENTENCES["train"]).format(
        subject=f"the {noun(subject, with_size)}", relation=relation_words(relation, rng, "train"),
        object=f"the {noun(obj, with_size)}")
    return text[0].upper() + text[1:]


def _attributes(obj: dict, with_size: bool) -> dict:
    return {k: obj[k] for k in (("size", "colour", "shape") if with_size else ("colour", "shape"))}


def scene_negative(scene: dict, kind: str, rng: random.Random) -> list[str]:
    """The sentences of one false caption of `scene` (each false on its own), or [] when `kind` cannot apply.

    swap_colour/size/shape: that attribute exchanged between two related objects; swap_relation: their relation
    inverted (or, the same claim, subject and object exchanged) and their places in the picture exchanged (so the
    other one of the two is named as the leftmost or topmost when one of them is)."""
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene negative {kind!r}; choose one of {list(SCENE_KINDS)}")
    objs, where = scene["objects"], locations(scene)
    pairs = [(r["subject"], r["object"]) for r in scene["relations"]]
    attr = kind.removeprefix("swap_")
    if kind != "swap_relation":
        pairs = [(i, j) for i, j in pairs if objs[i][attr] != objs[j][attr]]
    if not pairs:
        return []
    i, j = rng.choice(pairs)
    if rng.random() < 0.5:  # state it from either side, as recaptions do
        i, j = j, i
    order, end = rng.sample(range(len(objs)), len(objs)), axis_end(scene)
    if kind == "swap_relation":
        place = list(where)
        place[i], place[j] = where[j], where[i]
        first = objs[place.index(end)]
        listed = [_attributes(objs[n], True) for n in order]
        with_size = rng.random() < 0.3
        subject, relation, obj = (i, INVERSE[_relation(scene, i, j)], j) if rng.random() < 0.5 else \
            (j, _relation(scene, i, j), i)
        stated = (_attributes(objs[subject], with_size), relation, _attributes(objs[obj], with_size))
    else:
        swapped = [dict(o) for o in objs]
        swapped[i][attr], swapped[j][attr] = objs[j][attr], objs[i][attr]
        first = swapped[where.index(end)]
        listed = [_attributes(swapped[n], True) for n in order]
        with_size = attr == "size" or rng.random() < 0.3
        stated = (_attributes(swapped[i], with_size), _relation(scene, i, j), _attributes(swapped[j], with_size))
    sentences = []
    # The first object's colour and shape name it (no two objects of a scene share either); a stated size that is
    # wrong (swap_size) comes with a list that is already false.
    if not _anchored_holds(scene, listed, _attributes(first, False), end):
        sentences.append(anchored_list(listed, _attributes(first, True), end, rng, "train"))
    if not _relation_holds(scene, *stated):
        sentences.append(_relation_sentence(stated[0], stated[1], stated[2], with_size, rng))
    return sentences


def scene_negative_sentences(scene: dict, rng: random.Random, k: int) -> list[list[str]]:
    """Up to k distinct false captions of `scene` as sentence lists (any subset of a list's sentences is false)."""
    out: list[list[str]] = []
    kinds = rng.sample(SCENE_KINDS, len(SCENE_KINDS))
    for kind in kinds * 2:  # a second round of draws when the first gave fewer than k distinct captions
        if len(out) >= k:
            break
        sentences = scene_negative(scene, kind, rng)
        if sentences and sentences not in out:
            out.append(sentences)
    return out


def scene_negatives(scene: dict, rng: random.Random, k: int) -> list[str]:
    """Up to k distinct captions of the same synthetic scene that are false: swapped attributes, shapes or relation."""
    return [" ".join(s) for s in scene_negative_sentences(scene, rng, k)]


def from_scene(meta: dict, caption: str, rng: random.Random, k: int) -> list[str]:
    """Scene negatives of a sample's json `scene`, cut to the caption's number of sentences; [] without a scene."""
    scene = meta.get("scene")
    if not isinstance(scene, dict) or len(scene.get("objects") or []) < 2 or not scene.get("relations"):
        return []
    n = max(1, len(split_sentences(caption)))  # negatives as long as the positive, so length gives nothing away
    out = []
    for sentences in scene_negative_sentences(scene, rng, k):
        keep = sorted(rng.sample(range(len(sentences)), min(n, len(sentences))))
        text = " ".join(sentences[i] for i in keep)
        if text not in out:
            out.append(text)
    return out
