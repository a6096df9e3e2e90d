"""Every bad `compclip train` input, each run as its own process through the CLI: exit 2, one line naming the key, no
run folder. The cases that meet the Hugging Face hub run as a user runs them: without the suite's offline settings."""

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch

from helpers import DEFAULT, TINY_MODEL

# A tiny model, and a tiny synthetic world should a bad input slip past the checks into building one.
TINY = [*TINY_MODEL, "synth.train_families=2", "synth.eval_families=2", "synth.probe_size=4", "data.batch_size=8",
        "data.num_workers=0", "wandb.mode=disabled", "trainer.fast_dev_run=true"]
# The world given ready-made (synth.auto=false), and a tiny scratch text tower (MiniLM takes seconds to load): for
# inputs found once data and model are in hand.
WORLD = ["model.text.tower=scratch", "model.text.width=32", "model.text.layers=1", "model.text.heads=2",
         "synth.auto=false", "synth.out_dir={world}", "data.train_shards={world}/train", "data.val_shards={world}/val",
         "probes.limit=8", "probes.suites.sugarcrepe.annotations={world}/probes/sugarcrepe",
         "probes.suites.sugarcrepe.images={world}/probes/sugarcrepe/images", "probes.suites.aro.root={world}/probes/aro",
         "probes.suites.aro.images={world}/probes/aro/images",
         "probes.suites.winoground.examples={world}/probes/winoground/examples.jsonl",
         "probes.suites.winoground.images={world}/probes/winoground/images",
         "probes.suites.docci.annotations={world}/probes/docci/docci_descriptions.jsonlines",
         "probes.suites.docci.images={world}/probes/docci/images"]

# id: (arguments, text the error line must hold (the key, where there is one), world): the world is "none" (nothing
# may build one), "given" (the ready-made one) or "built" (the tiny one is built, then the Trainer refuses: this case
# shows that the harness sees a world being built, and that even then no run folder is left behind).
CASES = {
    # found by the config check, before anything is built
    "unknown_key": (["data.batchsize=3"], "'data.batchsize'", "none"),
    "wrong_type": (["data.batch_size=many"], "'data.batch_size'", "none"),
    "negative_batch_size": (["data.batch_size=-4"], "'data.batch_size'", "none"),
    "negative_lr": (["optim.lr=-0.001"], "'optim.lr'", "none"),
    "negative_epochs": (["trainer.max_epochs=-3"], "'trainer.max_epochs'", "none"),
    "no_equals_sign": (["batch_size"], "'batch_size' is not of the form key=value", "none"),
    "bad_name": (["name=my run"], "'name'", "none"),
    "missing_experiment_file": (["{tmp}/missing.yaml"], "missing.yaml", "none"),
    "experiment_file_not_a_mapping": (["{tmp}/list.yaml"], "list.yaml", "none"),
    "strategy_bogus": (["trainer.strategy=bogus"], "'trainer.strategy'", "none"),
    "precision_17_mixed": (["trainer.precision=17-mixed"], "'trainer.precision'", "none"),
    "accelerator_unknown": (["trainer.accelerator=quantum"], "'trainer.accelerator'", "none"),
    "devices_zero": (["trainer.devices=0"], "'trainer.devices'", "none"),
    "devices_not_a_count": (["trainer.devices=abc"], "'trainer.devices'", "none"),
    "num_nodes_zero": (["trainer.num_nodes=0"], "'trainer.num_nodes'", "none"),
    "stem_norm_bogus": (["model.image.stem_norm=bogus"], "'model.image.stem_norm'", "none"),
    "stem_convs_one_short": (["model.image.stem_convs=[1,1]"], "'model.image.stem_convs'", "none"),
    "stem_convs_not_a_list": (["model.image.stem_convs=2"], "'model.image.stem_convs'", "none"),
    "stem_convs_with_patch_stem": (["model.image.stem=patch", "model.image.stem_convs=[0,0,1]"],
                                   "'model.image.stem_convs'", "none"),
    "text_tower_unknown": (["model.text.tower=bogus"], "'model.text.tower'", "none"),
    "unfreeze_layers_not_an_int": (["model.text.unfreeze_layers=abc"], "model.text.unfreeze_layers", "none"),
    "probe_option_unknown": (["probes.suites.aro.bogus=1"], "probes.suites.aro", "none"),
    "init_from_missing": (["init_from={tmp}/missing.ckpt"], "init_from", "none"),
    "resume_missing": (["resume={tmp}/missing.ckpt"], "resume", "none"),
    # what an interrupted save leaves: a zero-byte file, or one cut short (torch's EOFError has no message)
    "init_from_zero_bytes": (["init_from={tmp}/zero.ckpt"], "init_from: checkpoint '{tmp}/zero.ckpt' is empty", "none"),
    "resume_zero_bytes": (["resume={tmp}/zero.ckpt"], "resume: checkpoint '{tmp}/zero.ckpt' is empty", "none"),
    "init_from_cut_short": (["init_from={tmp}/cut.ckpt"], "init_from: checkpoint '{tmp}/cut.ckpt' cannot be read",
                            "none"),
    "resume_cut_short": (["resume={tmp}/cut.ckpt"], "resume: checkpoint '{tmp}/cut.ckpt' cannot be read", "none"),
    "init_from_half": (["init_from={tmp}/half.ckpt"], "init_from: checkpoint '{tmp}/half.ckpt' cannot be read", "none"),
    "resume_half": (["resume={tmp}/half.ckpt"], "resume: checkpoint '{tmp}/half.ckpt' cannot be read", "none"),
    # found when the model is built (before the synthetic world and the run folder)
    "unfreeze_layers_99": (["model.text.unfreeze_layers=99"], "model.text.unfreeze_layers", "none"),
    "timm_model_unknown": (["model.image.model=not_a_timm_model"], "model.image.model", "none"),
    "pretrained_offline": (["model.image.stem=patch", "model.image.pretrained=true"],
                           "model.image.pretrained: pretrained weights for timm model 'vit_tiny_patch16_224' are not "
                           "available offline", "none"),
    "text_model_empty_folder": (["model.text.model={empty}"], "model.text.model", "none"),
    "bidirectional_on_an_encoder": (["model.text.bidirectional=true"], "model.text.bidirectional", "none"),
    "decoder_not_in_the_hub_cache": (["model.text.tower=transformers", "model.text.model=google/gemma-2-2b"],
                                     "google/gemma-2-2b", "none"),
    # ... and a decoder folder builds, its frozen prefix cached: the run stops only at the missing shards
    "decoder_with_text_cache_builds": (["model.text.model={decoder}", "synth.auto=false",
                                        "data.train_shards={tmp}/none.tar"], "data.train_shards", "none"),
    "width_not_divisible_by_heads": (["model.image.width=65"], "model.image", "none"),
    # found before the world and the run folder, though fit would meet them only later
    "text_cache_dir_unwritable": (["model.text.cache_dir={tmp}/afile/cache"], "model.text.cache_dir", "none"),
    "wandb_online_without_a_key": (["wandb.mode=online"], "wandb.mode", "none"),
    # found where the data and probe files are opened
    "train_shards_missing": (["data.train_shards={tmp}/nothing-{{000..003}}.tar"], "data.train_shards", "given"),
    "probe_file_missing": (["probes.suites.winoground.examples={tmp}/no.jsonl"], "probes.suites.winoground", "given"),
    # found by Lightning's Trainer, on every machine: no MPS on Linux, no FSDP or device lists on a CPU
    "accelerator_absent": (["trainer.accelerator=mps"], "'trainer.accelerator'", "built"),
    "devices_list_on_cpu": (["trainer.accelerator=cpu", "trainer.devices=[0,1]"], "'trainer.devices'", "given"),
    "fsdp_on_cpu": (["trainer.accelerator=cpu", "trainer.strategy=fsdp"], "'trainer.strategy'", "given"),
}


@pytest.fixture(scope="module")
def decoder(random_lm):
    """A tiny randomly initialised decoder LM (Llama) as a plain transformers folder (sentence-transformers wraps it)."""
    return random_lm("llama")


# Met on the Hugging Face hub: run without the suite's HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (tests/conftest.py), as a
# user without them runs it, against a hub that cannot be reached; each must answer in seconds, not after a minute of
# retries (huggingface_hub's backoff), so their batch is stopped after HUB_BATCH_S.
AS_THE_USER = {"pretrained_offline", "decoder_not_in_the_hub_cache"}
HUB_CASE_S, HUB_BATCH_S = 20, 45


class Finished:
    """What one command line left: its exit status, what it wrote to stdout and stderr, and its wall time."""

    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float | None = None):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds


def run_cli_all(jobs: dict, forks=None, tmp=None, env: dict | None = None, timeout: float = 900) -> dict:
    """Every job (case -> (cwd, train arguments)) as its own process, forked two at a time from an interpreter that
    imported the libraries once (tests/cli_forks.py), each in its own working directory: the session's (`forks`: the
    suite's environment, the hub offline with an empty cache: no weights on any machine) or, given `env`, a fresh one
    with that environment instead. A batch running past `timeout` is killed whole and its cases get exit status None."""
    listed = [{"cwd": str(cwd), "argv": ["train", DEFAULT, *argv], "out": str(cwd / "stdout.txt"),
               "err": str(cwd / "stderr.txt")} for cwd, argv in jobs.values()]
    if env is None:
        codes, seconds = forks.run(listed, 2, timeout=timeout)
    else:
        env = {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        (tmp / "jobs.json").write_text(json.dumps(listed))
        runner = os.path.join(os.path.dirname(__file__), "cli_forks.py")
        process = subprocess.Popen([sys.executable, runner, str(tmp / "jobs.json"), str(tmp / "codes.json"), "2",
                                    str(tmp / "seconds.json")], env=env, start_new_session=True)
        try:
            process.wait(timeout=timeout)
            codes = json.loads((tmp / "codes.json").read_text())
            seconds = json.loads((tmp / "seconds.json").read_text())
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the runner and every child it forked
            process.wait()
            codes, seconds = [None] * len(listed), [None] * len(listed)
    done = {}
    for (case, (cwd, _)), code, took, job in zip(jobs.items(), codes, seconds, listed):
        done[case] = (cwd, Finished(code, open(job["out"]).read(), open(job["err"]).read(), took))
        os.remove(job["out"])
        os.remove(job["err"])
    return done


def checkpoint_files(folder) -> None:
    """zero.ckpt (0 bytes), cut.ckpt (torch's older format cut after 10 bytes: its EOFError has no message) and
    half.ckpt (the first half of a zip-format checkpoint): what an interrupted save leaves."""
    whole = {"state_dict": {"w": torch.zeros(64)}, "hyper_parameters": {}}
    (folder / "zero.ckpt").write_bytes(b"")
    torch.save(whole, folder / "old.ckpt", _use_new_zipfile_serialization=False)
    (folder / "cut.ckpt").write_bytes((folder / "old.ckpt").read_bytes()[:10])
    torch.save(whole, folder / "new.ckpt")
    data = (folder / "new.ckpt").read_bytes()
    (folder / "half.ckpt").write_bytes(data[:len(data) // 2])
    for name in ("old.ckpt", "new.ckpt"):
        (folder / name).unlink()


@pytest.fixture(scope="module")
def results(tmp_path_factory, forks, decoder, world):
    """Every case run once, each in its own empty working directory (runs/ and data/ go there); the hub's cases
    against a local port nothing answers on (so no machine downloads anything), with an empty HF_HOME."""
    jobs, expected = {}, {}
    for case, (args, message, world_use) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        (cwd / "list.yaml").write_text("- 1\n- 2\n")
        (cwd / "empty").mkdir()
        (cwd / "afile").write_text("")  # a file where a folder should go
        checkpoint_files(cwd)
        fill = {"tmp": cwd, "empty": cwd / "empty", "decoder": decoder, "world": world}
        extra = [a.format(**fill) for a in WORLD] if world_use == "given" else []
        files = [a.format(**fill) for a in args if a.endswith(".yaml")]  # experiment files lead
        rest = [a.format(**fill) for a in args if not a.endswith(".yaml")]
        jobs[case] = (cwd, files + TINY + extra + rest)
        expected[case] = message.format(**fill)
    done = run_cli_all({c: j for c, j in jobs.items() if c not in AS_THE_USER}, forks)
    with socket.socket() as closed:  # bound, never listening: a connection is refused at once
        closed.bind(("127.0.0.1", 0))
        user = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        user.update(HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
                    HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}")
        done.update(run_cli_all({c: jobs[c] for c in AS_THE_USER}, tmp=tmp_path_factory.mktemp("user"), env=user,
                                timeout=HUB_BATCH_S))
    return {case: (*done[case], expected[case]) for case in CASES}


def test_the_table_holds_every_input_the_issue_names():
    assert len(CASES) >= 25
    named = {"unfreeze_layers_99", "timm_model_unknown", "pretrained_offline", "strategy_bogus",
             "text_model_empty_folder", "precision_17_mixed", "decoder_with_text_cache_builds",
             "init_from_zero_bytes", "resume_zero_bytes", "init_from_cut_short", "resume_cut_short"}
    assert named <= set(CASES) and AS_THE_USER <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(case, results):
    cwd, proc, message = results[case]
    assert proc.returncode is not None, f"still running after {HUB_BATCH_S} s (the hub retried?)"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("compclip train: error: "), proc.stderr[-2000:]
    assert message in lines[0], lines[0]
    if case in AS_THE_USER:
        assert proc.seconds < HUB_CASE_S, f"{proc.seconds:.0f} s to say the hub cannot be reached"
    assert not (cwd / "runs").exists(), "a run folder was created"
    built = (cwd / "data" / "synth" / "manifest.json").exists()
    assert built == (CASES[case][2] == "built"), "the synthetic world was built" if built else "no world was built"
    if CASES[case][2] != "built":
        assert not (cwd / "data").exists(), "the synthetic world or the text cache was written"


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers hf_hub_download as the hub does for one file (`weights`, any repo and revision); 404 for others."""

    weights = b""

    def _headers(self) -> bool:
        found = self.path.endswith("/model.safetensors")
        self.send_response(200 if found else 404)
        if found:
            self.send_header("ETag", f'"{hashlib.sha256(self.weights).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
        else:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", str(len(self.weights) if found else 0))
        self.end_headers()
        return found

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        if self._headers():
            self.wfile.write(self.weights)

    def log_message(self, *args):
        pass


def test_a_reachable_hub_still_downloads_the_pretrained_image_weights(tmp_path):
    """The quick reachability check before timm's download must not stop a user who can reach the hub."""
    import timm
    from safetensors.torch import save_file

    served = timm.create_model("vit_tiny_patch16_224").state_dict()
    save_file({k: v.contiguous() for k, v in served.items()}, tmp_path / "w.safetensors")
    FakeHub.weights = (tmp_path / "w.safetensors").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    build = ("import sys, torch; from lit_compclip.towers.image import ImageTower; "
             "t = ImageTower(8, pretrained=True, stem='patch', img_size=224, patch_size=16, depth=12, width=192, "
             "heads=3); torch.save(t.trunk.blocks[0].attn.qkv.weight.detach(), sys.argv[1])")
    try:
        proc = subprocess.run([sys.executable, "-c", build, str(tmp_path / "qkv.pt")], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "qkv.pt"), served["blocks.0.attn.qkv.weight"])
    assert list((tmp_path / "hf").rglob("model.safetensors")), "the weights did not reach the Hugging Face cache"
