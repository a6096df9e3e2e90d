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


@pytest.fixture(scope="session")
def random_lm(tmp_path_factory):
    """A factory of tiny random decoder folders (lit_compclip.towers.random_lm), each built once per session:
    random_lm(family, sentence_transformers=False, padding_side="right", **options) -> folder."""
    from lit_compclip.towers.random_lm import save_random_lm

    built = {}

    def make(family: str, sentence_transformers: bool = False, padding_side: str = "right", **options) -> str:
        key = (family, sentence_transformers, padding_side, tuple(sorted(options.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{family}-{'st' if sentence_transformers else 'hf'}-{padding_side}")
            built[key] = save_random_lm(str(folder), family, sentence_transformers=sentence_transformers,
                                        padding_side=padding_side, **options)
        return built[key]

    return make
