"""Two CPU DDP processes against one: the step (tiny model and the shipped default: local and full loss, hard
negatives, GradCache) equals the single-process global-batch step, GradCache syncs once, and a real epoch's skip
counts are every rank's sum."""

import csv
import io
import json
import os
import socket

import pytest
import torch

from helpers import assert_close_by_norm, assert_same_tensors
from skip_shards import add, write_shard

RTOL = 1e-9  # the steps run in float64

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_script.py")
# DDP mode -> the single-process run it must equal (one process holds the whole batch: local loss = the loss).
# "default" is the shipped model with dropout, whose reference encodes each rank's half from the ranks' random state
# (ddp_script.SharedMasks); the default_no_dropout modes' reference is a plain step on the whole batch at once.
REFERENCE = {"full": "full", "local": "full", "local_negatives": "full_negatives",
             "grad_cache_negatives": "full_negatives", "default": "default",
             "default_no_dropout": "default_no_dropout",
             "default_no_dropout_full_negatives": "default_no_dropout_full_negatives",
             "default_no_dropout_grad_cache_negatives": "default_no_dropout_full_negatives"}
# Per shard (one per loader worker, two per rank): 9 good samples in batches of 4, so the 9th is left over (dropped),
# and broken ones before, between and after them all
BROKEN = [{"truncated_jpeg": 1, "bad_json": 1}, {"garbage_jpeg": 2, "no_image": 1},
          {"no_caption": 2, "truncated_jpeg": 1}, {"no_image": 1, "bad_json": 2, "garbage_jpeg": 1}]


def free_port() -> int:
    """A port the OS just handed out (bound, then released for the script's rank 0 to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(forks, args: list[str], log, attempts: int = 3) -> str:
    """Run the script with a fresh free port, again on another if something took the port in between; its stdout.
    Rank 0 is forked from the session's warm interpreter, with this process's threads (DDP re-launches the script as
    rank 1 in an interpreter of its own, so it can never run inside pytest itself)."""
    job = {"cwd": str(log), "script": SCRIPT, "argv": args, "out": str(log / "out"), "err": str(log / "err"),
           "threads": torch.get_num_threads()}
    for attempt in range(attempts):
        # rank 1 takes its threads from OMP_NUM_THREADS, as this process did
        job["env"] = {"PYTHONPATH": os.getcwd(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                      "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
        code = forks.run([job], 1, timeout=400)[0][0]
        if code == 0:
            return (log / "out").read_text()
        stderr = (log / "err").read_text()
        taken = "address already in use" in stderr.lower() or "eaddrinuse" in stderr.lower()
        if not taken or attempt == attempts - 1:
            raise AssertionError(f"ddp_script.py failed ({code}):\n{stderr[-4000:]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def runs(forks, tmp_path_factory):
    """Every mode's step and the skip epoch in one launch of the script (DDP starts in ~7 s):
    (single-process runs, DDP runs, expected skip counts, what rank 0 printed)."""
    work = tmp_path_factory.mktemp("ddp")
    (work / "shards").mkdir()
    expected = add(*(write_shard(work / "shards" / f"{i}.tar", 9, kinds, f"s{i}") for i, kinds in enumerate(BROKEN)))
    out = work / "steps.pt"
    single, ddp = ",".join(sorted(set(REFERENCE.values()))), ",".join([*REFERENCE, "skips"])
    printed = launch(forks, [str(out), single, ddp, str(work)], work)
    steps = torch.load(out)
    return steps["single"], steps["ddp"], expected, printed


@pytest.mark.parametrize("mode", list(REFERENCE))
def test_two_process_ddp_step_equals_single_process_global_batch(runs, mode):
    single, ddp = runs[0][REFERENCE[mode]], runs[1][mode]
    # the logged train/loss is the global-batch loss (a local loss's ranks are averaged when logged)
    # float64 steps (ddp_script.run): rounding is ~1e-15 of a norm, a wrong mask or a wrong share orders above RTOL
    assert_close_by_norm(ddp["loss"], single["loss"], RTOL, "train/loss")
    # (a floor of 1e-6 x all gradients' norm for those whose true value is 0: MiniLM's attention key biases)
    assert_same_tensors(ddp["grads"], single["grads"], RTOL, f"{mode} gradient")
    assert_same_tensors(ddp["weights"], single["weights"], RTOL, f"{mode} weight")


def test_every_rank_and_the_reference_start_the_step_in_one_random_state(runs):
    # what makes the default model's dropout masks of the reference (ddp_script.SharedMasks) the ranks' own
    for mode, reference in REFERENCE.items():
        assert runs[1][mode]["rng"] == runs[0][reference]["rng"] * 2, mode


def test_local_loss_is_each_ranks_share_and_logged_as_their_mean(runs):
    single, ddp = runs[0], runs[1]
    assert_close_by_norm(ddp["full"]["own_loss"], single["full"]["loss"], RTOL)  # full: every rank, whole loss
    # local: rank 0 backpropagates only its own rows' loss, which differs from the logged global loss
    assert not torch.allclose(ddp["local"]["own_loss"], single["full"]["loss"], rtol=1e-3)


def test_grad_cache_syncs_gradients_once_per_step(runs):
    ddp = runs[1]
    # GradCache runs one backward per micro-batch, yet DDP all-reduces each gradient bucket once, as a plain step
    assert ddp["grad_cache_negatives"]["allreduced_buckets"] == ddp["local_negatives"]["allreduced_buckets"] > 0


def test_ranks_train_on_disjoint_shares_that_make_up_the_epoch(runs):
    keys = runs[1]["skips"]["keys"]
    assert len(keys) == 2 and len(keys[0]) == len(keys[1]) == 16
    assert not set(keys[0]) & set(keys[1])
    # every shard's first 8 (its 9th is each worker's partial batch, which training drops)
    assert sorted(keys[0] + keys[1]) == sorted(f"s{i}_{j:03d}" for i in range(4) for j in range(8))


def test_skip_counts_are_the_sum_over_ranks_and_workers(runs):
    _, ddp, expected, printed = runs
    run_dir = ddp["skips"]["run_dir"]
    total = sum(expected.values())
    assert total == 12 and ddp["skips"]["skipped"] == total
    record = json.load(open(os.path.join(run_dir, "data_skips.json")))
    assert record["train"] == {**record["train"], "total": total, "by_reason": expected}
    last = {}
    for row in csv.DictReader(io.StringIO(open(os.path.join(run_dir, "metrics.csv")).read())):
        last.update({k: float(v) for k, v in row.items() if v != ""})
    assert last["data/skipped"] == total
    assert {k.split("/")[-1]: v for k, v in last.items() if k.startswith("data/skipped/")} == expected
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(expected.items()))
    line = f"data: skipped {total} training samples ({reasons}); see {os.path.join(run_dir, 'data_skips.json')}"
    assert printed.splitlines().count(line) == 1  # rank 0 prints it, once
