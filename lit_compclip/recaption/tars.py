"""Reading shard tars for recaptioning: samples grouped by key, archives that end early refused, and what an output
shard's KEY.json files record about the job that wrote it."""

from __future__ import annotations

import json
import os
import tarfile
from typing import Callable, Iterator

from lit_compclip.data.shards import tar_ends_whole


class InputError(Exception):
    """A shard that cannot be read to its end."""


def split_name(name: str) -> tuple[str, str] | None:
    """'dir/000001.jpg' -> ('dir/000001', 'jpg'): the key ends at the first dot of the base name, as webdataset's."""
    head, _, base = name.rpartition("/")
    if "." not in base.strip("."):
        return None
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext


def _is_json(info: tarfile.TarInfo) -> bool:
    parts = split_name(info.name)
    return parts is not None and parts[1].lower() == "json"


def read_units(path: str, data: Callable[[tarfile.TarInfo], bool] = lambda info: True
               ) -> Iterator[tuple[str | None, list[tuple[tarfile.TarInfo, bytes]]]]:
    """(key, [(member, bytes)]) per sample (consecutive files with one key), in order; (None, [...]) for a member
    that belongs to no sample (a folder, a name without extension), which is copied through as it is. Only members
    for which `data` holds are read (the others get b""). An archive that stops before its end-of-archive block
    (cut short, or a damaged header that Python's reader would take for the end) raises InputError."""
    try:
        with tarfile.open(path, "r:") as tar:
            key, group = None, []
            for info in tar:
                parts = split_name(info.name) if info.isfile() else None
                if group and (parts is None or parts[0] != key):
                    yield key, group
                    group = []
                content = tar.extractfile(info).read() if info.isfile() and data(info) else b""
                if parts is None:
                    yield None, [(info, content)]
                    continue
                key = parts[0]
                group.append((info, content))
            # tarfile stops quietly at a missing, damaged or zeroed header: only a zero block is a real end
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise InputError(f"{path}: cut short or damaged at byte {tar.offset} (no readable tar header and "
                                 f"no end-of-archive blocks there)")
            if group:
                yield key, group
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise InputError(f"{path}: {type(exn).__name__}: {exn}") from None


def count_samples(path: str) -> int:
    return sum(1 for key, _ in read_units(path, data=lambda info: False) if key is not None)


def check_input(path: str) -> None:
    """What can be known of a shard without reading it through: it opens as a tar and ends as a whole archive
    (shards.tar_ends_whole). ValueError naming it otherwise (a damaged middle is found, and reported, when it is
    read)."""
    try:
        with tarfile.open(path, "r:"):
            pass
        whole = tar_ends_whole(path)
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise ValueError(f"input shard {path!r} is not a readable tar file ({type(exn).__name__}: {exn})") from None
    if not whole:
        raise ValueError(f"input shard {path!r} is cut short: it does not end with a tar's end-of-archive block "
                         f"({os.path.getsize(path)} bytes); copy it again")


def job_identity(provenance: dict) -> tuple:
    """What makes two recaptions the same job's: backend, model, prompt version and the fields that fill it (not the
    time, and not options such as --concurrency that leave the text alone)."""
    return (provenance.get("backend"), provenance.get("model"), provenance.get("prompt_version"),
            tuple(provenance.get("fields") or ()))


def describe(identity: tuple | None) -> str:
    if identity is None:
        return "no recaption_provenance (not written by compclip recaption)"
    backend, model, version, fields = identity
    return f"backend {backend!r}, model {model!r}, prompt {version}, fields {','.join(fields)}"


def output_record(path: str) -> tuple[int, int, set]:
    """(samples, failed, jobs) of an output shard from its KEY.json files alone: failed = samples without a
    `recaption`; jobs = the job_identity of every provenance found (None for a readable KEY.json without one)."""
    samples, failed, jobs = 0, 0, set()
    for key, members in read_units(path, data=_is_json):
        if key is None:
            continue
        samples += 1
        meta = None
        for info, content in members:
            if _is_json(info):
                try:
                    meta = json.loads(content)
                except (ValueError, UnicodeDecodeError):
                    meta = None  # copied as it was: the sample failed, and holds no provenance to compare
        if not isinstance(meta, dict):
            failed += 1
            continue
        failed += "recaption" not in meta
        provenance = meta.get("recaption_provenance")
        jobs.add(job_identity(provenance) if isinstance(provenance, dict) else None)
    return samples, failed, jobs
