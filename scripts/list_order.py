"""Does a checkpoint read a plain list's order as a place? Image-text similarities on held-out two-object scenes.

Usage: python scripts/list_order.py CKPT [CKPT ...] [--scenes 600] [--seed 0]

Draws `--scenes` fresh held-out scenes of the synthetic world (two objects, one left of or above the other), renders
them and prints, per checkpoint, the mean cosine similarity of each image embedding to
- 'a C S' naming the object at the left (top), and naming the other one, with the share of scenes where the first
  is higher: how much the image embedding favours the object at the start of the axis;
- 'a C1 S1 and a C2 S2' in that order (start of the axis first) and reversed, with the share where the first is
  higher: 50% means the list's order says nothing to the model, 100% that it reads the first-named object as the
  left (top) one. SugarCrepe's swap lists name the objects in either order, so a model that reads order as place
  fails the lists that name the right (bottom) object first (`compclip breakdown RUN`, 'lists by order').

The checkpoints are read weights-only, as `compclip probe` reads them."""

from __future__ import annotations

import argparse
import random

import torch

from lit_compclip.synth.captions import axis_end, locations
from lit_compclip.synth.world import render, sample_family


def scenes_and_texts(n: int, seed: int, image_size: int = 64) -> tuple[list, dict[str, list[str]]]:
    """`n` rendered held-out scenes and, per scene, the four texts: 'start', 'end' (one object each), 'in_order',
    'reversed' (both, the start of the axis first or last)."""
    rng, images, texts = random.Random(seed), [], {"start": [], "end": [], "in_order": [], "reversed": []}
    for k in range(n):
        scene = sample_family(rng, 2, "eval", image_size)[0]
        images.append(render(scene, image_size, (seed, k)))
        start = scene["objects"][locations(scene).index(axis_end(scene))]
        end = next(o for o in scene["objects"] if o is not start)
        a, b = f"a {start['colour']} {start['shape']}", f"a {end['colour']} {end['shape']}"
        for key, text in (("start", a), ("end", b), ("in_order", f"{a} and {b}"), ("reversed", f"{b} and {a}")):
            texts[key].append(text)
    return images, texts


def similarities(encoder, images, texts: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Cosine similarity of each image to its own text, per kind of text."""
    with torch.no_grad():
        img = torch.nn.functional.normalize(encoder.encode_image(images).double(), dim=-1)
        return {k: (img * torch.nn.functional.normalize(encoder.encode_text(v).double(), dim=-1)).sum(-1)
                for k, v in texts.items()}


def summary(sims: dict[str, torch.Tensor]) -> str:
    one = (sims["start"] > sims["end"]).double().mean().item()
    both = (sims["in_order"] > sims["reversed"]).double().mean().item()
    return (f"one object: start {sims['start'].mean():.3f} / end {sims['end'].mean():.3f} (start higher in "
            f"{100 * one:.1f}%)   list: start first {sims['in_order'].mean():.3f} / reversed "
            f"{sims['reversed'].mean():.3f} (start first higher in {100 * both:.1f}%)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--scenes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.scenes < 1:
        p.error("--scenes must be >= 1")
    from lit_compclip.config import ConfigError
    from lit_compclip.encoders import build_encoder

    try:
        encoders = [(c, build_encoder(f"compclip:{c}", device="cpu")) for c in args.ckpts]
    except ConfigError as e:
        p.exit(2, f"error: {e}\n")
    images, texts = scenes_and_texts(args.scenes, args.seed)
    print(f"{args.scenes} held-out two-object scenes (seed {args.seed}); 'start' is the object at the left (top)")
    for name, encoder in encoders:
        print(f"{name}  {summary(similarities(encoder, images, texts))}")


if __name__ == "__main__":
    main()
