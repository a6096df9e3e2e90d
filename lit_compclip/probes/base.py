"""Shared probe plumbing: path and record checks, image loading, and batched once-per-item encoding."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from lit_compclip.errors import first_line
from lit_compclip.registry import suggest


class Encoder(Protocol):
    """All a probe sees of a model: L2-normalised float32 (N, D) CPU embeddings."""

    def encode_image(self, images: list[Image.Image]) -> Tensor: ...

    def encode_text(self, texts: list[str]) -> Tensor: ...


class ImageRef(NamedTuple):
    """One image to encode: a file, an optional (left, top, right, bottom) crop, and the record that named it."""

    path: Path
    box: tuple[float, float, float, float] | None
    record: str  # e.g. "record '17' of /data/swap_att.json", only for error messages


def check_common(name: str, batch_size: int, limit: int | None) -> None:
    """The options every probe takes: batch_size >= 1 and limit None or >= 1."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name} probe: option 'batch_size' must be an integer >= 1; got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name} probe: option 'limit' must be None or an integer >= 1; got {limit!r}")


def check_path(path: str | Path, option: str, name: str, is_dir: bool = False) -> Path:
    """The option's path as a Path, or a one-line FileNotFoundError naming the probe, the option and the path."""
    p = Path(path).expanduser()
    if not (p.is_dir() if is_dir else p.is_file()):
        kind = "directory" if is_dir else "file"
        raise FileNotFoundError(f"{name} probe: option {option!r}: {kind} {str(p)!r} not found")
    return p


def choose_subsets(name: str, subsets: Sequence[str] | None, files: dict[str, Path], option: str) -> dict[str, Path]:
    """subset -> annotation file: every one present when `subsets` is None, else the listed ones, which must exist."""
    if subsets is None:
        chosen = {s: f for s, f in files.items() if f.is_file()}
        if not chosen:
            raise FileNotFoundError(f"{name} probe: option {option!r}: {str(next(iter(files.values())).parent)!r} "
                                    f"holds none of {[f.name for f in files.values()]}")
        return chosen
    subsets = list(subsets)
    for s in subsets:
        if s not in files:
            raise ValueError(f"{name} probe: unknown subset {s!r}{suggest(s, files)}; choose from {list(files)}")
    if not subsets or len(set(subsets)) != len(subsets):
        raise ValueError(f"{name} probe: option 'subsets' must list distinct subsets; got {subsets}")
    return {s: check_path(files[s], option, name) for s in subsets}


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error is a one-line ValueError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line of a JSON-lines file."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({err})") from None
    return rows


def natural_key(key: str) -> tuple:
    """Sort key putting '2' before '10' so `limit` keeps the first records of non-contiguous numeric keys."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key))


def field(record: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    """record[key] checked against `types`; a missing or mistyped field is a one-line ValueError naming `where`."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, expected a JSON object")
    if key not in record:
        raise ValueError(f"{where} lacks field {key!r} (fields present: {sorted(record)})")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ValueError(f"{where} field {key!r} must be {wanted}; got {value!r}")
    return value


class UnreadableImage(ValueError):
    """An image file found but not decodable (cut short, not an image): met only when a probe runs."""


def check_images_exist(refs: Sequence[ImageRef], name: str) -> None:
    """Fail at construction, not after an epoch of training, when an annotated image is missing or empty (a stat
    per file; a file cut short is found only when it is decoded, see load_image)."""
    for ref in refs:
        if not ref.path.is_file():
            raise FileNotFoundError(f"{name} probe: image {str(ref.path)!r} of {ref.record} not found")
        if ref.path.stat().st_size == 0:
            raise ValueError(f"{name} probe: image {str(ref.path)!r} of {ref.record} is empty (0 bytes)")


def load_image(ref: ImageRef) -> Image.Image:
    """Open as RGB and crop to the box; an unreadable file is a one-line UnreadableImage naming it and its record."""
    try:
        with Image.open(ref.path) as im:
            image = im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(ref.path)!r} of {ref.record} not found") from None
    except UnidentifiedImageError:  # its message repeats the path
        raise UnreadableImage(f"image {str(ref.path)!r} of {ref.record} cannot be read (not an image file PIL "
                              f"knows, or cut short before its header ends)") from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as err:  # PIL's ways of saying "cut short"
        raise UnreadableImage(f"image {str(ref.path)!r} of {ref.record} cannot be read ({first_line(err)})") from None
    return image.crop(ref.box) if ref.box is not None else image


def _encode_batches(encode: Callable[[list], Tensor], items: list, batch_size: int, what: str) -> Tensor:
    """Encode `items` batch_size at a time into one float32 CPU (len(items), D) tensor."""
    assert items, "nothing to encode"
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        out = encode(batch)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(batch):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"encoder.{what} returned {shape} for {len(batch)} inputs; expected a (N, D) tensor")
        chunks.append(out.detach().to("cpu", torch.float32))
    return torch.cat(chunks)


def encode_texts(encoder: Encoder, texts: Sequence[str], batch_size: int) -> Tensor:
    """(len(texts), D) embeddings, each distinct string encoded once, in batches of similar length (a batch pads
    to its longest caption; padding is masked, so only the cost changes)."""
    distinct = sorted(dict.fromkeys(texts), key=len)
    with torch.no_grad():
        emb = _encode_batches(encoder.encode_text, distinct, batch_size, "encode_text")
    row = {t: i for i, t in enumerate(distinct)}
    return emb[torch.tensor([row[t] for t in texts])]


def encode_images(encoder: Encoder, refs: Sequence[ImageRef], batch_size: int) -> Tensor:
    """(len(refs), D) embeddings, each distinct (file, crop) loaded and encoded once, batch by batch."""
    first: dict[tuple, ImageRef] = {}
    for r in refs:
        first.setdefault((r.path, r.box), r)  # the first record naming an image is the one errors cite
    distinct = list(first.values())
    with torch.no_grad():
        emb = _encode_batches(lambda batch: encoder.encode_image([load_image(r) for r in batch]),
                              distinct, batch_size, "encode_image")
    row = {(r.path, r.box): i for i, r in enumerate(distinct)}
    return emb[torch.tensor([row[(r.path, r.box)] for r in refs])]


def pair_scores(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two (N, D) embedding tensors -> (N,)."""
    return (a * b).sum(dim=-1)


def choice_record(key: str, ref: ImageRef, captions: Sequence[str], scores: Sequence, correct, **extra) -> dict:
    """One per-example record (see `run(..., records=)`): the true caption first, then its rivals."""
    record = {"id": str(key), "image": str(ref.path)}
    if ref.box is not None:
        record["box"] = list(ref.box)
    record.update(captions=list(captions), scores=[float(s) for s in scores], correct=bool(correct), **extra)
    return record


def truncation_flags(count_truncated, texts: list[str], batch_size: int) -> list[bool]:
    """Whether each text is cut, from one count per batch; only a batch with some but not all cut is counted again
    text by text, so a probe whose captions all fit (or are all cut) costs what the plain count did."""
    flags = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        n = int(count_truncated(batch))
        flags += [n > 0] * len(batch) if n in (0, len(batch)) else [int(count_truncated([t])) > 0 for t in batch]
    return flags
