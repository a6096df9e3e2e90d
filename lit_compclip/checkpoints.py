"""Reads and checks checkpoint files for every path (lit_compclip.load, probe, init_from, resume, explore): nothing in
them can run code."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import zipfile
from typing import Any

from lit_compclip.errors import first_line
from lit_compclip.errors import ConfigError

TRAINING_KEYS = ("state_dict", "hyper_parameters", "loops", "optimizer_states", "global_step")
# What this project's checkpoints hold needs nothing beyond torch's own weights-only set (tensors, storages,
# OrderedDict, plain Python values): every callback and hook saves plain state (RandomState: tensors and tuples).
SAFE_GLOBALS: list = []


@contextlib.contextmanager
def _only_our_globals():
    """torch.load(weights_only=True) sees torch's defaults and SAFE_GLOBALS only: libraries add their own globals to
    the process-wide list on import (torch.distributed adds every exception class), which must not widen the check."""
    import torch.serialization as ts

    added = ts.get_safe_globals()
    ts.clear_safe_globals()
    ts.add_safe_globals(SAFE_GLOBALS)
    try:
        yield
    finally:
        ts.clear_safe_globals()
        ts.add_safe_globals(added)


def _global_named(e: Exception) -> str | None:
    """The global a refused pickle asks for, as torch's (or our) UnpicklingError names it; None if none is named."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    return found.group(1) if found else None


def _why(e: BaseException) -> str:
    """'Type: first sentence of its message', or the type alone when the message is empty (EOFError of a cut file)."""
    if not str(e).strip():
        return type(e).__name__
    sentence = re.split(r"(?<=[.;])\s", first_line(e, 160))[0]
    return f"{type(e).__name__}: {sentence.rstrip('.;')}"


def _refusal(path: str, e: Exception) -> ConfigError:
    """One line naming the file and the global its pickle asks for; else one saying the file cannot be read."""
    name = _global_named(e)
    if name is None:  # an opcode the weights-only reader does not know: damaged, or not a torch file
        detail = pickle.UnpicklingError(str(e).split("WeightsUnpickler error:", 1)[-1])
        return ConfigError(f"checkpoint {path!r} cannot be read ({_why(detail)})")
    return ConfigError(f"checkpoint {path!r} is refused: it needs the global {name} to load, which could run code; "
                       f"only tensors and plain values are read (re-save it from a trusted copy)")


def load_safely(source, path: str, mmap: bool = False) -> Any:
    """torch.load of `source` (a path or a file object) with weights_only=True, or a one-line ConfigError."""
    import torch

    # torch maps only its zip format; a file in the old format is read whole, by the same weights-only reader
    mmap = mmap and isinstance(source, (str, os.PathLike)) and zipfile.is_zipfile(source)
    try:
        with _only_our_globals():
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # weights_only refused a global, or the pickle is damaged
        raise _refusal(path, e) from None
    except Exception as e:  # truncated, not a torch file, ...
        raise ConfigError(f"checkpoint {path!r} cannot be read: cut short, or not a torch file ({_why(e)})") from None


def read_checkpoint_file(path: str, mmap: bool = False) -> Any:
    """What the torch file at `path` holds (memory-mapped tensors with `mmap`), or a one-line ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} not found")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"checkpoint {path!r} is empty (0 bytes: an interrupted save leaves such a file)")
    return load_safely(path, path, mmap=mmap)


def read_training_checkpoint(path: str) -> dict:
    """A training checkpoint file (weights, loops, optimizer state) with memory-mapped tensors, or a one-line
    ConfigError. (A sharded FSDP checkpoint is a folder: see check_sharded.)"""
    checkpoint = read_checkpoint_file(path, mmap=True)
    if not isinstance(checkpoint, dict) or not set(TRAINING_KEYS) <= set(checkpoint):
        raise ConfigError(f"{path!r} is not a lit_compclip training checkpoint (no loop and optimizer state); to "
                          f"start from its weights only, use init_from")
    return checkpoint


def checkpoint_file(path: str) -> str:
    """`path` itself, or the run folder `path`'s checkpoints/last.ckpt."""
    if not os.path.isdir(path):
        return path
    last = os.path.join(path, "checkpoints", "last.ckpt")
    if not os.path.isfile(last):
        raise ConfigError(f"{path!r} is a folder without checkpoints/last.ckpt: give a run folder or a checkpoint file")
    return last


MODEL_PREFIX = "model."  # the LightningModule holds the model as `model`: its weights are named model.image..., ...


def read_model_checkpoint(path: str) -> tuple[dict, dict]:
    """(the config's model section, the model's weights by their names in CompClipModel) of a training checkpoint
    file, read weights-only; or a one-line ConfigError naming the file."""
    checkpoint = read_checkpoint_file(path)
    hp = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("model"), dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path!r} is not a lit_compclip training checkpoint (no state_dict or model "
                          f"hyper_parameters)")
    other = [k for k in checkpoint["state_dict"] if not k.startswith(MODEL_PREFIX)]
    if other:
        raise ConfigError(f"checkpoint {path!r} does not match this version's model (weight {other[0]!r} is not "
                          f"under {MODEL_PREFIX!r})")
    return dict(hp["model"]), {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items()}


def load_weights(model, weights: dict, path: str, what: str = "checkpoint") -> None:
    """`model.load_state_dict(weights)`, every name and shape checked first, or a one-line ConfigError naming the file
    (a `what`: checkpoint, export) and the first mismatch."""
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
    shapes = [n for n in want if n in weights and tuple(want[n].shape) != tuple(weights[n].shape)]
    if missing or extra or shapes:
        detail = (f"weight {missing[0]!r} is missing" if missing else f"it holds an unknown weight {extra[0]!r}"
                  if extra else f"weight {shapes[0]!r} has shape {tuple(weights[shapes[0]].shape)}, the model "
                  f"{tuple(want[shapes[0]].shape)}")
        raise ConfigError(f"{what} {path!r} does not match this version's model ({detail})")
    try:
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{what} {path!r} does not match this version's model ({_why(e)})") from None


# ---- sharded FSDP checkpoints: a folder torch.distributed.checkpoint reads with plain pickle ----

_DCP = "torch.distributed.checkpoint."
_METADATA_CLASSES = {
    _DCP + "metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    _DCP + "filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},  # and dtypes, below
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a `.metadata` file building only the plain records torch.distributed.checkpoint writes there."""

    def find_class(self, module: str, name: str):
        import torch

        if name in _METADATA_CLASSES.get(module, ()) or (module == "torch" and
                                                         isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")


def check_sharded(folder: str) -> None:
    """Every pickle Lightning and torch.distributed.checkpoint would read from the sharded checkpoint `folder`
    (.metadata with plain pickle, meta.pt, and each non-tensor entry of the .distcp files, which torch loads with
    weights_only=False) holds only plain values, or a one-line ConfigError naming the file and the global."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    where = os.path.join(folder, ".metadata")
    if not os.path.isfile(where):
        raise ConfigError(f"checkpoint folder {folder!r} has no .metadata (not a sharded FSDP checkpoint)")
    try:
        with open(where, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise _refusal(where, e) from None
    except Exception as e:
        raise ConfigError(f"checkpoint {where!r} cannot be read ({_why(e)})") from None
    read_checkpoint_file(os.path.join(folder, "meta.pt"))
    storage = getattr(metadata, "storage_data", None) or {}
    for fqn, md in getattr(metadata, "state_dict_metadata", {}).items():
        if not isinstance(md, BytesStorageMetadata):
            continue  # tensors: torch reads them with weights_only=True
        info = storage.get(MetadataIndex(fqn))
        if info is None:
            continue  # nothing stored for it: torch fails on its own, reading no pickle
        name = os.path.join(folder, str(info.relative_path))
        if getattr(info, "transform_descriptors", None) or not os.path.isfile(name):
            raise ConfigError(f"checkpoint {name!r} cannot be checked for entry {fqn!r} (missing or stored with "
                              f"transforms)")
        with open(name, "rb") as f:
            f.seek(info.offset)
            load_safely(io.BytesIO(f.read(info.length)), f"{name}:{fqn}")
