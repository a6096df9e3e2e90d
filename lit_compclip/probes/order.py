"""ARO COCO-Order / Flickr30k-Order: word-order perturbations of captions, generated once per seed and frozen."""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

from lit_compclip.probes.base import field, read_json

# The official code's caption cleaning (`pre_caption`, max_words=30), applied to the true caption and to each negative.
MAX_WORDS = 30
# Order matters: the frozen file and each record's `captions[1:]` follow it.
KINDS = ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams", "shuffle_trigrams")

# A closed-class word list stands in for spaCy's tagger (no model can be downloaded here): these are never nouns
# or adjectives. Determiners, prepositions, pronouns, conjunctions, auxiliaries, adverbs, number words, and the
# commonest caption verbs.
FUNCTION_WORDS = frozenset("""
a an the this that these those each every some any no another both either neither all its his her their our my your
in on at of with by for from to into onto over under above below behind beside besides between near next through
across along around about against among inside outside up down off out underneath beneath toward towards upon
during without within while like as than via atop past
it he she they them him we us i you me itself himself herself themselves who which what whom whose there here
and or but nor so yet if because where when then
is are was were be been being am has have had do does did can could will would should may might must 's
very not also just together still too almost only really
one two three four five six seven eight nine ten
sits stands holds rides eats looks lays lies walks flies plays waits hangs grazes carries wears shows sit stand
""".split())
# Adjectives kept apart from nouns so that, as in the official code, nouns swap only with nouns and adjectives
# only with adjectives.
ADJECTIVES = frozenset("""
red white black blue green yellow brown orange pink purple gray grey silver golden gold dark light bright
large small big little tiny huge giant tall short long young old new empty full wooden open busy clear cloudy sunny
snowy grassy sandy dirty clean colorful different various several many other few single double wet dry hot cold
high low wide narrow modern vintage stuffed striped cute pretty beautiful fresh blurry
""".split())
# -ing words count as verbs (spaCy: VBG) except these common nouns.
ING_NOUNS = frozenset("""
building buildings ceiling clothing painting paintings ring rings king thing things something nothing string wing
wings evening morning bedding frosting icing topping toppings spring swing swings parking pudding dressing railing
railings stuffing wedding ceilings sibling
""".split())


def normalize(caption: str, max_words: int = MAX_WORDS) -> str:
    """Lower-case, blank out . ! " ( ) * # : ; ~, squeeze spaces and keep the first `max_words` words."""
    text = re.sub(r"\s{2,}", " ", re.sub(r"[.!\"()*#:;~]", " ", caption.lower())).strip()
    return " ".join(text.split(" ")[:max_words])


_TOKEN = re.compile(r"\w+(?:['-]\w+)*|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    """Words (with inner ' or -) and single punctuation marks, as a tokenizer that splits punctuation would."""
    return _TOKEN.findall(caption)


def token_spans(caption: str) -> list[tuple[int, int]]:
    """(start, end) of each `tokenize` token in `caption`, so a token can be replaced in place."""
    return [m.span() for m in _TOKEN.finditer(caption)]


def tag(token: str) -> str:
    """'NOUN', 'ADJ' or 'OTHER' by the closed-class rules above (deterministic, no model)."""
    word = token.lower()
    if not re.fullmatch(r"[a-z][a-z'-]*", word) or word in FUNCTION_WORDS:
        return "OTHER"  # punctuation, numerals and function words
    if word in ADJECTIVES:
        return "ADJ"
    if word.endswith("ing") and word not in ING_NOUNS:
        return "OTHER"
    return "NOUN"


def _permute_at(tokens: list[str], where: list[int], rng: random.Random) -> list[str]:
    """A copy of tokens with the tokens at positions `where` shuffled among those positions."""
    out, picked = list(tokens), [tokens[i] for i in where]
    rng.shuffle(picked)
    for i, t in zip(where, picked):
        out[i] = t
    return out


def trigrams(tokens: list[str]) -> list[list[str]]:
    """Consecutive groups of three tokens; the last may be shorter."""
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def shuffle_nouns_and_adj(tokens: list[str], rng: random.Random) -> list[str]:
    tags = [tag(t) for t in tokens]
    out = _permute_at(tokens, [i for i, g in enumerate(tags) if g == "NOUN"], rng)
    return _permute_at(out, [i for i, g in enumerate(tags) if g == "ADJ"], rng)


def shuffle_allbut_nouns_and_adj(tokens: list[str], rng: random.Random) -> list[str]:
    return _permute_at(tokens, [i for i, t in enumerate(tokens) if tag(t) == "OTHER"], rng)


def shuffle_within_trigrams(tokens: list[str], rng: random.Random) -> list[str]:
    groups = trigrams(tokens)
    for g in groups:
        rng.shuffle(g)
    return [t for g in groups for t in g]


def shuffle_trigrams(tokens: list[str], rng: random.Random) -> list[str]:
    groups = trigrams(tokens)
    rng.shuffle(groups)
    return [t for g in groups for t in g]


PERTURB: dict[str, Callable[[list[str], random.Random], list[str]]] = {
    "shuffle_nouns_and_adj": shuffle_nouns_and_adj, "shuffle_allbut_nouns_and_adj": shuffle_allbut_nouns_and_adj,
    "shuffle_within_trigrams": shuffle_within_trigrams, "shuffle_trigrams": shuffle_trigrams}


def perturbations(caption: str, seed: int, key: str) -> list[str]:
    """The 4 negatives of a raw caption, in KINDS order, each cleaned like the true caption.

    The generator is seeded by (seed, key) alone, so a caption's negatives do not depend on which others exist."""
    rng = random.Random(f"{seed}:{key}")  # str seeds hash with sha512: stable across processes
    tokens = tokenize(caption)
    return [normalize(" ".join(PERTURB[kind](tokens, rng))) for kind in KINDS]


class OrderExample(NamedTuple):
    id: str  # "<image index>:<caption index>" in the annotation file
    image: str  # the record's `image` field
    caption: str  # normalized true caption
    raw: str  # the caption as the file gives it (what the perturbations shuffle)


def read_karpathy(path: Path, limit: int | None = None) -> list[OrderExample]:
    """Every caption of a Karpathy test JSON `[{"image", "caption": [..]}]`; `limit` keeps the first images."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{'image', 'caption'}} records")
    out = []
    for i, record in enumerate(data[:limit]):
        where = f"{path} record {i}"
        image = field(record, "image", str, where)
        captions = field(record, "caption", list, where)
        if not captions:
            raise ValueError(f"{where} field 'caption' is an empty list")
        for j, raw in enumerate(captions):
            if not isinstance(raw, str) or not normalize(raw):
                raise ValueError(f"{where} caption {j} must be a non-empty string; got {raw!r}")
            out.append(OrderExample(f"{i}:{j}", image, normalize(raw), raw))
    return out


def frozen_path(annotation: Path, seed: int) -> Path:
    """Where the negatives of `annotation` for `seed` live by default: next to it."""
    return annotation.with_name(f"{annotation.stem}.order_negatives.seed{seed}.json")


def _write_atomic(path: Path, payload: dict, option: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ValueError(f"aro probe: cannot write the frozen order negatives {str(path)!r} ({err.strerror}); "
                         f"make that folder writable or give option {option!r} a writable file path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)  # readers see the whole file or none of it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def frozen_negatives(annotation: Path, seed: int, path: Path, option: str,
                     limit: int | None = None) -> dict[str, list[str]]:
    """id -> the 4 negatives: read from `path`, or generated for EVERY caption of `annotation` and frozen there.

    Once the file exists it is never regenerated; it must hold this seed and the same (normalized) captions."""
    if not path.is_file():
        examples = read_karpathy(annotation)
        payload = {"annotation": annotation.name, "seed": seed, "kinds": list(KINDS),
                   "negatives": {ex.id: {"caption": ex.caption, "negatives": perturbations(ex.raw, seed, ex.id)}
                                 for ex in examples}}
        _write_atomic(path, payload, option)
    frozen = read_json(path)
    if not isinstance(frozen, dict) or frozen.get("seed") != seed or frozen.get("kinds") != list(KINDS) \
            or not isinstance(frozen.get("negatives"), dict):
        raise ValueError(f"{path}: not a frozen order-negatives file for seed {seed} with kinds {list(KINDS)}; "
                         f"delete it to regenerate")
    out = {}
    for ex in read_karpathy(annotation, limit):
        entry = frozen["negatives"].get(ex.id)
        if not isinstance(entry, dict) or entry.get("caption") != ex.caption:
            raise ValueError(f"{path}: caption {ex.id} does not match {annotation.name}; the annotation changed "
                             f"since the negatives were frozen - delete {path.name} to regenerate")
        negs = entry.get("negatives")
        if not isinstance(negs, list) or len(negs) != len(KINDS) or not all(isinstance(n, str) for n in negs):
            raise ValueError(f"{path}: caption {ex.id} needs a list of {len(KINDS)} negative strings; got {negs!r}")
        out[ex.id] = negs
    return out

