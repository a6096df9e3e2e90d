"""Test-wide settings: nothing is fetched from a hub, W&B never prompts nor goes online."""

import os

import pytest

# Set before huggingface_hub is imported anywhere: it reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Forced, not defaulted: a developer's WANDB_MODE=online (or an API key) must not reach W&B from the suite. Tests of
# another mode monkeypatch it.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture
def float64():
    """Models and tensors built in float64 inside the test (for equalities that are mathematical, not rounded)."""
    from helpers import default_dtype

    import torch

    with default_dtype(torch.float64):
        yield
