"""The `scene` recaption backend (`compclip recaption --backend scene`): a deterministic recaption of the synthetic
world's scene graph (KEY.json `scene`). The recaption registry names it; nothing imports it."""

from __future__ import annotations

import random

from lit_compclip.recaption.base import Outcome, Request
from lit_compclip.synth import captions


class SceneBackend:
    """Describes KEY.json's `scene` with synth.captions.recaption, rng seeded by (seed, key): no model, no network."""

    name = "scene"
    model = "synth.captions.recaption"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def caption_one(self, request: Request) -> Outcome:
        scene = request.meta.get("scene")
        if scene is None:
            return Outcome(None, "no scene in KEY.json (the scene backend needs the synthetic world's scene graph)")
        # held-out phrasings for held-out samples, as the synthetic world's own recaptions do
        split = "eval" if request.meta.get("split") in ("val", "eval") else "train"
        try:
            text = captions.recaption(scene, random.Random(f"{self.seed}/recaption/{request.key}"), split)
        except (KeyError, IndexError, TypeError, ValueError) as exn:
            return Outcome(None, f"bad scene in KEY.json: {type(exn).__name__}: {exn}")
        text = text.strip()
        return Outcome(text) if text else Outcome(None, "empty answer")

    def caption(self, requests: list[Request]) -> list[Outcome]:
        return [self.caption_one(r) for r in requests]

    def close(self) -> None:
        pass
