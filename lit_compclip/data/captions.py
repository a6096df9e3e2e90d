"""Caption selection: pick a caption source by weight per sample, optionally keep a random subset of its sentences."""

from __future__ import annotations

import math
import random
import re

# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before whitespace; newlines also split.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split `text` into stripped, non-empty sentences in their original order."""
    parts = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        # keep closing quotes/brackets with the sentence they close
        parts.append(text[pos:m.start()] + m.group(0).rstrip())
        pos = m.end()
    parts.append(text[pos:])
    return [p.strip() for p in parts if p.strip()]


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
    """

    def __init__(self, caption_fields: dict[str, float], sentence_sample: int = 0):
        if not caption_fields:
            raise ValueError("caption_fields is empty; give at least one source, e.g. {'txt': 1.0}")
        for name, weight in caption_fields.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight <= 0:
                raise ValueError(f"caption_fields[{name!r}] = {weight!r}: weights must be positive numbers")
        if isinstance(sentence_sample, bool) or not isinstance(sentence_sample, int) or sentence_sample < 0:
            raise ValueError(f"sentence_sample = {sentence_sample!r}: must be an int >= 0 (0 keeps whole captions)")
        total = float(sum(caption_fields.values()))
        self.caption_fields = {name: weight / total for name, weight in caption_fields.items()}
        self.sentence_sample = sentence_sample

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
        if self.sentence_sample > 0:
            text = sample_sentences(text, self.sentence_sample, rng)
        return text
