"""Shard specs (folders, brace patterns, URLs, '::' lists) to shard paths; light, so commands need no torch."""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from collections import Counter

import braceexpand

log = logging.getLogger(__name__)


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def tar_ends_whole(path: str) -> bool:
    """Whether the local tar `path` ends as a whole archive does: in whole 512-byte blocks, the last of them zeros (the
    end-of-archive marker; POSIX writes two, and one is where every reader stops). A copy cut short lacks it, and
    Python's reader would take the cut for the archive's end. OSError where the file cannot be read."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - tarfile.BLOCKSIZE))
        return size > 0 and size % tarfile.BLOCKSIZE == 0 and f.read() == tarfile.NUL * tarfile.BLOCKSIZE


def expand_shards(spec: str) -> list[str]:
    """Shard URLs of `spec`: directories (their *.tar, sorted), brace patterns, paths or URLs, joined with '::'."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"shard spec {spec!r} is empty; give a directory, a brace pattern or paths joined with '::'")
    urls = []
    for part in spec.split("::"):
        part = os.path.expanduser(part.strip())
        if not is_remote(part) and os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(glob.escape(part), "*.tar")))
            if not found:
                raise FileNotFoundError(f"shard spec {part!r}: directory holds no *.tar file")
            urls.extend(found)
            continue
        expanded = list(braceexpand.braceexpand(part))
        if not is_remote(part):
            missing = [u for u in expanded if not os.path.isfile(u)]
            if len(missing) == len(expanded):
                raise FileNotFoundError(f"shard spec {part!r} matches no file")
            if missing:  # kept: they are logged and counted as unreadable shards each pass
                log.warning("shard spec %r: %d of %d shards missing, e.g. %s", part, len(missing), len(expanded),
                            missing[0])
        urls.extend(expanded)
    return urls


def _text(value) -> bool:
    """Whether a field value holds a caption: a non-blank string, or a list with one."""
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and v.strip() for v in items)


def sample_fields(spec: str, samples: int = 64, max_shards: int = 16) -> tuple[Counter, int] | None:
    """(field -> how many of the first `samples` samples of the local shards of `spec` hold text in it, samples
    read): `txt` for KEY.txt, any other name for a KEY.json field, as data.caption_fields names them. None where
    nothing can be read here (missing or remote shards: the run's own checks and loader say why)."""
    try:
        urls = expand_shards(spec)
    except (OSError, ValueError):
        return None
    fields, seen = Counter(), 0
    for url in urls[:max_shards]:
        if is_remote(url) or not os.path.isfile(url):
            continue
        members: dict[tuple, dict[str, bytes]] = {}
        try:
            with tarfile.open(url, "r|*") as tar:
                for info in tar:
                    folder, _, base = info.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not (info.isreg() and dot):
                        continue
                    key = (folder, stem)  # webdataset's sample: the path up to the file name's first '.'
                    if key not in members and len(members) == samples - seen:
                        break
                    members.setdefault(key, {})[ext.lower()] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError):
            pass  # a shard cut short or unreadable: what came before counts, the loader says the rest
        for files in members.values():
            present = set()
            if _text(files.get("txt", b"").decode("utf-8", "replace")):
                present.add("txt")
            try:
                meta = json.loads(files.get("json", b"{}"))
            except ValueError:
                meta = {}
            if isinstance(meta, dict):
                present |= {name for name, value in meta.items() if _text(value)}
            fields.update(present)
        seen += len(members)
        if seen >= samples:
            break
    return (fields, seen) if seen else None
