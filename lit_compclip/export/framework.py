"""The checked export: the format's refusals before anything is written, a temporary folder, the model card, the
folder loaded back the way its target library loads it and compared with the model on a few images and captions,
then the rename; nothing is left when any step fails or a signal stops it."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from typing import Any

from lit_compclip.errors import ConfigError, first_line

FORMATS = {"native": "lit_compclip.export.native", "open_clip": "lit_compclip.export.open_clip",
           "sentence_transformers": "lit_compclip.export.sentence_transformers"}

# A few captions the check encodes: short, long (past a small tower's context), punctuation, an abbreviation,
# capitals, digits and an accent (a tokenizer that cleans or lowercases text otherwise shows here).
CHECK_TEXTS = [
    "a red square",
    "A small blue circle to the left of a large green triangle, above a yellow star and below a purple cross; "
    "the background is grey, the shapes do not touch, and a white diamond sits in the lower right corner of the "
    "picture, next to two orange hexagons that are partly hidden behind a black rectangle.",
    "Two cats & a dog: \"on the mat\" (or not?) -- 3 pets!",
    "Dr. Smith's U.S.A. photo, e.g. a café at 5 p.m.",
]


def check_images():
    """A few deterministic RGB PIL images: sizes square, wide, tall and tiny; flat colours, shapes and noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    images = []
    for size, colour in (((64, 64), (220, 30, 30)), ((97, 41), (20, 160, 60)), ((30, 80), (250, 250, 250)),
                         ((7, 9), (0, 0, 0))):
        image = Image.new("RGB", size, colour)
        ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(30, 60, 230))
        images.append(image)
    noise = np.random.default_rng(0).integers(0, 256, size=(48, 56, 3), dtype=np.uint8)  # (H, W, C)
    images.append(Image.fromarray(noise, "RGB"))
    return images


class ModelEncoder:
    """A CompClipModel as the check's encoder: PIL images through its own eval transform, captions as they are."""

    def __init__(self, model):
        self.model = model

    def encode_images(self, images):
        import torch

        with torch.no_grad():
            batch = torch.stack([self.model.transform(image) for image in images]).to(self.model.device)
            return self.model.encode_image(batch).float().cpu()

    def encode_texts(self, texts):
        import torch

        with torch.no_grad():
            return self.model.encode_text(list(texts)).float().cpu()


def row_error(got, want) -> float:
    """The largest ||got_i - want_i|| / ||want_i|| over rows (inf for a shape mismatch, NaN propagated as inf)."""
    import torch

    got, want = torch.as_tensor(got).detach().double().cpu(), torch.as_tensor(want).detach().double().cpu()
    if got.shape != want.shape:
        return float("inf")
    errors = (got - want).norm(dim=-1) / want.norm(dim=-1).clamp(min=1e-30)
    worst = float(errors.max()) if len(errors) else 0.0
    return worst if worst == worst else float("inf")  # NaN: no match


def compare(encoder, reference, tolerance: float, fmt: str) -> tuple[float, float]:
    """(image error, text error) of `encoder` against `reference` (both ModelEncoder-like) on CHECK_IMAGES and
    CHECK_TEXTS; a one-line ConfigError naming the format and the side when either exceeds `tolerance`."""
    images = check_images()
    errors = {}
    for side, encode, inputs in (("image", "encode_images", images), ("text", "encode_texts", CHECK_TEXTS)):
        errors[side] = row_error(getattr(encoder, encode)(inputs), getattr(reference, encode)(inputs))
        if not errors[side] <= tolerance:
            raise ConfigError(f"the {fmt} export gives other {side} embeddings than the model: relative error "
                              f"{errors[side]:.3g} > {tolerance:g} (nothing was written)")
    return errors["image"], errors["text"]


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path!r} cannot be read ({first_line(e)})") from None


def source_info(source: str) -> dict:
    """What the model card needs of a checkpoint, run folder or native export `source`: {source, checkpoint (the
    .ckpt's absolute path; None for an export), run_dir (the run folder or None), config (its config.yaml), probes
    (its final probes.json), data_skips (data_skips.json): each None when absent; model_config: the model section
    as the checkpoint (or export) holds it}."""
    from lit_compclip.checkpoints import checkpoint_file, read_checkpoint_file
    from lit_compclip.factory import is_native_folder, native_config

    info: dict[str, Any] = {"source": source, "checkpoint": None, "run_dir": None, "config": None, "probes": None,
                            "data_skips": None}
    if is_native_folder(str(source)):
        info["model_config"] = native_config(str(source))
        return info
    ckpt = os.path.abspath(checkpoint_file(str(source)))
    info["checkpoint"] = ckpt
    # mapped, not read: only the small config is wanted (the weights were checked when the model was loaded)
    info["model_config"] = dict(read_checkpoint_file(ckpt, mmap=True)["hyper_parameters"]["model"])
    folder = os.path.dirname(os.path.dirname(ckpt))  # <run>/checkpoints/last.ckpt
    if os.path.basename(os.path.dirname(ckpt)) == "checkpoints" and os.path.isfile(os.path.join(folder, "config.yaml")):
        import yaml

        info["run_dir"] = folder
        try:
            with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as f:
                info["config"] = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{os.path.join(folder, 'config.yaml')!r} cannot be read ({first_line(e)})") from None
        for key, name in (("probes", "probes.json"), ("data_skips", "data_skips.json")):
            if os.path.isfile(os.path.join(folder, name)):
                info[key] = _read_json(os.path.join(folder, name))
    return info


def format_module(fmt: str, options: dict):
    """The module of format `fmt`, its options checked: one line naming the choices otherwise."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    module = importlib.import_module(FORMATS[fmt])
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        takes = ", ".join(module.OPTIONS) or "none"
        raise ConfigError(f"the {fmt} format takes no option {unknown[0]!r} (its options: {takes})")
    return module


def check_out(out: str) -> str:
    """`out` as an absolute path: it must not exist, and its parent must be a folder we can write in."""
    from lit_compclip.cli_args import check_writable_folder

    path = os.path.abspath(os.path.expanduser(str(out)))
    if os.path.lexists(path):
        raise ConfigError(f"output {str(out)!r} exists: an export goes into a new folder")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"output {str(out)!r}: its parent folder {parent!r} does not exist")
    check_writable_folder(parent, "the output's parent folder", ConfigError)
    return path


def readable(folder: str) -> None:
    """Modes as the user's umask gives new files: mkdtemp makes its folder private, and some writers (safetensors)
    their files too, which an export meant to be shared must not be."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def export_model(source: str, out: str, fmt: str = "native", **options) -> dict:
    """The model of `source` (a checkpoint, run folder or native export) written to the new folder `out` in format
    `fmt` with its model card, loaded back and checked; {out, format, image_error, text_error}. Every bad input is a
    one-line ConfigError before anything is written; a failed check, an error or a stop signal on the way leaves
    nothing (the folder is built beside `out` and renamed at the end)."""
    path = check_out(out)
    module = format_module(fmt, options)
    import torch

    from lit_compclip.export.card import model_card
    from lit_compclip.factory import load
    from lit_compclip.stopping import held_signals

    model = load(str(source))  # eval, float32 as saved, no text cache (an export never has one)
    info = source_info(str(source))
    info["parameters"] = {"image": sum(p.numel() for p in model.image.parameters()),
                          "text": sum(p.numel() for p in model.text.parameters())}
    info["text_context"] = getattr(model.text, "max_seq_len", None)  # tokens; the tower's own default if unset
    module.check(model, options)
    name = os.path.basename(path)
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=os.path.dirname(path))
    try:
        notes = module.write(model, tmp, info, options)
        card = model_card(info, fmt, notes)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        with torch.no_grad():
            image_error, text_error = compare(module.load_back(tmp), ModelEncoder(model), module.TOLERANCE, fmt)
        readable(tmp)
        os.rename(tmp, path)
    except BaseException:
        with held_signals():  # a second signal must not cut the clean-up short
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": path, "format": fmt, "image_error": image_error, "text_error": text_error}
