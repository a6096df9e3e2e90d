"""Which shards a recaption run reads and where it writes: INPUT_SHARDS specs expanded to local shards and checked,
split among the workers of a job array, and OUTPUT_DIR checked before any backend is built."""

from __future__ import annotations

import os
from collections import Counter

from lit_compclip.cli_args import check_writable_folder
from lit_compclip.data.shards import expand_shards, is_remote


def input_shards(spec: str) -> list[str]:
    """Local shard paths of `spec` (the specs training reads, see lit_compclip.data.shards), stricter: remote URLs are
    refused (members are read and written with `tarfile`) and so is any missing shard."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"input shard spec {spec!r} is empty; give a folder, a brace pattern or paths joined with '::'")
    for part in spec.split("::"):
        if is_remote(part.strip()):
            raise ValueError(f"input shard spec {part!r} is remote; recaption reads local shards (copy them first)")
    paths = expand_shards(spec)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # training tolerates (and counts) missing shards; a recaption run must not skip any
        raise FileNotFoundError(f"input shard spec {spec!r}: {len(missing)} of {len(paths)} shard(s) missing, "
                                f"e.g. {missing[0]!r}")
    names = Counter(os.path.basename(p) for p in paths)
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        raise ValueError(f"input shards share the file name {twice[0]!r}; output shards keep input names, so each "
                         f"name must be unique")
    return paths


def worker_shards(paths: list[str], shard_index: int, num_shards: int) -> list[str]:
    """Shard j goes to worker j % num_shards: a job array splits the work with no coordination."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= --shard-index < --num-shards, got --shard-index {shard_index} "
                         f"--num-shards {num_shards}")
    return paths[shard_index::num_shards]


def gather_inputs(specs: list[str]) -> tuple[list[str], list[str]]:
    """(local shard paths of every INPUT_SHARDS spec (each '::' part expanded by input_shards), in order,
    each once; the paths that repeated one)."""
    paths, seen, repeats = [], set(), []
    for spec in specs:
        for part in spec.split("::"):
            for path in input_shards(part):
                real = os.path.realpath(path)
                if real in seen:
                    repeats.append(path)
                    continue
                seen.add(real)
                paths.append(path)
    names = Counter(os.path.basename(p) for p in paths)
    twice = [n for n, c in names.items() if c > 1]
    if twice:  # as input_shards says for one spec
        raise ValueError(f"input shards share the file name {twice[0]!r}; output shards keep input names, so each "
                         f"name must be unique")
    return paths, repeats


def check_output(out_dir: str, shards: list[str]) -> None:
    """Refuse an OUTPUT_DIR that is a file, an input folder, beneath a file or not writable, before any backend is
    built (the folder itself is made only when the first shard is written)."""
    if out_dir.endswith(".tar") and not os.path.isdir(out_dir):  # a glob swallowed OUTPUT_DIR, or a typo
        what = "an existing .tar file" if os.path.exists(out_dir) else "a name ending in .tar"
        raise ValueError(f"OUTPUT_DIR {out_dir!r} is {what}, not a folder; give the output folder as the last "
                         f"argument, after the input shards")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"OUTPUT_DIR {out_dir!r} is a file, not a folder")
    out_real = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(s)) == out_real for s in shards):  # run() says it too, after the build
        raise ValueError(f"output folder {out_dir!r} holds input shards; write the recaptioned shards elsewhere")
    check_writable_folder(out_dir, "OUTPUT_DIR", ValueError)
