"""Measures how many in-batch negatives differ only in binding or relation, with and without family grouping."""

from __future__ import annotations

import json
import tarfile

import torch
from omegaconf import DictConfig, OmegaConf

from lit_compclip.synth.world import hard_negative_stats


def scenes_by_key(urls: list[str]) -> dict[str, dict]:
    """KEY -> scene graph, read from the shards' KEY.json files."""
    scenes = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.load(tar.extractfile(member))
                    scenes[member.name[: -len(".json")]] = record["scene"]
    return scenes


def batch_stats(cfg: DictConfig, n_batches: int = 40) -> dict[str, dict[str, float]]:
    """Mean `hard_negative_stats` over `n_batches` training batches, as loaded with and without `data.group_key`."""
    from lit_compclip.training.datamodule import WebDataModule, expand_shards

    scenes = scenes_by_key(expand_shards(cfg.data.train_shards))
    data = OmegaConf.to_container(cfg.data)
    results = {}
    for label, group_key in (("grouped by " + str(cfg.data.group_key), cfg.data.group_key), ("random", None)):
        if label.startswith("grouped") and not group_key:
            continue
        options = dict(data, group_key=group_key, num_workers=0, val_shards=None)
        module = WebDataModule(**options, seed=cfg.seed, train_transform=_no_image, eval_transform=_no_image)
        module.setup("fit")
        totals, n = {}, 0
        for batch in module.train_dataloader():
            for k, v in hard_negative_stats([scenes[key] for key in batch["key"]]).items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
            if n == n_batches:
                break
        results[label] = {k: v / n for k, v in totals.items()}
    return results


def _no_image(image) -> torch.Tensor:
    return torch.zeros(1)  # the statistics need only the keys, not pixels
