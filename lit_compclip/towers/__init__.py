"""Tower registries: a text tower is chosen by name; each entry is one file in this folder."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.registry import build, resolve

TEXT_TOWERS = {
    "sentence_transformers": "lit_compclip.towers.sentence_transformers:SentenceTransformerTower",
    "scratch": "lit_compclip.towers.scratch:ScratchTextTower",
}


def text_tower_class(name: str):
    return resolve(TEXT_TOWERS, name, "text tower")


def split_tower_options(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`model.text` -> (tower name, the options for its constructor)."""
    options = dict(options)
    return options.pop("tower", "sentence_transformers"), options


def build_text_tower(options: Mapping[str, Any], embed_dim: int):
    """Build the text tower named by `options["tower"]` from the rest of `options` (checked against its signature)."""
    name, options = split_tower_options(options)
    return build(TEXT_TOWERS, name, "text tower", options, embed_dim=embed_dim)
