"""`compclip embed`: embeddings of an image folder, WebDataset shards or a text file, one row per key, from a
checkpoint, a run folder, an export or any encoder `compclip probe --encoder` takes.

Written as numpy .npz, not parquet: numpy alone writes and reads it (no pyarrow to install), and np.load(FILE,
allow_pickle=False) reads it without running any code. It holds `keys` (N, fixed-width unicode), `embeddings` (N x D
float32, rows as the encoder gives them: L2-normalised) and `info` (a JSON string: the model, the input, each key
skipped and why); written beside --out under a hidden name, renamed when whole. An existing --out is never overwritten.

Keys and row order:
  image folder  each file below PATH ending in .jpg, .jpeg, .png or .webp (any case; hidden files and folders left
                out); key: its path relative to PATH, '/' between folders, suffix kept (cats/001.jpg): unique, the
                same whatever else the folder holds, and it names the file. Rows sorted by key.
  shards        a .tar, a folder of .tar files, a brace pattern (data/{00000..00009}.tar) or paths joined by '::';
                key: the sample's __key__, image: its jpg, jpeg, png or webp (the first it has). Rows in shard
                order, then each shard's order; a key met again is skipped (the first is kept).
  text file     one caption per line (UTF-8); key: the line's 0-based number ("0", "1", ...), caption: the line
                without its line ending. Rows in file order.
Skipped, counted, logged and listed (last line, `info`): blank lines, images that cannot be decoded, samples without
an image, shards that cannot be read (of one cut short, the samples before the cut are kept). Exit 0 when written,
2 for a bad input (one line, nothing written), 143 / 130 on SIGTERM / Ctrl-C (nothing written)."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import re
import sys
import time

from lit_compclip.cli_args import Parser, UsageError, check_writable_folder, first_line, log_to_stderr, new_folder
from lit_compclip.errors import BUILD_ERRORS, ConfigError
from lit_compclip.stopping import Stopped, stop_on_signals

log = logging.getLogger(__name__)

USAGE = "compclip embed MODEL (--images PATH | --texts FILE) --out FILE.npz [--batch-size N] [--device DEVICE]"
SPECS = ("compclip:CKPT, open_clip:ARCH@TAG_OR_FILE, open_clip:local-dir:EXPORT, sentence_transformers:EXPORT, "
         "hf:FOLDER_OR_NAME")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # an image folder's files, in any case
SHARD_IMAGES = ("jpg", "jpeg", "png", "webp")  # a shard sample's image: the first of these, as training reads it
PROGRESS_SECONDS = 30.0  # without a terminal (no bar): a progress line this often
LOGGED_SKIPS, LISTED_SKIPS = 20, 5  # skips logged one by one (then counted only); keys per reason in the last line


def parser() -> Parser:
    p = Parser(prog="compclip embed", usage=USAGE, description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a training checkpoint, a run folder or an export folder (loaded in "
                   f"float32, the text cache off), or an encoder spec as `compclip probe --encoder` takes ({SPECS})")
    p.add_argument("--images", metavar="PATH", help="an image folder, or WebDataset shards")
    p.add_argument("--texts", metavar="FILE", help="a text file, one caption per line")
    p.add_argument("--out", metavar="FILE.npz", required=True, help="the .npz file to write (must not exist)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="inputs per forward pass (default: 64)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one, else cpu)")
    return p


class Skips:
    """What was skipped and why (reason -> keys, in order), each logged as it comes (the first LOGGED_SKIPS)."""

    def __init__(self):
        self.keys: dict[str, list[str]] = {}
        self.total = 0

    def add(self, reason: str, key: str, detail: str) -> None:
        self.keys.setdefault(reason, []).append(key)
        self.total += 1
        if self.total <= LOGGED_SKIPS:
            log.warning("skipped %r: %s (%s)", key, reason, detail)
        elif self.total == LOGGED_SKIPS + 1:
            log.warning("further skips are counted only (the last line counts them, the file's info lists them)")

    def summary(self) -> str:
        parts = [f"{reason} {len(k)} ({', '.join(k[:LISTED_SKIPS])}{', ...' if len(k) > LISTED_SKIPS else ''})"
                 for reason, k in self.keys.items()]
        return f"skipped {self.total}: {'; '.join(parts)}" if parts else "nothing skipped"


def image_files(folder: str) -> list[tuple[str, str]]:
    """(key, path) of every image file below `folder`, hidden files and folders left out, sorted by key."""
    def unreadable(e: OSError):
        raise UsageError(f"--images: cannot list folder {e.filename!r} ({e.strerror or type(e).__name__})")

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths = [os.path.join(root, n) for n in files if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
        found += [(os.path.relpath(p, folder).replace(os.sep, "/"), p) for p in paths]
    return sorted(found)


def plan_images(path: str) -> tuple[str, list]:
    """("folder", [(key, file)]) or ("shards", [url]) for --images PATH; a one-line UsageError where it holds none."""
    from lit_compclip.data.shards import expand_shards, is_remote

    if os.path.isdir(path):
        files, tars = image_files(path), [n for n in os.listdir(path) if n.endswith(".tar")]
        if bool(files) == bool(tars):  # which was meant is not ours to guess
            raise UsageError(f"--images {path!r} holds " + ("both image files and .tar shards: name either alone"
                             if files else f"no image file ({', '.join(IMAGE_SUFFIXES)}) and no .tar shard"))
        if files:
            return "folder", files
    elif not is_remote(path) and not any(c in path for c in "{:") and not os.path.exists(path):
        raise UsageError(f"--images {path!r} not found")
    try:
        return "shards", expand_shards(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"--images {path!r}: {first_line(e)}") from None


def decoded(source, key: str, skips: Skips, where: str = ""):
    """The RGB image of a file or bytes, or None where it cannot be decoded (a counted skip)."""
    from PIL import Image

    try:
        with Image.open(source) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:  # PIL's "cut short"
        return skips.add("unreadable_image", key, f"{where}{first_line(e)}")


def shard_images(urls: list[str], skips: Skips):
    """(key, image or None) of each shard sample, read as training reads them (ReadShards counts bad shards)."""
    from lit_compclip.data.skips import SkipLog
    from lit_compclip.data.tars import ReadShards

    class ByShard(SkipLog):  # the reader's skips, counted here with the shard as their key
        def skip(self, reason, url, key, detail):
            skips.add(reason, url, detail)

    seen = set()
    for sample in ReadShards(ByShard("embed")).run({"url": url} for url in urls):
        key, url = sample["__key__"], sample["__url__"]
        ext = next((e for e in SHARD_IMAGES if e in sample), None)
        if ext is None:
            files = sorted(set(sample) - {"__key__", "__url__"})
            skips.add("no_image", key, f"of {url}: no {'/'.join(SHARD_IMAGES)} file; has {files}")
        elif key in seen:
            skips.add("duplicate_key", key, f"of {url}: an earlier sample has this key and is kept")
        else:
            yield key, decoded(io.BytesIO(sample[ext]), key, skips, f"of {url}: ")
        seen.add(key)


def read_texts(path: str) -> list[tuple[str, str | None]]:
    """(line number, caption or None for a blank line) of each line; a one-line UsageError where none is a caption."""
    if not os.path.isfile(path):
        raise UsageError(f"--texts {path!r} {'is not a file' if os.path.exists(path) else 'not found'}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # newline="": a line ends in \n, nothing else
            lines = f.read().split("\n")
    except (UnicodeDecodeError, OSError) as e:
        raise UsageError(f"--texts {path!r} cannot be read as UTF-8 text ({first_line(e)})") from None
    if lines[-1] == "":
        lines.pop()  # what follows the last line's ending
    rows = [(str(i), line.removesuffix("\r") if line.strip() else None) for i, line in enumerate(lines)]
    if all(text is None for _, text in rows):
        raise UsageError(f"--texts {path!r} holds no caption (it is empty, or its lines are blank)")
    return rows


def is_spec(model: str) -> bool:
    """An encoder spec (KIND:TARGET) rather than a path: no such path, and a colon after a bare word."""
    kind, sep, _ = model.partition(":")
    return not os.path.exists(model) and bool(sep) and re.fullmatch(r"\w+", kind) is not None


def check(args: argparse.Namespace) -> tuple[dict, list]:
    """Everything a bad input stops, before the model loads: (what the input is, the image plan or the text rows)."""
    from lit_compclip.encoders import check_device, check_encoder

    if (args.images is None) == (args.texts is None):
        raise UsageError("give --images PATH or --texts FILE, not both: one input per output file" if args.images
                         else f"give --images PATH or --texts FILE; usage: {USAGE}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.out.endswith(".npz"):
        raise UsageError(f"--out {args.out!r} must end in .npz (the format written: see --help)")
    if os.path.lexists(args.out):
        raise UsageError(f"--out {args.out!r} already exists, and an earlier result is never overwritten: remove it "
                         f"or choose another file")
    check_writable_folder(os.path.dirname(os.path.abspath(args.out)), "--out's folder")
    check_device(args.device)
    if args.images is not None:
        form, plan = plan_images(args.images)
        where = os.path.abspath(args.images) if os.path.exists(args.images) else args.images
        source = {"images": where, "form": form, "files" if form == "folder" else "shards": len(plan)}
    else:
        plan = read_texts(args.texts)
        source = {"texts": os.path.abspath(args.texts), "form": "texts", "lines": len(plan)}
    if is_spec(args.model):
        check_encoder(args.model)
    elif not os.path.exists(args.model):
        raise UsageError(f"MODEL {args.model!r} not found (a checkpoint, a run folder or an export folder), and it is "
                         f"no encoder spec KIND:TARGET ({SPECS})")
    return source, plan


def build(model: str, device: str | None):
    """(encoder, info): a spec through lit_compclip.encoders, anything else through lit_compclip.load (float32, eval,
    the text cache off) as a ModuleEncoder: one code path, encode_image(PIL images) and encode_text(captions)."""
    import lit_compclip
    from lit_compclip.encoders import build_encoder, default_device, fp32_on
    from lit_compclip.encoders.compclip import ModuleEncoder

    if is_spec(model):
        encoder = build_encoder(model, device)
        return encoder, encoder.info
    device = device or default_device()
    fp32_on(device)  # float32 as build_encoder's encoders compute it: no TF32
    try:
        m = lit_compclip.load(model, device=device).float()  # a run's float16 frozen text layers too
    except BUILD_ERRORS as e:  # ConfigError is one: its line as it is
        raise e if isinstance(e, ConfigError) else ConfigError(f"MODEL {model!r} cannot be loaded ({first_line(e)})")
    info = {"model": "compclip", "pretrained": os.path.abspath(model), "dtype": "float32", "device": str(device),
            "text_cache": None, "text_tower": type(m.text).__name__, "text_model": getattr(m.text, "model_name", None),
            "context_length": getattr(m.text, "max_seq_len", None), "image_preprocess": str(m.transform)}
    return ModuleEncoder(m), info


def encoded(items, encode, batch_size: int, total: int | None, unit: str):
    """(keys, N x D float32 array) of the (key, input) items whose input is not None, batch_size per `encode` call;
    a tqdm bar on stderr when it is a terminal, else a log line every PROGRESS_SECONDS."""
    import numpy as np
    import torch
    from tqdm import tqdm

    keys, chunks, batch, done, start = [], [], [], 0, time.monotonic()
    last = start
    with tqdm(total=total, unit=unit, desc="embed", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for key, x in itertools.chain(items, [(None, None)]):  # a last, empty item: the last batch
            batch += [(key, x)] if x is not None else []
            n = int(x is None and key is not None)  # a skipped input is done too
            if batch and (len(batch) == batch_size or key is None):
                with torch.no_grad():
                    out = encode([x for _, x in batch])
                chunks.append(out.detach().to("cpu", torch.float32).numpy())
                keys += [k for k, _ in batch]
                n, batch = n + len(batch), []
            done += n
            bar.update(n)
            if bar.disable and n and time.monotonic() - last >= PROGRESS_SECONDS:
                last, seconds = time.monotonic(), time.monotonic() - start
                log.info("%d%s %ss in %.0f s (%.1f/s)", done, "" if total is None else f"/{total}", unit, seconds,
                         done / max(seconds, 1e-9))
    return keys, (np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32))


def write(out: str, keys: list[str], embeddings, info: dict) -> None:
    """The npz written under a hidden name beside `out`, then renamed to it; nothing is left where this fails."""
    import numpy as np

    folder, name = os.path.split(os.path.abspath(out))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:  # the umask's mode
            np.savez(f, keys=np.array(keys, dtype=np.str_), embeddings=embeddings,
                     info=np.array(json.dumps(info, default=str)))
        os.replace(tmp, out)
    except OSError as e:  # a full disk, a folder that became unwritable
        raise ConfigError(f"cannot write {out!r} ({e.strerror or type(e).__name__}); nothing was written") from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def embed(args: argparse.Namespace) -> dict:
    """The checks, the model, the embeddings, the file; returns what the last line reports."""
    start, skips = time.perf_counter(), Skips()
    source, plan = check(args)
    form, unit = source["form"], "caption" if source["form"] == "texts" else "image"
    if form == "texts":  # a blank line is a skipped input
        items = ((k, t if t is not None else skips.add("blank_line", k, "a blank line")) for k, t in plan)
    elif form == "folder":
        items = ((k, decoded(path, k, skips)) for k, path in plan)
    else:
        items = shard_images(plan, skips)
    # From here SIGTERM and Ctrl-C stop it wherever it is (loading, reading a shard), leaving nothing behind
    with stop_on_signals() as signals:
        try:
            encoder, info = build(args.model, args.device)
            with new_folder(os.path.dirname(os.path.abspath(args.out))):  # made if missing, removed if this fails
                encode = encoder.encode_text if form == "texts" else encoder.encode_image
                keys, embeddings = encoded(items, encode, args.batch_size, None if form == "shards" else len(plan),
                                           unit)
                if not keys:
                    raise ConfigError(f"no {unit} could be read ({skips.summary()}); nothing was written")
                write(args.out, keys, embeddings, {"encoder": info, "input": source, "count": len(keys),
                                                   "dim": int(embeddings.shape[1]), "skipped": skips.keys})
        except BaseException:
            if signals.received is None:
                raise
            stopped = Stopped(signals.received)
            print(f"compclip embed: stopped by {stopped.name}; nothing was written to {args.out}", file=sys.stderr,
                  flush=True)
            raise stopped from None
    return {"out": args.out, "count": len(keys), "dim": int(embeddings.shape[1]), "unit": unit,
            "skipped": skips.keys, "summary": skips.summary(), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when written, 2 for a bad input (one line on stderr, nothing written); a stop signal exits 128 + it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except UsageError as e:
        print(f"compclip embed: error: {first_line(e, 1000)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bar among the progress lines
    log_to_stderr()
    try:
        r = embed(args)
    except (ConfigError, UsageError) as e:
        print(f"compclip embed: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    print(f"{r['count']} {r['unit']}s -> {r['out']} ({r['count']} x {r['dim']} float32, with keys and info) in "
          f"{r['seconds']:.1f} s; {r['summary']}")
    return 0
