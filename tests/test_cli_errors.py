"""Every bad `compclip train` input, each run as its own process through the CLI: exit 2, one line naming the key, no
run folder."""

import json
import os
import subprocess
import sys

import pytest

# A tiny model, and a tiny synthetic world should a bad input slip past the checks into building one.
TINY = ["model.image.img_size=32", "model.image.depth=1", "model.image.width=64", "model.image.heads=2",
        "model.embed_dim=32", "synth.train_families=2", "synth.eval_families=2", "synth.probe_size=4",
        "data.batch_size=8", "data.num_workers=0", "wandb.mode=disabled", "trainer.fast_dev_run=true"]
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
    # found when the model is built (before the synthetic world and the run folder)
    "unfreeze_layers_99": (["model.text.unfreeze_layers=99"], "model.text.unfreeze_layers", "none"),
    "timm_model_unknown": (["model.image.model=not_a_timm_model"], "model.image.model", "none"),
    "pretrained_offline": (["model.image.stem=patch", "model.image.pretrained=true"], "model.image.pretrained", "none"),
    "text_model_empty_folder": (["model.text.model={empty}"], "model.text.model", "none"),
    "bidirectional_on_an_encoder": (["model.text.bidirectional=true"], "model.text.bidirectional", "none"),
    "decoder_not_in_the_hub_cache": (["model.text.tower=transformers", "model.text.model=google/gemma-2-2b"],
                                     "model.text.model", "none"),
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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lit_compclip.synth import generate

    out = tmp_path_factory.mktemp("world") / "synth"
    generate(str(out), train_families=8, eval_families=2, shard_size=32, probe_size=8)
    return out


class Finished:
    """What one command line left: its exit status and what it wrote to stdout and stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli_all(jobs: dict, tmp) -> dict:
    """Every job (case -> (cwd, train arguments)) as its own process: forked two at a time from one interpreter
    that imported the libraries once (tests/cli_forks.py), each in its own working directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp / "hf"),  # an empty hub cache: pretrained weights are absent on every machine
           "WANDB_MODE": "disabled"}
    listed = [{"cwd": str(cwd), "argv": ["train", *argv], "out": str(cwd / "stdout.txt"),
               "err": str(cwd / "stderr.txt")} for cwd, argv in jobs.values()]
    (tmp / "jobs.json").write_text(json.dumps(listed))
    runner = os.path.join(os.path.dirname(__file__), "cli_forks.py")
    subprocess.run([sys.executable, runner, str(tmp / "jobs.json"), str(tmp / "codes.json"), "2"], env=env,
                   check=True, timeout=900)
    codes = json.loads((tmp / "codes.json").read_text())
    done = {}
    for (case, (cwd, _)), code, job in zip(jobs.items(), codes, listed):
        done[case] = (cwd, Finished(code, open(job["out"]).read(), open(job["err"]).read()))
        os.remove(job["out"])
        os.remove(job["err"])
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory, decoder, world):
    """Every case run once, each in its own empty working directory (runs/ and data/ go there)."""
    jobs = {}
    for case, (args, _, world_use) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        (cwd / "list.yaml").write_text("- 1\n- 2\n")
        (cwd / "empty").mkdir()
        (cwd / "afile").write_text("")  # a file where a folder should go
        fill = {"tmp": cwd, "empty": cwd / "empty", "decoder": decoder, "world": world}
        extra = [a.format(**fill) for a in WORLD] if world_use == "given" else []
        files = [a.format(**fill) for a in args if a.endswith(".yaml")]  # experiment files lead
        rest = [a.format(**fill) for a in args if not a.endswith(".yaml")]
        jobs[case] = (cwd, files + TINY + extra + rest)
    return run_cli_all(jobs, tmp_path_factory.mktemp("runner"))


def test_the_table_holds_every_input_the_issue_names():
    assert len(CASES) >= 25
    named = {"unfreeze_layers_99", "timm_model_unknown", "pretrained_offline", "strategy_bogus",
             "text_model_empty_folder", "precision_17_mixed", "decoder_with_text_cache_builds"}
    assert named <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(case, results):
    cwd, proc = results[case]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("compclip: error: "), proc.stderr[-2000:]
    assert CASES[case][1] in lines[0], lines[0]
    assert not (cwd / "runs").exists(), "a run folder was created"
    built = (cwd / "data" / "synth" / "manifest.json").exists()
    assert built == (CASES[case][2] == "built"), "the synthetic world was built" if built else "no world was built"
    if CASES[case][2] != "built":
        assert not (cwd / "data").exists(), "the synthetic world or the text cache was written"
