"""Reading a shard's tar members, telling a shard cut short from a whole one, and the stream stage that reads shards
into raw samples (a shard that cannot be read, or ends early, is a counted skip).

Python's tar reader takes a file that ends where a member header should begin (or inside one) for the end of the
archive, so a truncated shard would read as a shorter one without a word. A whole tar ends with zero blocks: here a
shard that ends without one is a `CutShard`, whose members read so far still count."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Iterator

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from lit_compclip.data.shards import tar_ends_whole
from lit_compclip.data.skips import SkipLog, describe

BLOCK = tarfile.BLOCKSIZE
END = tarfile.NUL * BLOCK  # what a whole tar holds where a member header would come next
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own files in a shard (e.g. __index__), never sample files


class CutShard(Exception):
    """The shard ends before its end-of-archive blocks: it was cut short (an interrupted copy or download)."""


class _Watched:
    """A stream's stand-in that remembers what its last read returned and whether a read came back short (the end)."""

    def __init__(self, inner):
        self.inner, self.last, self.ended = inner, None, False

    def read(self, *size):
        data = self.inner.read(*size)
        self.last = data
        self.ended |= bool(size) and size[0] is not None and 0 <= len(data) < size[0]
        return data

    def __getattr__(self, name):  # seek, tell, close: what tarfile asks of its file object
        return getattr(self.inner, name)


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of the (possibly compressed) tar `stream`, in order; raises CutShard where
    the stream ends before the archive does, tarfile.ReadError where a header in the middle is not one."""
    raw = _Watched(stream)
    try:
        tar = tarfile.open(fileobj=raw, mode="r|*")
    except (tarfile.ReadError, EOFError) as exn:
        if raw.ended or isinstance(exn, EOFError):  # no first header: an empty file, or shorter than one block
            raise CutShard("the file ends before its first member header") from None
        raise
    # the decompressed stream, as the reader reads it: its last read is the block where the archive ended
    blocks = tar.fileobj = _Watched(tar.fileobj)
    info = None
    try:
        for info in tar:
            if info.isreg():
                yield info.name, tar.extractfile(info).read()
            tar.members = []  # a shard may hold millions of members: keep none of them
    except (tarfile.ReadError, EOFError) as exn:
        if blocks.ended or raw.ended or isinstance(exn, EOFError):
            where = f"inside member {info.name!r}" if info is not None else "inside its first member"
            raise CutShard(f"the file ends {where}") from None
        raise
    if blocks.last is None or blocks.last == END:  # no member at all, or a zero block where a header would be
        return
    if len(blocks.last) < BLOCK:
        raise CutShard(f"the file ends at byte {tar.offset + len(blocks.last)}, where a member header or the "
                       f"end-of-archive blocks should be")
    raise tarfile.ReadError(f"no tar header at byte {tar.offset}: the rest of the shard cannot be read")


def listed_samples(url: str) -> int | None:
    """How many samples img2dataset wrote into the local shard `url`: `successes` in the `{shard}_stats.json` beside
    it (img2dataset's record of each shard); None where there is none."""
    stem = url[:-len(".tar")] if url.endswith(".tar") else None
    if stem is None or not os.path.isfile(f"{stem}_stats.json"):
        return None
    try:
        with open(f"{stem}_stats.json") as f:
            successes = json.load(f).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return successes if isinstance(successes, int) and not isinstance(successes, bool) else None


def readable_keys(path: str) -> set[str] | None:
    """The samples of the local tar `path` with a member that lies whole before where the file ends (headers only
    read); None where `path` is not an uncompressed tar (its first block is no tar header)."""
    size, keys = os.path.getsize(path), set()
    if size < BLOCK:
        return keys
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError:
        return None
    with tar:
        try:
            for info in tar:
                if info.isreg() and info.offset_data + info.size <= size:
                    keys.add(base_plus_ext(info.name)[0])
        except tarfile.TarError:
            pass  # the reader stops where the file does: what came before counts
    keys.discard(None)  # a name without a suffix is no sample
    return keys


def cut_shards(urls: list[str]) -> list[dict]:
    """The local uncompressed shards among `urls` that were cut short (a whole tar is whole blocks, the last one
    zeros), each with the samples that can still be read from it and, where its img2dataset `_stats.json` tells,
    how many it held. Remote and compressed shards are left to the loader workers, which tell a cut one as they
    read it."""
    found = []
    for url in urls:
        try:
            if not os.path.isfile(url):
                continue
            if tar_ends_whole(url):
                continue
            keys = readable_keys(url)
        except OSError:
            continue  # an unreadable shard: the workers count it as such
        if keys is None:
            continue
        listed = listed_samples(url)
        found.append({"shard": url, "samples_read": len(keys), "samples_listed": listed,
                      "samples_lost": None if listed is None else max(0, listed - len(keys))})
    return found


class ReadShards(wds.PipelineStage):
    """{url} -> raw samples; a shard that fails to open or read is counted, not fatal, and so is one cut short (which
    Python's tar reader would take for a shorter shard): what was read before the cut or the failure stays.
    `usable` (training.passes.UsableWatch) follows a resampled stream's reads."""

    def __init__(self, skips: SkipLog, usable=None):
        self.skips, self.usable = skips, usable

    def files(self, url: str):
        keys = set()
        try:
            stream = wds.gopen(url)
            try:
                for name, data in tar_members(stream):
                    if not _META.match(name):
                        keys.add(wds.tariterators.base_plus_ext(name)[0])
                        yield {"fname": name, "data": data, "__url__": url}
            finally:
                with contextlib.suppress(Exception):  # a pipe's exit status after its tar was read is no loss
                    stream.close()
        except CutShard as exn:
            listed, read = listed_samples(url), len(keys - {None})
            lost = (f"{listed - read} lost of the {listed} its _stats.json lists" if listed is not None and listed >= read
                    else "how many were lost is unknown (no img2dataset _stats.json beside it)")
            self.skips.skip("truncated_shard", url, None, f"cut short: {exn}; {read} samples read, {lost}")
        except Exception as exn:  # missing or unreadable
            self.skips.skip("unreadable_shard", url, None, describe(exn))
        yield {}  # webdataset's end-of-shard marker flushes the sample read so far instead of losing it

    def run(self, src):
        for shard in src:
            read = self.usable.start(shard["url"]) if self.usable is not None else None
            try:
                for sample in wds.tariterators.group_by_keys(self.files(shard["url"])):
                    if read is not None:
                        self.usable.add(read, sample)
                    yield sample
            except Exception as exn:  # e.g. a duplicate file name inside the tar
                self.skips.skip("unreadable_shard", shard["url"], None, describe(exn))
            finally:
                if read is not None:
                    self.usable.end(read)
