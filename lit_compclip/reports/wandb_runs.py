"""W&B without Lightning: whether a run would sync online (`wandb.mode=auto`), and the history rows an offline run's
.wandb file holds (read for the notebooks' curves)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path


def has_wandb_key() -> bool:
    netrc = os.path.expanduser("~/.netrc")
    return bool(os.environ.get("WANDB_API_KEY") or (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()))


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_wandb_key() else "offline"


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: a LevelDB-style log (7-byte ':W&B' header, 32 KiB blocks of chunks, each
    with crc32, length and type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    raw, block = path.read_bytes(), 32768
    if raw[:4] != b":W&B":
        raise ValueError(f"{str(path)!r} is not a W&B run file (no ':W&B' header)")
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # too little room left for a chunk header: the block is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data = raw[pos + 7:pos + 7 + length]
        if kind == 0 or len(data) < length or zlib.crc32(data, zlib.crc32(bytes([kind]))) != crc:
            break  # padding, or the torn tail of a run still writing
        pos += 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            records.append(pending)
    return records


def history_points(path: Path):
    """(key, step, value) of each history row of a .wandb file, step = trainer/global_step (as in metrics.csv), else
    W&B's own _step."""
    from wandb.proto import wandb_internal_pb2 as pb  # the SDK's record schema; the framing is read above

    for data in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            step = row.get("trainer/global_step", row.get("_step"))
            yield from ((k, step, v) for k, v in row.items() if not k.startswith("_"))
