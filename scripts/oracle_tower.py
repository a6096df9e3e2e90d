"""Which tower holds composition back? Train ONE tower against a fixed "oracle" embedding of the scene graph.

Usage: python scripts/oracle_tower.py image|text [STEPS] [--captions recaption|relation] [key=value ...]

The oracle embedding of a two-object scene is a one-hot code of (colour, shape, size) for the first and the second
object along the relation axis, plus the axis, lifted to `model.embed_dim` by a fixed orthonormal map: a perfect
partner that already binds attributes to objects and objects to places. The chosen tower of the default model
(config overrides apply) is trained against it with the project's InfoNCE on family batches of 64 train scenes
(lr 1e-3, 50 warm-up steps, cosine), the other tower is not used.

- `image`: every 100 steps, the share of held-out (val) images closer to their scene's oracle than to the oracle
  of the same scene with objects 0 and 1 exchanging colour / shape / place (chance 0.5).
- `text`: trains on the recaptions with the default sentence sampling (`--captions recaption`) or on one relation
  sentence per scene (`--captions relation`); every 100 steps, the share of 400 held-out scenes whose true probe
  caption (held-out phrasings, as in the probe files) is closer to the scene's oracle than the negative, for
  ARO VG-Relation and SugarCrepe swap-att / swap-obj / replace-rel (chance 0.5)."""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lit_compclip.config import load_config
from lit_compclip.data.captions import CaptionPicker
from lit_compclip.explore import read_heldout
from lit_compclip.losses import info_nce
from lit_compclip.model import CompClip
from lit_compclip.synth import captions as capm
from lit_compclip.synth.world import COLOURS, SHAPES, SIZES

SLOT = len(COLOURS) + len(SHAPES) + len(SIZES)


def oracle_code(scene: dict) -> torch.Tensor:
    objs = scene["objects"]
    axis = 0 if scene["relations"][0]["relation"] in ("left of", "right of") else 1
    order = sorted(range(len(objs)), key=lambda i: objs[i]["bbox"][axis] + objs[i]["bbox"][axis + 2] / 2)
    code = torch.zeros(2 * SLOT + 2)
    for slot, i in enumerate(order[:2]):
        o, base = objs[i], slot * SLOT
        code[base + list(COLOURS).index(o["colour"])] = 1
        code[base + len(COLOURS) + SHAPES.index(o["shape"])] = 1
        code[base + len(COLOURS) + len(SHAPES) + list(SIZES).index(o["size"])] = 1
    code[2 * SLOT + axis] = 1
    return code


def exchanged(scene: dict, key: str) -> dict:
    """The scene with objects 0 and 1 exchanging `key` ('colour', 'shape', or 'place': their boxes)."""
    objs = [dict(o) for o in scene["objects"]]
    field = "bbox" if key == "place" else key
    objs[0][field], objs[1][field] = objs[1][field], objs[0][field]
    return {**scene, "objects": objs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("side", choices=["image", "text"])
    ap.add_argument("steps", nargs="?", type=int, default=300)
    ap.add_argument("--captions", choices=["recaption", "relation"], default="recaption")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config([], args.overrides)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=args.steps)
    dim = cfg.model.embed_dim
    lift = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(123)))[0][:, :2 * SLOT + 2]

    def oracle(scenes: list[dict]) -> torch.Tensor:
        return F.normalize(torch.stack([oracle_code(s) for s in scenes]) @ lift.T, dim=-1)

    train = read_heldout(str(Path(cfg.synth.out_dir) / "train"), limit=None)
    val = read_heldout(str(Path(cfg.synth.out_dir) / "val"), limit=None)
    norm = model.eval_transform.transforms[-1]
    mean, std = torch.tensor(list(norm.mean)).view(1, 3, 1, 1), torch.tensor(list(norm.std)).view(1, 3, 1, 1)

    def pixels(samples: list[dict]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(s["image"]) for s in samples])).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std

    picker = CaptionPicker({"recaption": 1.0}, sentence_sample=cfg.data.sentence_sample)

    def caption(sample: dict) -> str:
        if args.captions == "relation":
            scene = sample["scene"]
            return capm._relation_sentence(scene, rng.choice(scene["relations"]), rng, "train")
        return picker({"json": {"recaption": sample["recaption"]}}, rng)

    tower = model.image if args.side == "image" else model.text
    params = [p for p in tower.parameters() if p.requires_grad]
    log_scale = torch.nn.Parameter(torch.tensor(cfg.model.init_logit_scale))
    opt = torch.optim.AdamW([{"params": params}, {"params": [log_scale], "weight_decay": 0.0}], lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    warm = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            if args.side == "image":
                emb = torch.cat([model.encode_image(pixels(val[i:i + 256])) for i in range(0, len(val), 256)])
                scenes = [s["scene"] for s in val]
                true = (emb * oracle(scenes)).sum(-1)
                res = {k: float((true > (emb * oracle([exchanged(s, k) for s in scenes])).sum(-1)).float().mean())
                       for k in ("colour", "shape", "place")}
            else:
                r = random.Random(1)
                scenes = [s["scene"] for s in val[:400]]
                target = oracle(scenes)
                pairs = {"vg_relation": [capm.aro_relation(s, r)[:2] for s in scenes]}
                for subset in ("swap_att", "swap_obj", "replace_rel"):
                    pairs[subset] = [capm.sugarcrepe_pair(s, subset, r) for s in scenes]
                res = {}
                for name, pp in pairs.items():
                    t = (model.encode_text([p[0] for p in pp]) * target).sum(-1)
                    f = (model.encode_text([p[1] for p in pp]) * target).sum(-1)
                    res[name] = float((t > f).float().mean())
        model.train()
        print(f"step {step:4d}  " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)

    families: dict[int, list[int]] = {}
    for i, s in enumerate(train):
        families.setdefault(s["family"], []).append(i)
    ids, queue, losses, start = sorted(families), [], [], time.perf_counter()
    per_batch = max(1, cfg.data.batch_size // max(len(f) for f in families.values()))  # whole families
    model.train()
    evaluate(0)
    for step in range(1, args.steps + 1):
        if len(queue) < per_batch:
            queue += rng.sample(ids, len(ids))
        batch = [train[i] for f in queue[:per_batch] for i in families[f]]
        queue = queue[per_batch:]
        emb = model.encode_image(pixels(batch)) if args.side == "image" else model.encode_text(
            [caption(s) for s in batch])
        loss = info_nce(emb, oracle([s["scene"] for s in batch]), log_scale.exp().clamp(max=cfg.model.max_logit_scale))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {np.mean(losses[-25:]):.3f}  {time.perf_counter() - start:.0f} s", flush=True)
            evaluate(step)


if __name__ == "__main__":
    main()
