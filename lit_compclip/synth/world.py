"""The synthetic world: vocabulary, scene sampling, counterfactual families, rendering and batch statistics."""

from __future__ import annotations

import io
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# Vocabulary: every colour is distinct from the others and from the mid-grey background.
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 55, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = {"small": 0.30, "large": 0.40}  # bbox side as a fraction of the image (shrunk for crowded scenes); a shape
# spans 3-4 of the default ViT's 8-pixel patches at 64 px (shapes, unlike colours, are hard to see at 2 patches).
# Format 7 raised them from 0.26 / 0.36: replace-object and swap-object rose (docs/RESEARCH_LOG.md, format 7).
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MEMBERS = ("base", "swap_colour", "swap_position", "swap_both")  # one family, written in this order
TWIN_MEMBERS = tuple(f"other_shape_{m}" for m in MEMBERS)  # a training family's shape twin (see shape_twin)

# Latin-square transversal: colour i is held out with shape i + 3, so each colour and each shape exactly once.
assert len(COLOURS) == len(SHAPES)
HELD_OUT = frozenset((c, SHAPES[(i + len(SHAPES) // 2) % len(SHAPES)]) for i, c in enumerate(COLOURS))

MAX_OBJECTS = 4
BACKGROUND = 128
MARGIN = 0.07  # objects stay inside this border, so a 90%-area random crop (sides >= 95%) keeps them all
MIN_GAP = 0.05  # separation between neighbours on the relation axis, so the relation is unambiguous
LINE_JITTER = 0.06  # offset from the shared line on the other axis; < MIN_GAP + smallest size, so never ambiguous
MEMBER_JITTER = 0.02  # fresh jitter each family member gets
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Layout:
    """Where objects sit, as fractions of the image; the same layout with another `order` swaps positions."""
    axis: str  # "h" (relations left/right) or "v" (above/below)
    order: tuple[int, ...]  # object indices along the axis, leftmost/topmost first
    gaps: tuple[float, ...]  # n + 1 weights sharing the free space along the axis
    line: float  # centre of the objects on the other axis
    offsets: tuple[float, ...]  # per slot, offset from `line`


def size_scale(n_objects: int) -> float:
    """Shrink factor so `n_objects` large objects plus gaps fit inside the margins on one axis."""
    room = 1 - 2 * MARGIN - (n_objects - 1) * MIN_GAP
    return min(1.0, room / (n_objects * SIZES["large"]))


def _line_range(max_side: float) -> tuple[float, float]:
    lo = MARGIN + max_side / 2 + LINE_JITTER
    return lo, 1 - lo


def _sample_layout(rng: random.Random, n: int, max_side: float) -> Layout:
    return Layout(axis=rng.choice("hv"), order=tuple(rng.sample(range(n), n)),
                  gaps=tuple(rng.uniform(0.2, 1.0) for _ in range(n + 1)), line=rng.uniform(*_line_range(max_side)),
                  offsets=tuple(rng.uniform(-LINE_JITTER, LINE_JITTER) for _ in range(n)))


def _jitter(layout: Layout, rng: random.Random, max_side: float) -> Layout:
    lo, hi = _line_range(max_side)
    j = MEMBER_JITTER
    return replace(layout, gaps=tuple(g * rng.uniform(0.85, 1.15) for g in layout.gaps),
                   line=min(hi, max(lo, layout.line + rng.uniform(-j, j))),
                   offsets=tuple(min(LINE_JITTER, max(-LINE_JITTER, o + rng.uniform(-j, j))) for o in layout.offsets))


def _swap_01(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple({0: 1, 1: 0}.get(i, i) for i in order)


def scene_dict(objects: list[tuple[str, str, str]], layout: Layout, image_size: int) -> dict:
    """The stored scene graph: objects (shape, colour, size, bbox in pixels) and relations between neighbours 0-1, 1-2."""
    n = len(objects)
    sides = [SIZES[size] * size_scale(n) for _, _, size in objects]
    free = 1 - 2 * MARGIN - sum(sides) - (n - 1) * MIN_GAP
    total = sum(layout.gaps)
    pos = MARGIN + free * layout.gaps[0] / total
    boxes: list[list[float]] = [[]] * n
    for slot, i in enumerate(layout.order):
        s = sides[i]
        along, across = pos, layout.line + layout.offsets[slot] - s / 2
        x, y = (along, across) if layout.axis == "h" else (across, along)
        boxes[i] = [round(v * image_size, 1) for v in (x, y, s, s)]
        pos += s + MIN_GAP + free * layout.gaps[slot + 1] / total
    objs = [{"shape": shape, "colour": colour, "size": size, "bbox": box}
            for (shape, colour, size), box in zip(objects, boxes)]
    return {"objects": objs, "relations": [relation_between(objs, i, i + 1, layout.axis) for i in range(n - 1)]}


def relation_between(objects: list[dict], i: int, j: int, axis: str) -> dict:
    """The relation of object i to object j on `axis`, read from their bbox centres."""
    k = 0 if axis == "h" else 1
    ci = objects[i]["bbox"][k] + objects[i]["bbox"][k + 2] / 2
    cj = objects[j]["bbox"][k] + objects[j]["bbox"][k + 2] / 2
    assert ci != cj, "objects on the relation axis never share a centre"
    before = ("left of", "above")[k]
    return {"subject": i, "relation": before if ci < cj else INVERSE[before], "object": j}


def sample_family(rng: random.Random, n_objects: int, split: str, image_size: int) -> list[dict]:
    """Base scene + colour-swapped + position-swapped + both (objects 0 and 1), each with fresh jitter. In split
    "train", "both" is the base with its two shapes exchanged (colours and sizes stay in place).

    split "train": no member holds a HELD_OUT (colour, shape); split "eval": the base holds at least one."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'eval'")
    for _ in range(10_000):
        colours = rng.sample(list(COLOURS), n_objects)
        shapes = rng.sample(SHAPES, n_objects)
        swapped = [colours[1], colours[0]] + colours[2:]
        base_combos = set(zip(colours, shapes))
        if split == "eval" and base_combos & HELD_OUT:
            break
        if split == "train" and not (base_combos | set(zip(swapped, shapes))) & HELD_OUT:
            break
    else:
        raise AssertionError("could not sample a scene that satisfies the held-out split")
    sizes = [rng.choice(list(SIZES)) for _ in range(n_objects)]
    objects = list(zip(shapes, colours, sizes))
    objects_swapped = list(zip(shapes, swapped, sizes))
    max_side = SIZES["large"] * size_scale(n_objects)
    layout = _sample_layout(rng, n_objects, max_side)
    moved = replace(layout, order=_swap_01(layout.order))
    # The training "both" member exchanges the two shapes and nothing else: each place keeps its colour and size.
    # With the sizes moving along (format <= 7, and the probes' eval families still), half the families could tell
    # the twins apart by size alone, and swap-object stayed below 80 for 3 of 5 seeds (docs/RESEARCH_LOG.md).
    both = list(zip(shapes, swapped, [sizes[1], sizes[0]] + sizes[2:])) if split == "train" else objects_swapped
    members = [(objects, layout), (objects_swapped, layout), (objects, moved), (both, moved)]
    return [scene_dict(objs, _jitter(lay, rng, max_side), image_size) for objs, lay in members]


def shape_twin(family: list[dict], rng: random.Random) -> list[dict]:
    """The training family again with one object's shape replaced, in every member, by a shape the scene lacks;
    colours, sizes, places and jitter are kept, and no member holds a HELD_OUT (colour, shape).

    Without twins a batch asks for shape only through exchanged shapes (the both-swapped member; up to format 7
    only when the two sizes matched) or by chance, and replace-object stayed at 55-72% in every run."""
    shapes = {o["shape"] for o in family[0]["objects"]}
    choices = [(k, s) for k in range(len(family[0]["objects"])) for s in SHAPES if s not in shapes]
    rng.shuffle(choices)
    for k, shape in choices:
        twin = [{**scene, "objects": [{**o, "shape": shape} if i == k else o for i, o in enumerate(scene["objects"])]}
                for scene in family]
        if not any((o["colour"], o["shape"]) in HELD_OUT for scene in twin for o in scene["objects"]):
            return twin
    raise AssertionError("every other shape makes a held-out combination")  # 6 shapes, <= 4 objects: never


def _shape_points(shape: str, x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    cx, cy = x + w / 2, y + h / 2
    if shape == "square":
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    if shape == "triangle":
        return [(cx, y), (x + w, y + h), (x, y + h)]
    if shape == "diamond":
        return [(cx, y), (x + w, cy), (cx, y + h), (x, cy)]
    if shape == "star":  # 5 points, one pointing up
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for k in range(10) for r, a in [((w / 2, w * 0.21)[k % 2], -math.pi / 2 + k * math.pi / 5)]]
    if shape == "cross":  # a plus sign with arms a third of the side thick
        t = w * 0.17
        return [(cx - t, y), (cx + t, y), (cx + t, cy - t), (x + w, cy - t), (x + w, cy + t), (cx + t, cy + t),
                (cx + t, y + h), (cx - t, y + h), (cx - t, cy + t), (x, cy + t), (x, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape!r}; choose one of {list(SHAPES) + ['circle']}")


def render(scene: dict, image_size: int, noise_seed: int | tuple[int, ...]) -> Image.Image:
    """Draw `scene` at 2x and downsample; background tint, colour jitter and pixel noise come from `noise_seed`."""
    rng = np.random.default_rng(noise_seed)
    big = image_size * SUPERSAMPLE
    jitter = rng.integers(-12, 13, size=(len(scene["objects"]) + 1, 3)).tolist()  # background tint + colour jitter
    img = Image.new("RGB", (big, big), tuple(BACKGROUND + j for j in jitter[0]))
    draw = ImageDraw.Draw(img)
    for obj, jit in zip(scene["objects"], jitter[1:]):
        if obj["colour"] not in COLOURS:
            raise ValueError(f"unknown colour {obj['colour']!r}; choose one of {list(COLOURS)}")
        fill = tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[obj["colour"]], jit))
        x, y, w, h = (v * SUPERSAMPLE for v in obj["bbox"])
        if obj["shape"] == "circle":
            draw.ellipse([x, y, x + w, y + h], fill=fill)
        else:
            draw.polygon(_shape_points(obj["shape"], x, y, w, h), fill=fill)
    pixels = np.asarray(img.reduce(SUPERSAMPLE), dtype=np.int16)  # box-filter downsample = antialiasing
    pixels += rng.integers(-4, 5, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    """JPEG (quality 95, no chroma subsampling so small shapes keep their colour) or PNG bytes."""
    buf = io.BytesIO()
    if fmt not in ("jpg", "png"):
        raise ValueError(f"unknown image format {fmt!r}; choose 'jpg' or 'png'")
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _relation_triples(scene: dict, ident) -> tuple:
    """Relations as sorted (ident(subject), relation, ident(object)), directions normalised to left of / above."""
    objs, out = scene["objects"], []
    for r in scene["relations"]:
        s, rel, o = r["subject"], r["relation"], r["object"]
        if rel in ("right of", "below"):
            s, rel, o = o, INVERSE[rel], s
        out.append((ident(objs[s]), rel, ident(objs[o])))
    return tuple(sorted(out))


def hard_negative_stats(scenes: list[dict]) -> dict[str, float]:
    """Fractions of a batch's samples that have a binding-only, a relation-only or a shape-only negative, or a
    duplicate.

    binding-only: same multisets of colours, sizes and shapes, a different (colour, shape, size) assignment, and the
    same relations between shapes (the colour-swapped family member). relation-only: same objects, different
    relations (the position-swapped member). shape-only: the same scene but for some object's shape (the shape
    twin). duplicate: same objects and same relations."""
    if not scenes:
        raise ValueError("hard_negative_stats needs at least one scene")
    full = [tuple(sorted((o["colour"], o["shape"], o["size"]) for o in s["objects"])) for s in scenes]
    attrs = [tuple(tuple(sorted(o[k] for o in s["objects"])) for k in ("colour", "shape", "size")) for s in scenes]
    rel_full = [_relation_triples(s, lambda o: (o["colour"], o["shape"], o["size"])) for s in scenes]
    rel_shape = [_relation_triples(s, lambda o: o["shape"]) for s in scenes]
    rel_no_shape = [_relation_triples(s, lambda o: (o["colour"], o["size"])) for s in scenes]
    binding_groups, relation_groups, shape_groups = defaultdict(set), defaultdict(set), defaultdict(set)
    for f, a, rf, rs, rn in zip(full, attrs, rel_full, rel_shape, rel_no_shape):
        binding_groups[a, rs].add(f)
        relation_groups[f].add(rf)
        shape_groups[rn].add(rf)
    descriptions = Counter(zip(full, rel_full))
    n = len(scenes)
    return {
        "binding_negative_frac": sum(len(binding_groups[a, rs]) > 1 for a, rs in zip(attrs, rel_shape)) / n,
        "relation_negative_frac": sum(len(relation_groups[f]) > 1 for f in full) / n,
        "shape_negative_frac": sum(len(shape_groups[rn]) > 1 for rn in rel_no_shape) / n,
        "duplicate_frac": sum(descriptions[d] > 1 for d in zip(full, rel_full)) / n,
    }
