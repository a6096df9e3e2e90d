"""What the embeddings notebook asks of the synthetic world: captions made from a held-out scene's graph (its
probe-phrased relation with the colours or the objects swapped; one caption per colour binding of a family)."""

from __future__ import annotations

import random
from typing import Sequence

from lit_compclip.synth.captions import noun, pair_caption, relation_words


def variant_captions(scene: dict, seed: str = "0") -> dict[str, str]:
    """The scene's first relation as a probe-phrased caption, with the colours swapped and with the two objects
    swapped (so the relation is false); the same relation words in all three."""
    rel = scene["relations"][0]
    a, b = scene["objects"][rel["subject"]], scene["objects"][rel["object"]]
    words = relation_words(rel["relation"], random.Random(f"explore/{seed}"), "eval")
    return {"caption": pair_caption(noun(a), noun(b), words),
            "swapped_attribute": pair_caption(noun({**a, "colour": b["colour"]}), noun({**b, "colour": a["colour"]}),
                                              words),
            "swapped_relation": pair_caption(noun(b), noun(a), words)}


def binding_captions(samples: Sequence[dict], families: int = 10) -> tuple[list[str], list[str], list[int]]:
    """(texts, binding labels, family ids): per family, one colour-bound caption per distinct binding
    (a family's colour-swapped members bind the same words the other way)."""
    texts, labels, groups = [], [], []
    for s in samples:
        objs = (s.get("scene") or {}).get("objects", [])[:2]
        if len(objs) < 2 or (s.get("family") not in groups and len(set(groups)) >= families):
            continue
        label = " + ".join(sorted(noun(o) for o in objs))
        if label not in labels:
            texts.append(pair_caption(noun(objs[0]), noun(objs[1]), None))
            labels.append(label)
            groups.append(s.get("family"))
    return texts, labels, groups
