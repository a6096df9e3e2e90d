"""Which shapes a checkpoint cannot tell apart: swap-object as a Winoground-style group, on rendered scenes.

Usage: python scripts/diagnose_shapes.py CKPT [--n 40] [--seed 0] [--pairs diamond-triangle,circle-star,...]

For each shape pair it renders `n` two-object scenes and their shape-swapped twin (the same colours, sizes and places;
only the two shapes exchanged), with the captions "a C1 S1 and a C2 S2" / "a C1 S2 and a C2 S1": exactly the pair
SugarCrepe's swap-object asks about. It prints, per pair, Winoground's three scores on those 2x2 groups (text: each
image prefers its caption; image: each caption prefers its image; group: all four) and the mean cosine of the two
images' and of the two captions' embeddings (1.0 = the tower cannot tell the twins apart). The scenes are new
draws, not the probe sets', so the figures are not SugarCrepe's; they show whether a weak pair is one tower's
blindness or both's. The checkpoint is read weights-only."""

from __future__ import annotations

import argparse
import itertools
import random

import torch

from lit_compclip.synth.world import COLOURS, MARGIN, SHAPES, SIZES, render


def group_scores(S: torch.Tensor) -> tuple[int, int, bool]:
    """(text choices right of 2, image choices right of 2, group right) for a 2x2 image-by-caption similarity S[i, t],
    image i's own caption on the diagonal: Winoground's rules on one group (a tie counts as wrong)."""
    text = int(S[0, 0] > S[0, 1]) + int(S[1, 1] > S[1, 0])
    image = int(S[0, 0] > S[1, 0]) + int(S[1, 1] > S[0, 1])
    return text, image, text == 2 and image == 2


def twin_scenes(rng: random.Random, pair: tuple[str, str], image_size: int = 64):
    """A scene with the pair's two shapes, its shape-swapped twin and their captions."""
    c1, c2 = rng.sample(list(COLOURS), 2)
    s1, s2 = pair if rng.random() < 0.5 else pair[::-1]
    w1, w2 = (round(rng.choice(list(SIZES.values())) * image_size) for _ in range(2))
    lo, hi = round(0.1 * image_size), image_size - max(w1, w2) - round(MARGIN * image_size)
    if rng.random() < 0.5:  # side by side or one above the other, never overlapping
        places = [(lo, rng.randint(lo, hi)), (image_size - w2 - lo, rng.randint(lo, hi))]
    else:
        places = [(rng.randint(lo, hi), lo), (rng.randint(lo, hi), image_size - w2 - lo)]
    a = {"objects": [{"shape": s1, "colour": c1, "bbox": [*places[0], w1, w1]},
                     {"shape": s2, "colour": c2, "bbox": [*places[1], w2, w2]}]}
    b = {"objects": [{**a["objects"][0], "shape": s2}, {**a["objects"][1], "shape": s1}]}
    return a, b, f"a {c1} {s1} and a {c2} {s2}", f"a {c1} {s2} and a {c2} {s1}"


@torch.no_grad()
def diagnose(encoder, pairs, n: int = 40, seed: int = 0, image_size: int = 64) -> dict[str, dict[str, float]]:
    """Per pair "a-b": text, image and group scores (fractions) and the twins' mean image and caption cosines."""
    rng = random.Random(seed)
    out = {}
    for pair in pairs:
        text = image = group = 0
        cos_i = cos_t = 0.0
        for k in range(n):
            a, b, ta, tb = twin_scenes(rng, pair, image_size)
            imgs = [render(a, image_size, seed * 100_003 + k), render(b, image_size, seed * 100_003 + k)]
            i = torch.nn.functional.normalize(encoder.encode_image(imgs).double(), dim=-1)
            t = torch.nn.functional.normalize(encoder.encode_text([ta, tb]).double(), dim=-1)
            right = group_scores(i @ t.T)
            text, image, group = text + right[0], image + right[1], group + right[2]
            cos_i, cos_t = cos_i + float(i[0] @ i[1]), cos_t + float(t[0] @ t[1])
        out["-".join(pair)] = {"text": text / (2 * n), "image": image / (2 * n), "group": group / n,
                               "image_cos": cos_i / n, "caption_cos": cos_t / n}
    return out


def parse_pairs(spec: str | None) -> list[tuple[str, str]]:
    if not spec:
        return list(itertools.combinations(SHAPES, 2))
    pairs = []
    for item in spec.split(","):
        pair = tuple(item.strip().split("-"))
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(SHAPES):
            raise ValueError(f"--pairs: {item!r} is not two different shapes of {', '.join(SHAPES)} joined by '-'")
        pairs.append(pair)
    return pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--n", type=int, default=40, help="scenes per pair (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", default=None, help="e.g. diamond-triangle,cross-diamond (default: all 15)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n {args.n}: give at least 1 scene per pair")
    try:
        pairs = parse_pairs(args.pairs)
    except ValueError as e:
        p.error(str(e))
    from lit_compclip.config import ConfigError
    from lit_compclip.encoders import build_encoder

    try:
        encoder = build_encoder(f"compclip:{args.ckpt}", device="cpu")
    except ConfigError as e:
        p.exit(2, f"error: {e}\n")
    print(f"{'pair':<18} {'text':>5} {'image':>6} {'group':>6} {'cos images':>11} {'cos captions':>13}"
          f"   ({args.n} scenes each)")
    for name, r in sorted(diagnose(encoder, pairs, args.n, args.seed).items(), key=lambda kv: kv[1]["group"]):
        print(f"{name:<18} {100 * r['text']:>4.0f}% {100 * r['image']:>5.0f}% {100 * r['group']:>5.0f}% "
              f"{r['image_cos']:>11.3f} {r['caption_cos']:>13.3f}")


if __name__ == "__main__":
    main()
