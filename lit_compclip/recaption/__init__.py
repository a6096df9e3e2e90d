"""Recaptioning backends by name: `compclip recaption` rewrites shards' captions with one of them."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.registry import build

BACKENDS = {
    "scene": "lit_compclip.synth.scene_backend:SceneBackend",  # the synthetic world's, offline
    "openai": "lit_compclip.recaption.openai_backend:OpenAIBackend",
    "transformers": "lit_compclip.recaption.hf_backend:TransformersBackend",
}


def build_backend(name: str, options: Mapping[str, Any] | None = None):
    """The backend registered as `name`, built with `options` (checked against its constructor first)."""
    return build(BACKENDS, name, "recaption backend", options)
