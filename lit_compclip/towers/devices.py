"""Moving a tower's inputs to its device, in one place.

Captions are tokenized on the host, and everything that reads token values (the text cache's keys, length groups,
which positions are real) reads the host's copy before this move. Read on the device, each value would make the host
wait for the device's queue to drain (a sync), so the host could not prepare the text while the device still runs the
image tower. `tests/test_host_syncs.py` wraps this function to catch any read of a moved tensor.
"""

from __future__ import annotations

import torch


def to_device(tensors, device: torch.device):
    """A dict, tuple or list of tensors (or one tensor) on `device`; those already there are returned as they are."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device)
    if isinstance(tensors, dict):
        return {k: to_device(v, device) for k, v in tensors.items()}
    return type(tensors)(to_device(v, device) for v in tensors)
