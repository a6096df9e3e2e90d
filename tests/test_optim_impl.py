"""The step's speed levers train as the plain step, step for step, on the CPU: optim.implementation (AdamW's foreach
and fused updates; null keeps torch's own choice, so no existing figure moves) and model.compile with its mode."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from helpers import DEFAULT, TINY_MODEL, TINY_TEXT, assert_same_tensors
from lit_compclip.config import ConfigError, load_config
from lit_compclip.training.module import CompClip

STEPS = 3


class Batches(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            yield {"image": torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64), "skipped": 0,
                   "caption": ["a red square", "a blue circle left of a star", "two cats", "a dog on a mat",
                               "green", "a yellow star above a grey cross"]}


def build(implementation, *overrides) -> CompClip:
    cfg = load_config([DEFAULT], [*TINY_MODEL, TINY_TEXT, *overrides])
    L.seed_everything(0, verbose=False)
    return CompClip(OmegaConf.to_container(cfg.model), {**OmegaConf.to_container(cfg.optim), "warmup_steps": 0,
                                                       "implementation": implementation}, total_steps=STEPS).double()


def weights(model: CompClip) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained(implementation, *overrides) -> dict[str, torch.Tensor]:
    model = build(implementation, *overrides)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, precision="64-true")
    trainer.fit(model, DataLoader(Batches(), batch_size=None))
    return weights(model)


@pytest.fixture(scope="module")
def plain():
    return trained("for_loop")


def test_the_steps_train_every_tower(plain):
    start = weights(build("for_loop"))
    moved = {k.split(".")[1] for k in plain if not torch.equal(plain[k], start[k])}
    assert {"image", "text", "log_logit_scale"} <= moved, moved


# In float64, so that an element whose true gradient is zero (an attention key's bias) stays still: in float32 Adam
# turns its rounding noise, which another summation order draws otherwise, into steps of ~1e-5 per step. A real
# difference (decay skipped, a moment or the step size off by 1%) moves the weights far more (the control below).
RTOL = 1e-6


@pytest.mark.parametrize("implementation", [None, "foreach", "fused"])
def test_each_adamw_implementation_trains_as_the_plain_loop(plain, implementation):
    assert_same_tensors(trained(implementation), plain, RTOL, f"weight ({implementation})", floor=1e-3)


def test_the_comparison_sees_a_one_percent_change_of_the_learning_rate(plain, monkeypatch):
    real = CompClip.configure_optimizers

    def slightly_faster(self):
        self.optim = {**self.optim, "lr": self.optim["lr"] * 1.01, "text_lr": self.optim["text_lr"] * 1.01}
        return real(self)

    monkeypatch.setattr(CompClip, "configure_optimizers", slightly_faster)
    with pytest.raises(AssertionError):
        assert_same_tensors(trained("fused"), plain, RTOL, "weight", floor=1e-3)


def test_an_unknown_implementation_is_one_line():
    with pytest.raises(ConfigError, match="config key 'optim.implementation': 'fast': choose for_loop, foreach, fused"):
        load_config([DEFAULT], ["optim.implementation=fast"])


def test_compiled_towers_train_as_the_plain_loop(plain, monkeypatch):
    """model.compile=true with a mode: three whole steps (forward, backward, AdamW) as the eager model's. Compiled by
    aot_eager, which traces as inductor does (dynamo, AOTAutograd) without generating C++; `make test-all` runs
    inductor itself on the towers (tests/test_speed_options.py)."""
    compiled = []
    real = torch.nn.Module.compile

    def compile_(self, **options):
        compiled.append((type(self).__name__, options))
        return real(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    weights_ = trained("for_loop", "model.compile=true", "model.compile_mode=max-autotune-no-cudagraphs")
    # the image trunk and the text tower's one block, each with the mode
    assert [options for _, options in compiled] == [{"mode": "max-autotune-no-cudagraphs"}] * 2, compiled
    assert weights_.keys() == plain.keys()  # compiled in place: checkpoints load either way
    assert_same_tensors(weights_, plain, RTOL, "weight (compiled)", floor=1e-3)


def test_a_compile_mode_is_checked_in_one_line():
    with pytest.raises(ConfigError, match="config key 'model.compile_mode': 'fast': choose default, reduce-overhead"):
        load_config([DEFAULT], ["model.compile=true", "model.compile_mode=fast"])
    with pytest.raises(ConfigError, match="'model.compile_mode': applies to model.compile=true only"):
        load_config([DEFAULT], ["model.compile_mode=max-autotune"])
