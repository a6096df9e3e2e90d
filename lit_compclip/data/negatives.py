"""Hard negatives: false captions of a training image, by rule-based word swaps of its caption here, or from another
source registered by name (the synthetic world's scene graphs: lit_compclip/synth/negatives.py)."""

from __future__ import annotations

import logging
import random

from lit_compclip.probes.order import tag, token_spans
from lit_compclip.registry import resolve

# name -> "module:function(meta, caption, rng, k) -> list[str]"; the data module calls one per training sample.
# Resolved when used: the data layer imports no source it is not asked for.
SOURCES = {
    "scene": "lit_compclip.synth.negatives:from_scene",
    "rules": "lit_compclip.data.negatives:from_caption",
}

log = logging.getLogger(__name__)


class NegativeMaker:
    """A sample's hard negatives from source `source`; the first sample that gets none is logged (once per process,
    so once per loader worker); the caller counts them all."""

    def __init__(self, source: str, per_sample: int = 1):
        if isinstance(per_sample, bool) or not isinstance(per_sample, int) or per_sample < 1:
            raise ValueError(f"data.hard_negatives.per_sample = {per_sample!r}: must be an int >= 1")
        try:
            self.make = resolve(SOURCES, source, "hard-negative source")
        except ValueError as e:
            raise ValueError(f"data.hard_negatives.source: {e}") from None
        self.source, self.per_sample, self.warned = source, per_sample, False

    def __call__(self, meta: dict, caption: str, rng: random.Random, key=None, url=None) -> list[str]:
        out = self.make(meta, caption, rng, self.per_sample)
        if not out and not self.warned:
            self.warned = True
            log.warning("train data: no hard negative from source %r for sample %r of %s; such samples train "
                        "without one and are counted in data/no_negative (warned once per loader worker)",
                        self.source, key, url)
        return out


# ---- real captions: NegCLIP-style rule-based word swaps, with the closed-class tagger of the order probe ----

# Place words tag as nouns but name a part of the picture, not a thing: never swapped as objects.
PLACE_WORDS = frozenset("left right top bottom front back side middle center centre corner edge background "
                        "foreground upper lower".split())
DETERMINERS = frozenset("a an the this that these those its his her their our my your some two three four".split())
COORDINATION = frozenset("and or , &".split()) | DETERMINERS
LINKS = frozenset("is are sits sit stands stand lies lie hangs hang rests sitting standing lying hanging resting "
                  "placed positioned located seen".split())  # between a noun and its relation phrase
# Phrases as token tuples, longest first, so "in front of" wins over "front". No in/at/by: often not a place.
RELATION_PHRASES = sorted((tuple(p.split()) for p in (
    "to the left of", "to the right of", "on top of", "in front of", "next to", "on", "under", "above", "below",
    "over", "behind", "beside", "beneath", "underneath", "inside", "near")), key=len, reverse=True)
OPPOSITES = dict(sorted(((tuple(a.split()), b) for a, b in (
    ("left", "right"), ("right", "left"), ("above", "below"), ("below", "above"), ("over", "under"),
    ("under", "over"), ("on top of", "underneath"), ("underneath", "on top of"), ("beneath", "above"),
    ("in front of", "behind"), ("behind", "in front of"), ("inside", "outside"), ("outside", "inside"),
    ("top", "bottom"), ("bottom", "top"), ("upper", "lower"), ("lower", "upper"), ("front", "back"),
    ("on", "under"))), key=lambda item: len(item[0]), reverse=True))
_ENDS = frozenset(".!?;")
RULE_KINDS = ("swap_adjectives", "swap_nouns", "swap_around_relation", "replace_relation")


class _Caption:
    """A caption's tokens with their spans, tags, sentence numbers and the head noun each attributive adjective
    modifies."""

    def __init__(self, text: str):
        self.text = text
        self.spans = token_spans(text)
        self.words = [text[a:b] for a, b in self.spans]
        self.low = [w.lower() for w in self.words]
        self.tags = ["OTHER" if w in PLACE_WORDS else tag(w) for w in self.low]
        self.sentence, n = [], 0
        for w in self.words:
            self.sentence.append(n)
            n += w in _ENDS
        size = len(self.words)
        self.heads = [i for i in range(size) if self.noun(i) and not self.noun(i + 1)]
        self.modifies = {}  # adjective index -> head noun index
        for i in range(size):
            j = i
            while j < size and self.tags[j] == "ADJ":
                j += 1
            if self.tags[i] == "ADJ" and self.noun(j):
                self.modifies[i] = next(h for h in self.heads if h >= j)

    def noun(self, i: int) -> bool:
        return 0 <= i < len(self.words) and self.tags[i] == "NOUN"

    def phrase_at(self, i: int, phrases) -> tuple[str, ...] | None:
        """The longest of `phrases` (token tuples, longest first) starting at token i, if any."""
        for p in phrases:
            if tuple(self.low[i:i + len(p)]) == p:
                return p
        return None

    def noun_phrase_before(self, end: int) -> tuple[int, int] | None:
        """(first, last) token of the ADJ/NOUN run whose head is token end - 1 (links such as 'is' skipped)."""
        while end - 1 >= 0 and self.low[end - 1] in LINKS:
            end -= 1
        if not self.noun(end - 1):
            return None
        first = end - 1
        while first - 1 >= 0 and self.tags[first - 1] in ("ADJ", "NOUN"):
            first -= 1
        return first, end - 1

    def noun_phrase_after(self, start: int) -> tuple[int, int] | None:
        while start < len(self.words) and self.low[start] in DETERMINERS:
            start += 1
        last = start
        while last < len(self.words) and self.tags[last] in ("ADJ", "NOUN"):
            last += 1
        return (start, last - 1) if last - 1 in self.heads and last > start else None


def _case_like(new: str, old: str) -> str:
    """`new` capitalised like the text it replaces (sentence-initial capitals move with the position)."""
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    if new[:1].isupper() and not new.isupper():
        return new[:1].lower() + new[1:]
    return new


def _edit(c: _Caption, replacements: list[tuple[int, int, str]]) -> str:
    """Replace token ranges [first, last] by text (cased like what they replace); fix 'a'/'an' just before each."""
    text, pieces = c.text, []
    for first, last, new in sorted(replacements, reverse=True):
        start, end = c.spans[first][0], c.spans[last][1]
        new = _case_like(new, text[start:end])
        pieces.append((start, end, new))
        if first > 0 and c.low[first - 1] in ("a", "an"):
            article = "an" if new[:1].lower() in "aeiou" else "a"
            a, b = c.spans[first - 1]
            pieces.append((a, b, _case_like(article, text[a:b])))
    for start, end, new in sorted(pieces, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _span_text(c: _Caption, first: int, last: int) -> str:
    return c.text[c.spans[first][0]:c.spans[last][1]]


def _rule_edits(c: _Caption, kind: str) -> list[list[tuple[int, int, str]]]:
    """Every edit (a list of token-range replacements) that rule `kind` could make to the caption."""
    edits = []
    if kind == "swap_adjectives":
        adjs = sorted(c.modifies)
        for x in adjs:
            for y in adjs:
                if x < y and c.sentence[x] == c.sentence[y] and c.low[x] != c.low[y] and c.modifies[x] != c.modifies[y]:
                    edits.append([(x, x, c.words[y]), (y, y, c.words[x])])
    elif kind == "swap_nouns":
        for x in c.heads:
            for y in c.heads:
                if not (x < y and c.sentence[x] == c.sentence[y] and c.low[x] != c.low[y]):
                    continue
                plain = (x == 0 or c.tags[x - 1] != "ADJ") and c.tags[y - 1] != "ADJ"
                if plain and all(w in COORDINATION for w in c.low[x + 1:y]):
                    continue  # "a dog and a cat" -> "a cat and a dog" says the same thing
                edits.append([(x, x, c.words[y]), (y, y, c.words[x])])
    elif kind == "swap_around_relation":
        for i in range(len(c.words)):
            p = c.phrase_at(i, RELATION_PHRASES)
            left, right = (c.noun_phrase_before(i), c.noun_phrase_after(i + len(p))) if p else (None, None)
            if left and right and c.sentence[left[0]] == c.sentence[right[1]] \
                    and c.low[left[0]:left[1] + 1] != c.low[right[0]:right[1] + 1]:
                edits.append([(*left, _span_text(c, *right)), (*right, _span_text(c, *left))])
    elif kind == "replace_relation":
        i = 0
        while i < len(c.words):
            p = c.phrase_at(i, OPPOSITES)
            if p == ("on",) and not (i + 1 < len(c.words) and c.low[i + 1] in DETERMINERS
                                     and c.noun_phrase_after(i + 1)):
                p = None  # only "on <det> <thing>": "on the left" flips at "left", "on top of" on its own
            if p:
                edits.append([(i, i + len(p) - 1, OPPOSITES[p])])
            i += len(p) if p else 1
    else:
        raise ValueError(f"unknown rule {kind!r}; choose one of {list(RULE_KINDS)}")
    return edits


def rule_negatives(caption: str, rng: random.Random, k: int) -> list[str]:
    """Up to k distinct word-swap negatives of a real caption (adjectives, nouns, noun phrases around a relation,
    or a relation replaced by its opposite); [] when no rule applies."""
    c = _Caption(caption)
    queues = [rng.sample(edits, len(edits)) for edits in (_rule_edits(c, kind) for kind in RULE_KINDS) if edits]
    rng.shuffle(queues)
    out: list[str] = []
    while len(out) < k and any(queues):  # one edit of each rule in turn, so k negatives mix the rules
        for queue in queues:
            text = _edit(c, queue.pop()) if queue and len(out) < k else caption
            if text != caption and text not in out:
                out.append(text)
    return out


def from_caption(meta: dict, caption: str, rng: random.Random, k: int) -> list[str]:
    """Rule negatives of the caption chosen for this sample."""
    return rule_negatives(caption, rng, k)
