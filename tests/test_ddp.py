import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_script.py")
# DDP mode -> the single-process run it must equal (one process holds the whole batch: local loss = the loss)
REFERENCE = {"full": "full", "local": "full", "local_negatives": "full_negatives",
             "grad_cache_negatives": "full_negatives"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every mode's step in one launch of the script (DDP starts in ~7 s): (single-process runs, DDP runs)."""
    out = tmp_path_factory.mktemp("ddp") / "steps.pt"
    # DDP re-launches the script per rank, so it must run in its own process (never inside pytest itself).
    env = dict(os.environ, PYTHONPATH=os.getcwd(), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29500 + os.getpid() % 1000))
    single, ddp = ",".join(sorted(set(REFERENCE.values()))), ",".join(REFERENCE)
    subprocess.run([sys.executable, SCRIPT, str(out), single, ddp], check=True, timeout=300, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    steps = torch.load(out)
    return steps["single"], steps["ddp"]


@pytest.mark.parametrize("mode", list(REFERENCE))
def test_two_process_ddp_step_equals_single_process_global_batch(runs, mode):
    single, ddp = runs[0][REFERENCE[mode]], runs[1][mode]
    # the logged train/loss is the global-batch loss (a local loss's ranks are averaged when logged)
    assert torch.allclose(ddp["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    assert single["grads"].keys() == ddp["grads"].keys()
    for name, grad in single["grads"].items():
        assert torch.allclose(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6), name
    for name, weight in single["weights"].items():
        assert torch.allclose(ddp["weights"][name], weight, rtol=1e-4, atol=1e-6), name


def test_local_loss_is_each_ranks_share_and_logged_as_their_mean(runs):
    single, ddp = runs
    assert torch.allclose(ddp["full"]["own_loss"], single["full"]["loss"], rtol=1e-5)  # full: every rank, whole loss
    # local: rank 0 backpropagates only its own rows' loss, which differs from the logged global loss
    assert not torch.allclose(ddp["local"]["own_loss"], single["full"]["loss"], rtol=1e-3)


def test_grad_cache_syncs_gradients_once_per_step(runs):
    ddp = runs[1]
    # GradCache runs one backward per micro-batch, yet DDP all-reduces each gradient bucket once, as a plain step
    assert ddp["grad_cache_negatives"]["allreduced_buckets"] == ddp["local_negatives"]["allreduced_buckets"] > 0
