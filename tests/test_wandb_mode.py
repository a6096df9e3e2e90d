"""`wandb.mode=auto`: online only where W&B has credentials (WANDB_MODE, an API key, ~/.netrc), else offline."""

import os

import pytest

from lit_compclip.training.run import wandb_mode


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """No W&B variables and an empty home folder (no ~/.netrc)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_auto_without_credentials_is_offline(bare):
    assert wandb_mode("auto") == "offline"


@pytest.mark.parametrize("mode", ["disabled", "online", "offline"])
def test_auto_follows_wandb_mode_when_set(bare, mode):
    bare.setenv("WANDB_MODE", mode)
    bare.setenv("WANDB_API_KEY", "x" * 40)  # the variable wins over a key
    assert wandb_mode("auto") == mode


def test_auto_with_an_api_key_is_online(bare):
    bare.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"


def test_auto_with_a_netrc_entry_for_wandb_is_online(bare, tmp_path):
    (tmp_path / ".netrc").write_text("machine github.com\n  login me\n  password p\n")
    assert wandb_mode("auto") == "offline"  # a .netrc for another host is no W&B login
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert wandb_mode("auto") == "online"


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_an_explicit_mode_is_kept_whatever_the_environment(bare, mode):
    bare.setenv("WANDB_MODE", "offline" if mode == "online" else "online")
    assert wandb_mode(mode) == mode


def test_the_suite_never_inherits_a_developers_wandb_settings():
    # conftest sets these whatever the shell had (a developer's WANDB_MODE=online or API key stays out)
    assert os.environ["WANDB_MODE"] == "offline" and "WANDB_API_KEY" not in os.environ


def test_the_wandb_logger_passes_no_anonymous_setting_which_wandb_warns_about(tmp_path):
    """wandb prints "The anonymous setting has no effect" for any value, None included; Lightning passes None."""
    from lightning.pytorch.loggers import WandbLogger

    from lit_compclip.config import load_config
    from lit_compclip.training.loggers import build_loggers

    loggers, mode = build_loggers(load_config(["experiments/default.yaml"], ["wandb.mode=offline"]), str(tmp_path))
    (logger,) = [x for x in loggers if isinstance(x, WandbLogger)]
    assert mode == "offline" and "anonymous" not in logger._wandb_init and logger._wandb_init["project"]
