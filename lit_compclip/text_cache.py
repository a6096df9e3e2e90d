"""Frozen text-tower prefixes computed once: per-caption hidden states in a size-bounded on-disk cache.

With all but the last N layers of a pretrained text tower frozen (and in eval mode), their output for a caption never
changes, so it is computed once and read back in every later epoch, run and process (LLM2CLIP caches the final
embedding of a fully frozen tower the same way). Entries are keyed by the caption's token ids, so a different
tokenizer or truncation length can never hit a wrong entry; a namespace per (model, frozen weights, depth, dtype)
keeps different towers apart. Storage is diskcache (SQLite + files): process-safe, with an eviction budget. Each row
carries a checksum, so a damaged entry (a flipped byte, a truncated value) is counted, logged and recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "float16": np.float16}
FORMAT = "v2"  # a row's bytes then its checksum; entries of another format live in another folder
CHECKSUM_BYTES = 8
PAGE = 4096  # SQLite's page size


def checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).digest()


class DamagedEntry(ValueError):
    """A stored row whose checksum or length does not match: it is recomputed."""


def check_options(budget_gb: float, dtype: str) -> None:
    """The cache's size budget and storage type, as the text tower's options name them."""
    if not budget_gb > 0:
        raise ValueError(f"model.text.cache_budget_gb={budget_gb!r}: must be > 0")
    if dtype not in DTYPES:
        raise ValueError(f"model.text.cache_dtype={dtype!r}: choose one of {sorted(DTYPES)}")


def fingerprint(tensors: list[torch.Tensor], *extra: object) -> str:
    """A short hash of some tensors' values and of `extra` (names, depths): the namespace of a cache."""
    h = hashlib.sha1(repr(extra).encode())
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def token_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
    """One key per row: the row's real (unpadded) token ids as int32 bytes - exact, no hash collisions."""
    ids = input_ids.to("cpu", torch.int32)
    mask = attention_mask.to("cpu").bool()
    return [row[m].numpy().tobytes() for row, m in zip(ids, mask)]


class PrefixCache:
    """Token-keyed tensors on disk. `get` returns (hits, missing rows); `put` stores rows; hit counts are kept."""

    def __init__(self, directory: str, namespace: str, budget_gb: float, dtype: str = "float32"):
        check_options(budget_gb, dtype)
        self.path, self.budget_gb = os.path.join(directory, f"{namespace}-{FORMAT}"), budget_gb
        try:
            self.store = self._open()
        except Exception as e:  # unwritable folder, a file in the way, a corrupt database
            raise ValueError(f"cannot open the text cache at {self.path!r} ({type(e).__name__}: {e}); set "
                             f"model.text.cache_dir to a writable folder or to null") from None
        self.dtype = DTYPES[dtype]
        self.hits = self.misses = 0
        self.errors = 0

    def _open(self):
        import diskcache

        class BytesOnly(diskcache.Disk):
            """Reads back raw bytes only: diskcache unpickles a row stored in its pickle mode, and a shared or
            tampered cache folder must never run code (such a row is a damaged entry: recomputed)."""

            def fetch(self, mode, filename, value, read):
                if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):  # bytes in the row or a file
                    raise DamagedEntry(f"a row stored in diskcache mode {mode}, not raw bytes")
                return super().fetch(mode, filename, value, read)

        # Values live in SQLite up to 4 MB (one row per caption, no file per entry); evict the oldest-stored entries
        # beyond the budget, which (unlike LRU) needs no write on a read. The budget counts the database only, so
        # its write-ahead log is checkpointed and cut back at 1/16 of the budget (SQLite's 4 MB default at most).
        limit = int(self.budget_gb * 2 ** 30)
        wal_pages = max(16, min(1000, limit // PAGE // 16))
        return diskcache.Cache(self.path, size_limit=limit, disk_min_file_size=2 ** 22,
                               eviction_policy="least-recently-stored", sqlite_wal_autocheckpoint=wal_pages,
                               sqlite_journal_size_limit=wal_pages * PAGE, disk=BytesOnly)

    def get(self, keys: list[bytes], width: int) -> tuple[dict[int, torch.Tensor], list[int]]:
        """({row: (n_tokens, width) or (width,) tensor} for the cached rows, [rows to compute])."""
        found, missing = {}, []
        for i, key in enumerate(keys):
            try:
                raw = self.store.get(key)
                if raw is not None:
                    found[i] = self._decode(raw, width)
                    continue
            except Exception as e:  # a damaged entry or database costs a recompute, never the run
                self._error("read", e)
            missing.append(i)
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing

    def _decode(self, raw: bytes, width: int) -> torch.Tensor:
        data, tag = raw[:-CHECKSUM_BYTES], raw[-CHECKSUM_BYTES:]
        row_bytes = width * np.dtype(self.dtype).itemsize
        if len(raw) <= CHECKSUM_BYTES or len(data) % row_bytes or checksum(data) != tag:
            raise DamagedEntry(f"damaged entry ({len(raw)} bytes, checksum or length wrong)")
        return torch.from_numpy(np.frombuffer(data, dtype=self.dtype).reshape(-1, width).astype(np.float32))

    def round(self, t: torch.Tensor) -> torch.Tensor:
        """`t` exactly as `get` will return it: rounded to the stored dtype, then a float32 CPU tensor (a bf16 row of
        an autocast forward on a GPU included), so a fresh row equals its later cached copy and a batch's rows,
        fresh or read, join on one device."""
        stored = torch.float16 if self.dtype is np.float16 else torch.float32
        return t.detach().to(stored).to("cpu", torch.float32)

    def put(self, keys: list[bytes], values: list[torch.Tensor]) -> None:
        # through float32 (numpy has no bfloat16); no second copy when the cache keeps float32
        rows = [value.detach().to("cpu", torch.float32).numpy().astype(self.dtype, copy=False).tobytes()
                for value in values]
        rows = [row + checksum(row) for row in rows]
        try:
            with self.store.transact():  # one SQLite transaction per batch: half the time of one per caption
                for key, row in zip(keys, rows):
                    self.store.set(key, row)
        except Exception as e:  # a full disk: train on without caching (counted and logged)
            self._error("write", e)

    def _error(self, what: str, e: Exception) -> None:
        self.errors += 1
        if self.errors <= 3:
            log.warning("text cache %s failed at %s (%s: %s); recomputing (errors so far: %d)",
                        what, self.path, type(e).__name__, e, self.errors)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def size_bytes(self) -> int:
        return int(self.store.volume())

    def __getstate__(self):  # a module holding the cache may be pickled (DDP spawn, checkpoints of the tower)
        state = dict(self.__dict__)
        state["store"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.store = self._open()
