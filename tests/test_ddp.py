import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_script.py")


def run(devices, out):
    # DDP re-launches the script per rank, so it must run in its own process (never inside pytest itself).
    env = dict(os.environ, PYTHONPATH=os.getcwd(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + devices + os.getpid() % 1000))
    subprocess.run([sys.executable, SCRIPT, str(devices), str(out)], check=True, timeout=240, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return torch.load(out)


def test_two_process_ddp_step_equals_single_process_global_batch(tmp_path):
    single = run(1, tmp_path / "single.pt")
    ddp = run(2, tmp_path / "ddp.pt")
    assert torch.allclose(ddp["loss"], single["loss"], rtol=1e-5, atol=1e-6)  # the loss is the global-batch loss
    assert single["grads"].keys() == ddp["grads"].keys()
    for name, grad in single["grads"].items():
        assert torch.allclose(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6), name
    for name, weight in single["weights"].items():
        assert torch.allclose(ddp["weights"][name], weight, rtol=1e-4, atol=1e-6), name
