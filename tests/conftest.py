"""Test-wide settings (nothing is fetched from a hub, W&B never prompts nor goes online) and the fixtures test modules
share: the tiny synthetic world, the tiny model's training checkpoint, a stock-ViT checkpoint, random decoder folders,
and one warm interpreter to fork command lines from; no module leaves loader workers behind. (Plain helpers:
tests/helpers.py.)"""

import json
import os
import select
import signal
import subprocess
import sys

import pytest

# Set before huggingface_hub is imported anywhere: it reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Forced, not defaulted: a developer's WANDB_MODE=online (or an API key) must not reach W&B from the suite. Tests of
# another mode monkeypatch it.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="module", autouse=True)
def loader_workers_end_with_their_module():
    """No module leaves loader workers behind: a run's data module stops its passes' workers as fit ends
    (WebDataModule.close); a test that iterates a loader by hand closes it. Left to a garbage collection, each
    would stall a later test by seconds."""
    yield
    import multiprocessing

    left = multiprocessing.active_children()
    assert not left, f"processes left running by this module: {left}"


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


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny synthetic world of the training, probe and encoder tests, built once: 48 training families, every
    optional caption field (plain_list, so the default's epoch-2 curriculum runs), 8 examples per probe file. Tests
    read it (and share its text cache, {world}/cache); one that would change it works on a copy."""
    from lit_compclip.synth import generate

    out = tmp_path_factory.mktemp("synth") / "world"
    generate(str(out), train_families=48, eval_families=8, shard_size=64, probe_size=8, plain_lists=1)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(world, tmp_path_factory):
    """An untrained tiny model (helpers.TINY_MODEL, the default's MiniLM) saved as a training checkpoint at step 50:
    what a stage-2 experiment's init_from or `probe --ckpt` needs."""
    import torch
    from omegaconf import OmegaConf

    from helpers import DEFAULT, TINY_MODEL, world_overrides
    from lit_compclip.config import load_config
    from lit_compclip.training.module import CompClip

    cfg = load_config([DEFAULT], world_overrides(world) + TINY_MODEL)
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 50}, path)
    return path


@pytest.fixture(scope="session")
def vit_checkpoint(world, tmp_path_factory):
    """An untrained CompClip with a stock vit_tiny_patch16_224 at 224 px and MiniLM (helpers.VIT), saved as a
    training checkpoint: a model the open_clip export can hold."""
    import torch
    from omegaconf import OmegaConf

    from helpers import DEFAULT, VIT, world_overrides

    from lit_compclip.config import load_config
    from lit_compclip.training.module import CompClip

    cfg = load_config([DEFAULT], world_overrides(world) + VIT)
    torch.manual_seed(0)
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    path = tmp_path_factory.mktemp("vit") / "vit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 1}, path)
    return path


class Forks:
    """Command lines run as real processes, each forked from one interpreter that imported torch, Lightning and
    transformers once for the whole session (tests/cli_forks.py --serve: a fresh interpreter costs seconds). Its
    environment: the suite's, one thread, the hub offline with an empty cache, W&B disabled, matplotlib's cache in
    the session's folder (never in a command's working folder: its HOME)."""

    SCRIPT = os.path.join(os.path.dirname(__file__), "cli_forks.py")

    def __init__(self, folder):
        self.folder, self.server = folder, None

    def run(self, jobs: list[dict], parallel: int = 2, env: dict | None = None, timeout: float = 600):
        """(exit codes, wall seconds) of `jobs` ({"cwd", "argv", "out", "err"}, optional "env", "threads", "session"
        and "script": see tests/cli_forks.py), `parallel` at a time, with `env` set (None: unset) in each; a batch
        still running after `timeout` is killed whole, its codes and seconds None (the next request starts another
        interpreter)."""
        answer = self._ask({"jobs": jobs, "parallel": parallel, "env": env or {}}, timeout)
        return (answer["codes"], answer["seconds"]) if answer else ([None] * len(jobs), [None] * len(jobs))

    def start(self, job: dict, env: dict | None = None) -> int:
        """The pid of `job`, started and left running (wait() tells how it ended)."""
        return self._ask({"start": job, "env": env or {}}, 60)["pid"]

    def wait(self, pid: int, timeout: float) -> int | None:
        """The exit status of a started job, or None while it still runs after `timeout` seconds."""
        return self._ask({"wait": pid, "timeout": timeout}, timeout + 60)["code"]

    def _ask(self, request: dict, timeout: float) -> dict | None:
        if self.server is None or self.server.poll() is not None:
            env_server = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                          "HF_HOME": str(self.folder / "hf"), "WANDB_MODE": "disabled",
                          "MPLCONFIGDIR": str(self.folder / "matplotlib")}
            self.server = subprocess.Popen([sys.executable, self.SCRIPT, "--serve"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, env=env_server, start_new_session=True)
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        if not select.select([self.server.stdout], [], [], timeout)[0]:
            self.close(kill=True)
            return None
        return json.loads(self.server.stdout.readline())

    def close(self, kill: bool = False) -> None:
        if self.server is None:
            return
        if kill:
            os.killpg(self.server.pid, signal.SIGKILL)  # the interpreter and every child it forked
        self.server.stdin.close()
        try:
            self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        self.server.stdout.close()
        self.server = None


@pytest.fixture(scope="session")
def forks(tmp_path_factory):
    """The session's Forks: forks.run(jobs, parallel, env, timeout) -> (exit codes, seconds); forks.start(job) -> pid
    and forks.wait(pid, timeout) -> exit status, for a job the test signals while it runs."""
    runner = Forks(tmp_path_factory.mktemp("forks"))
    yield runner
    runner.close()
