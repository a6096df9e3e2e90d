"""Shard specs (folders, brace patterns, URLs, '::' lists) to shard paths; light, so commands need no torch."""

from __future__ import annotations

import glob
import logging
import os

import braceexpand

log = logging.getLogger(__name__)


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


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
