"""Does a checkpoint's image trunk see shapes? A linear probe of its tokens on one-object scenes.

Usage: python scripts/shape_perception.py CKPT [CKPT ...] [--init] [--supervised STEPS] [--n-train 1200] [--n-test 600]

Renders one-object scenes of the synthetic world (a random shape, colour, size and place, fresh draws), takes each
checkpoint's image trunk output (its patch tokens, averaged and flattened) and its final image embedding, fits a
6-way logistic regression on `--n-train` scenes and prints its accuracy on `--n-test` others (chance 1/6), with the
confusions of the shape pairs that fill the same share of their box. It tells a trunk that cannot see an outline
(a perception limit) from one whose outline features the contrastive partner does not use.

- `--init`: the first checkpoint's architecture with fresh weights (seed 0), as the untrained reference.
- `--supervised STEPS`: the first checkpoint's image tower, from fresh weights, trained on the shape labels
  themselves (cross-entropy, batches of 64 new scenes, AdamW lr 1e-3) and scored every 50 steps: what the
  architecture can learn in that many steps when the signal is direct.

The checkpoints are read weights-only."""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from lit_compclip.synth.world import COLOURS, MARGIN, SHAPES, SIZES, render

MERGED = (("diamond", "triangle"), ("cross", "diamond"), ("cross", "triangle"), ("circle", "square"))


def one_object_scenes(n: int, seed: int, image_size: int = 64) -> list[tuple[int, object]]:
    """`n` (shape index, PIL image) pairs: one object of a random shape, colour and size at a random place."""
    rng, out = random.Random(seed), []
    for k in range(n):
        s, c = rng.randrange(len(SHAPES)), rng.choice(list(COLOURS))
        w = round(rng.choice(list(SIZES.values())) * image_size)
        lo, hi = round(MARGIN * image_size), image_size - w - round(MARGIN * image_size)
        box = [rng.randint(lo, hi), rng.randint(lo, hi), w, w]
        out.append((s, render({"objects": [{"shape": SHAPES[s], "colour": c, "bbox": box}]}, image_size,
                              (seed, k))))
    return out


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 l2: float = 1e-3, iters: int = 300) -> tuple[float, torch.Tensor]:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty `l2`), in float64; returns
    (held-out accuracy, confusion matrix [true, predicted])."""
    x_train, x_test = x_train.double(), x_test.double()
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    k = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(x_train.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (x_test @ w + b).argmax(1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((y_test, pred), torch.ones_like(y_test), accumulate=True)
    return float((pred == y_test).double().mean()), confusion


@torch.no_grad()
def features(module, images) -> dict[str, torch.Tensor]:
    """The trunk's patch tokens (mean, flattened) and the normalised image embedding, for a list of PIL images."""
    x = torch.stack([module.eval_transform(im) for im in images])
    trunk = module.image.trunk
    tokens = trunk.forward_features(x)[:, getattr(trunk, "num_prefix_tokens", 0):]
    return {"tokens (mean)": tokens.mean(1), "tokens (flattened)": tokens.flatten(1),
            "embedding": F.normalize(module.image(x), dim=-1)}


def merged_confusions(confusion: torch.Tensor) -> str:
    parts = []
    for a, b in MERGED:
        i, j = SHAPES.index(a), SHAPES.index(b)
        wrong, total = int(confusion[i, j] + confusion[j, i]), int(confusion[i].sum() + confusion[j].sum())
        parts.append(f"{a}-{b} {100 * wrong / max(1, total):.0f}%")
    return "confused: " + ", ".join(parts)


def fresh_module(path: str, seed: int = 0):
    """The checkpoint's model with fresh weights."""
    from lit_compclip.checkpoints import build_module, read_checkpoint_file

    hp = read_checkpoint_file(path, mmap=True)["hyper_parameters"]
    torch.manual_seed(seed)
    return build_module(hp).eval()


def supervised(module, steps: int, test, seed: int = 0) -> None:
    """Train `module`'s image tower (fresh weights) on shape labels and print held-out accuracy every 50 steps."""
    torch.manual_seed(seed)
    tower = module.image
    tower.proj = torch.nn.Linear(tower.proj.in_features, len(SHAPES), bias=False)  # the projection, to 6 classes
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-3, weight_decay=0.1)
    x_test = torch.stack([module.eval_transform(im) for _, im in test])
    y_test = torch.tensor([s for s, _ in test])
    for step in range(1, steps + 1):
        batch = one_object_scenes(64, seed=10_000 + step)
        x = torch.stack([module.eval_transform(im) for _, im in batch])
        tower.train()
        loss = F.cross_entropy(tower(x), torch.tensor([s for s, _ in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            tower.eval()
            with torch.no_grad():
                acc = float((tower(x_test).argmax(1) == y_test).double().mean())
            print(f"supervised step {step:>4}  loss {loss.item():.3f}  held-out accuracy {100 * acc:.1f}%", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--init", action="store_true", help="also probe the architecture with fresh weights")
    p.add_argument("--supervised", type=int, default=0, metavar="STEPS",
                   help="train the image tower on shape labels for STEPS steps (a capability reference)")
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=600)
    args = p.parse_args(argv)
    if args.n_train < len(SHAPES) or args.n_test < 1 or args.supervised < 0:
        p.error("--n-train must be >= 6, --n-test >= 1 and --supervised >= 0")
    from lit_compclip.checkpoints import load_module
    from lit_compclip.config import ConfigError

    train, test = one_object_scenes(args.n_train, seed=1), one_object_scenes(args.n_test, seed=2)
    y_train, y_test = torch.tensor([s for s, _ in train]), torch.tensor([s for s, _ in test])
    try:
        modules = [(c, load_module(c)) for c in args.ckpts]
        if args.init:
            modules.append((f"{args.ckpts[0]} (fresh weights)", fresh_module(args.ckpts[0])))
    except ConfigError as e:
        p.exit(2, f"error: {e}\n")
    print(f"linear probe of the shape (6 classes, chance 16.7%), {args.n_train} scenes to fit, {args.n_test} held out")
    for name, module in modules:
        f_train, f_test = features(module, [im for _, im in train]), features(module, [im for _, im in test])
        for key in f_train:
            acc, confusion = linear_probe(f_train[key], y_train, f_test[key], y_test)
            print(f"{name}  {key:<18} {100 * acc:5.1f}%   {merged_confusions(confusion)}")
    if args.supervised:
        supervised(fresh_module(args.ckpts[0]), args.supervised, test)


if __name__ == "__main__":
    main()
