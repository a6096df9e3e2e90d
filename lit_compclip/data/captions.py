"""Caption selection: pick a caption source by weight per sample, optionally keep a random subset of its sentences."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import sentencex


def split_sentences(text: str) -> list[str]:
    """`text`'s stripped, non-empty sentences in their original order.

    English rules (sentencex): an abbreviation (Mr., St., e.g., p.m.), an initial (J. R. R.), a decimal (3.5), a URL
    or a full stop inside quotes or brackets does not end a sentence; a line break always does."""
    return [s.strip() for line in text.splitlines() for s in sentencex.segment("en", line) if s.strip()]


def sample_sentences(text: str, k: int, rng: random.Random) -> str:
    """Keep a random subset of min(k, n) of the n sentences of `text`, in their original order."""
    sentences = split_sentences(text)
    if len(sentences) <= k:
        return " ".join(sentences)
    keep = sorted(rng.sample(range(len(sentences)), k))
    return " ".join(sentences[i] for i in keep)


def _as_text(value) -> str | None:
    """A usable caption from a field value: a non-blank string, else None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


class CaptionPicker:
    """Choose one caption per sample from weighted sources (`"txt"` = the .txt file, any other name = a .json field).

    Sources missing or empty in a sample leave the draw (weights renormalised over the present ones); a field holding
    a list of strings (e.g. DreamLIP's several captions) counts as present and yields one of its non-empty items.
    `sentence_sample` (field -> k) keeps a random subset of at most k sentences of that field's caption; fields it
    does not name (the alt-text, say) keep their whole caption. It may name fields this picker does not read: a
    caption curriculum's later picker gets the same mapping.
    """

    def __init__(self, caption_fields: Mapping[str, float], sentence_sample: Mapping[str, int] | None = None):
        if not caption_fields:
            raise ValueError("caption_fields is empty; give at least one source, e.g. {'txt': 1.0}")
        for name, weight in caption_fields.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight <= 0:
                raise ValueError(f"caption_fields[{name!r}] = {weight!r}: weights must be positive numbers")
        if sentence_sample is None:
            sentence_sample = {}
        if not isinstance(sentence_sample, Mapping):
            raise ValueError(f"sentence_sample = {sentence_sample!r}: give a mapping field -> k, e.g. {{'recaption': 1}}"
                             f" ({{}} keeps whole captions)")
        for name, k in sentence_sample.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"sentence_sample[{name!r}] = {k!r}: must be an int >= 1 (leave the field out to keep "
                                 f"its whole caption)")
        total = float(sum(caption_fields.values()))
        self.caption_fields = {name: weight / total for name, weight in caption_fields.items()}
        self.sentence_sample = dict(sentence_sample)

    def candidates(self, sample: dict) -> dict[str, list[str]]:
        """The usable captions of each source present in `sample` ({"txt": str|bytes, "json": dict})."""
        meta = sample.get("json") or {}
        found = {}
        for name in self.caption_fields:
            value = sample.get("txt") if name == "txt" else meta.get(name)
            items = value if isinstance(value, (list, tuple)) else [value]
            texts = [t for t in (_as_text(v) for v in items) if t is not None]
            if texts:
                found[name] = texts
        return found

    def __call__(self, sample: dict, rng: random.Random) -> str | None:
        """One caption for `sample` ({"txt": str|bytes, "json": dict}), or None when no source is present."""
        found = self.candidates(sample)
        if not found:
            return None
        names = list(found)
        name = rng.choices(names, weights=[self.caption_fields[n] for n in names])[0]
        texts = found[name]
        text = texts[0] if len(texts) == 1 else rng.choice(texts)
        if name in self.sentence_sample:
            text = sample_sentences(text, self.sentence_sample[name], rng)
        return text
