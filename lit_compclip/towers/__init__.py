"""Tower registries: a text tower is chosen by name; each entry is one file in this folder."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lit_compclip.registry import build, resolve

TEXT_TOWERS = {
    "sentence_transformers": "lit_compclip.towers.sentence_transformers:SentenceTransformerTower",
    "transformers": "lit_compclip.towers.transformers_lm:TransformersTower",
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


def encode_by_length(tower, tokens: Mapping[str, Any], groups: int):
    """`tower(tokens)` with the rows encoded in `groups` runs of similar length, each cut to its own longest row.

    A padded batch pays for its longest caption in every row: a default synthetic batch holds 1,208 real tokens in
    1,973 padded positions, 1,461 in two groups (`make bench`). Rows are independent given the attention mask (and a
    causal tower never reads past a row's last token), so the result equals one padded call up to float rounding."""
    mask = tokens["attention_mask"]  # (B, L)
    if groups <= 1 or len(mask) < 2:
        return tower(dict(tokens))
    # The groups are counted on the tokens where they are (the host, from tokenize): a boolean index on a
    # device's tensor would wait for the device.
    lengths = mask.sum(1)
    parts, rows_in_order = [], []
    for rows in length_groups(lengths, groups):
        columns = mask[rows].bool().any(0)  # the group's real columns, whichever side its rows are padded on
        parts.append(tower({k: v[rows][:, columns] for k, v in tokens.items()}))
        rows_in_order.append(rows)
    out = torch.cat(parts)
    return out[torch.argsort(torch.cat(rows_in_order)).to(out.device)]  # back to the batch's order


def length_groups(lengths: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """Row indices of (B,) token counts in `groups` near-equal runs, shortest first (the grouping of
    `encode_by_length`, which `make bench` also counts padding by)."""
    return torch.argsort(lengths, stable=True).chunk(max(1, groups))
