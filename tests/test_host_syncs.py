"""A training step reads no value back from the device, so the host runs ahead of it: the text tower's bookkeeping
(cache keys, length groups, real positions) reads the host's tokens, before `towers.devices.to_device`.

There is no GPU here, so the device is simulated: every tensor `to_device` hands over (and the image batch) becomes
an `OnDevice` tensor, a subclass that every result computed from it inherits, and that records each read of its
values by the host (`.item()`, `bool()`, `.tolist()`, `.numpy()`, `.cpu()`, `nonzero`, a boolean index). On a GPU
each of those waits for the device's queue to drain.
"""

import os
import traceback

import pytest
import torch
from omegaconf import OmegaConf

from lit_compclip.config import load_config
from lit_compclip.towers import devices, pretrained, scratch
from lit_compclip.training.module import CompClip

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
         torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu}
# Only this project's reads count: a library's own (transformers checks whether a padding mask masks anything,
# `padding_mask.all()`, once per text forward) is its choice, and may come and go with its versions.
OURS = "lit_compclip/"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # wherever the repo was cloned
CAPTIONS = ["a red cube", "a small blue ball left of a large green cylinder", "two cats",
            "a purple cone above a yellow torus and a grey sphere behind them"]


def caller() -> str:
    """The innermost frame outside torch: who asked for the value."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith(__file__.split("/")[-1]):
            name = frame.filename.split("site-packages/")[-1]
            return f"{name[len(ROOT):] if name.startswith(ROOT) else name}:{frame.lineno}"
    return "?"


class OnDevice(torch.Tensor):
    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        read = func in READS
        if func is torch.Tensor.to:
            read = any(str(a) == "cpu" for a in list(args[1:]) + list(kwargs.values()))
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            read = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if read:
            cls.reads.append(f"{func.__name__} from {caller()}")
        out = super().__torch_function__(func, types, args, kwargs)
        if read and func in (torch.Tensor.to, torch.Tensor.cpu):  # a copy on the host: no longer the device's
            with torch._C.DisableTorchFunctionSubclass():
                out = out.as_subclass(torch.Tensor)
        return out


@pytest.fixture
def simulated_device(monkeypatch):
    def onto(tensors, device):
        moved = devices.to_device(tensors, device)
        if isinstance(moved, torch.Tensor):
            return moved.as_subclass(OnDevice)
        if isinstance(moved, dict):
            return {k: v.as_subclass(OnDevice) for k, v in moved.items()}
        return type(moved)(v.as_subclass(OnDevice) for v in moved)

    for module in (pretrained, scratch):
        monkeypatch.setattr(module, "to_device", onto)
    OnDevice.reads = []
    yield OnDevice


def step(module, images, captions, negatives=()) -> list[str]:
    """One training step's forward and backward on the simulated device; the host's reads of device values."""
    OnDevice.reads = []
    batch = {"image": images.as_subclass(OnDevice), "caption": captions}
    if negatives:
        batch["negatives"] = list(negatives)
    loss = module._loss(batch)[0]
    loss.backward()
    return [r for r in OnDevice.reads if r.split(" from ")[1].startswith(OURS)]


def shipped_module(tmp_path, *overrides, experiment="experiments/default.yaml"):
    cache = [f"model.text.cache_dir={tmp_path}/text"] if experiment.endswith("default.yaml") else []
    cfg = load_config([experiment], cache + list(overrides))
    return CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)


def test_the_shipped_step_reads_nothing_back_from_the_device_once_its_captions_are_cached(tmp_path, simulated_device):
    torch.manual_seed(0)
    module = shipped_module(tmp_path)  # MiniLM, its frozen prefix cached, captions in 2 length groups
    images = torch.randn(len(CAPTIONS), 3, 64, 64)
    first = step(module, images, CAPTIONS, negatives=["a green cube"])
    # filling the cache copies the new rows back once per tower call (a group), in the cache's own rounding
    assert first and all(r.startswith("to from lit_compclip/text_cache.py") for r in first), first
    assert step(module, images, CAPTIONS, negatives=["a green cube"]) == []


def test_without_the_cache_and_with_the_scratch_tower_the_step_reads_nothing_back(tmp_path, simulated_device):
    torch.manual_seed(0)
    images = torch.randn(len(CAPTIONS), 3, 64, 64)
    assert step(shipped_module(tmp_path, "model.text.cache_dir=null"), images, CAPTIONS) == []
    assert step(shipped_module(tmp_path, experiment="experiments/alt_text_scratch.yaml"), images, CAPTIONS) == []


def test_the_simulated_device_catches_a_read(simulated_device):
    x = pretrained.to_device(torch.ones(3), "cpu")
    (x * 2)[x > 0]
    float(x.sum())
    assert [r.split(" from")[0] for r in simulated_device.reads] == ["__getitem__", "__float__"]
