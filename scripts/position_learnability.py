"""Can the default towers learn *where* one object is? The simplest position task, away from composition.

Usage: python scripts/position_learnability.py [STEPS] [key=value ...]   (config overrides for the model/optim)
Trains the default towers with the module's own loss, optimizer and schedule on random batches of 64 one-object images captioned
"There is a red circle at the top." (top/bottom/left/right), and every 50 steps prints the share of 200 held-out
images whose true caption beats the same caption with the opposite place (chance 0.5)."""

import random
import sys
import time

import torch
from omegaconf import OmegaConf

from lit_compclip.config import load_config
from lit_compclip.model import CompClip
from lit_compclip.synth.world import COLOURS, SHAPES, render

PLACES = {"top": (24, 8), "bottom": (24, 40), "left": (8, 24), "right": (40, 24)}  # bbox corner at 64 px
OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def caption(colour: str, shape: str, place: str) -> str:
    return f"There is a {colour} {shape} {'at' if place in ('top', 'bottom') else 'on'} the {place}."


def sample(rng: random.Random):
    colour, shape, place = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))
    x, y = (v + rng.uniform(-3, 3) for v in PLACES[place])
    scene = {"objects": [{"shape": shape, "colour": colour, "size": "large", "bbox": [x, y, 16, 16]}],
             "relations": []}
    return render(scene, 64, rng.randrange(10**6)), colour, shape, place


@torch.no_grad()
def place_accuracy(model: CompClip, test) -> float:
    model.eval()
    images = model.encode_image(torch.stack([model.eval_transform(t[0]) for t in test]))  # (N, D)
    right = 0
    for image, (_, colour, shape, place) in zip(images, test):
        texts = model.encode_text([caption(colour, shape, place), caption(colour, shape, OPPOSITE[place])])
        right += float(image @ texts[0]) > float(image @ texts[1])
    model.train()
    return right / len(test)


def main(steps: int = 150, *overrides: str) -> None:
    torch.manual_seed(0)
    cfg = load_config([], list(overrides))
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=steps)
    setup = model.configure_optimizers()  # the training run's own parameter groups and schedule
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    rng = random.Random(0)
    test = [sample(rng) for _ in range(200)]
    print(f"step 0  place accuracy {place_accuracy(model, test):.3f}", flush=True)
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = [sample(rng) for _ in range(64)]
        images = torch.stack([model.train_transform(b[0]) for b in batch])
        loss, _, _ = model._loss({"image": images, "caption": [caption(*b[1:]) for b in batch]}, gather=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step}  loss {loss.item():.3f}  place accuracy {place_accuracy(model, test):.3f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150, *sys.argv[2:])
