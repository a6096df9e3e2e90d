"""Every bad input to `compclip probe`, `synth`, `config`, `batch-stats`, an unknown command and the make targets,
through the real command: exit 2, one line `compclip <command>: error: ...` naming the bad thing, no traceback,
nothing written (each case's folder is compared with what it held before). Most are forked from one warm
interpreter (tests/cli_forks.py); a few run as fresh `python -m lit_compclip.cli` processes, where whatever the
imports print would land on stderr too; the make targets run through `make` itself."""

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import DEFAULT, user_shell_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the active environment as make's VENV, its install stamp never remade (-o): make installs nothing
VENV = sys.prefix
MAKE = ["make", "-s", "-f", os.path.join(REPO, "Makefile"), "-o", os.path.join(VENV, ".lit_compclip-installed"),
        f"VENV={VENV}"]
PROBE_SET = ["--probe", "sugarcrepe", "annotations={cwd}/sugar", "images={cwd}/sugar/images", "subsets=[swap_att]",
             "limit=2"]
TINY_WORLD = ["synth.train_families=2", "synth.eval_families=2", "synth.probe_size=4"]

# id: (how it runs: fork | fresh | make, its command line, texts its error line must hold). "{W}" stands for the
# overrides that point every probe at the ready-made world; {cwd} is the case's own folder (and working directory:
# the default world would be built in its data/synth), holding `afile` (an empty file), zero.ckpt, cut.ckpt,
# half.ckpt (what an interrupted save leaves), plain.ckpt (tensors, not a training checkpoint), sugar/ (a copy of
# the world's SugarCrepe set), half/ (a world whose build stopped: train/ but no manifest.json) and, for the case
# that needs it, w/ (a copy of the world).
CASES = {
    # probe: the command line
    "probe_no_checkpoint": ("fork", ["probe", "{W}"], ["--ckpt PATH is required"]),
    "probe_checkpoint_and_encoder": ("fork", ["probe", "--ckpt", "{ckpt}", "--encoder", "hf:x", "{W}"], ["not both"]),
    "probe_flag_without_value": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--out"], ["--out needs a value"]),
    "probe_flag_twice": ("fork", ["probe", "--ckpt", "{ckpt}", "--out", "a", "--out", "b", "{W}"],
                         ["--out is given twice"]),
    "probe_flag_abbreviated": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--dum", "{cwd}/records"], ["'dum'"]),
    "probe_empty_checkpoint_name": ("fork", ["probe", "--ckpt=", "{W}"], ["--ckpt is given an empty value"]),
    "probe_unknown_override": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "probes.limt=3"], ["'probes.limt'"]),
    "probe_device_unknown": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--device", "quantum"],
                             ["--device 'quantum'"]),
    # probe: the checkpoint or encoder
    "probe_checkpoint_missing": ("fork", ["probe", "--ckpt", "{cwd}/none.ckpt", "{W}"], ["none.ckpt' not found"]),
    "probe_checkpoint_zero_bytes": ("fresh", ["probe", "--ckpt", "{cwd}/zero.ckpt", "{W}"],
                                    ["checkpoint '{cwd}/zero.ckpt' is empty"]),
    "probe_checkpoint_cut_short": ("fork", ["probe", "--ckpt", "{cwd}/cut.ckpt", "{W}"],
                                   ["checkpoint '{cwd}/cut.ckpt' cannot be read"]),
    "probe_checkpoint_half": ("fork", ["probe", "--ckpt", "{cwd}/half.ckpt", "{W}"],
                              ["checkpoint '{cwd}/half.ckpt' cannot be read"]),
    "probe_checkpoint_of_tensors": ("fork", ["probe", "--ckpt", "{cwd}/plain.ckpt", "{W}"],
                                    ["plain.ckpt' is not a lit_compclip training checkpoint"]),
    "probe_encoder_unknown_kind": ("fork", ["probe", "--encoder", "clip:ViT-B-32", "{W}"], ["'clip'"]),
    "probe_encoder_malformed": ("fork", ["probe", "--encoder", "ViT-B-32", "{W}"], ["'ViT-B-32'", "KIND:TARGET"]),
    # probe: where the results go, found before the model is loaded and the probes run
    "probe_out_is_a_file": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--out", "{cwd}/afile"],
                            ["--out '{cwd}/afile' is a file"]),
    "probe_dump_beneath_a_file": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--dump", "{cwd}/afile/dump"],
                                  ["--dump '{cwd}/afile/dump'", "'{cwd}/afile' is a file"]),
    "probe_out_unwritable": ("fork", ["probe", "--ckpt", "{ckpt}", "{W}", "--out", "/proc/compclip-probe"],
                             ["--out '/proc/compclip-probe' cannot be written"]),
    # ... and before the synthetic world the default probes need is built (minutes on the default world)
    "probe_out_is_a_file_before_the_world": ("fork", ["probe", "--ckpt", "{ckpt}", DEFAULT, *TINY_WORLD, "--out",
                                                      "{cwd}/afile"],
                                             ["--out '{cwd}/afile' is a file"]),
    # probe: the probes and their files
    "probe_unknown_probe": ("fork", ["probe", "--ckpt", "{ckpt}", "--probe", "sugarcrep"], ["'sugarcrep'"]),
    "probe_unknown_option": ("fork", ["probe", "--ckpt", "{ckpt}", *PROBE_SET, "colour=red"], ["'colour'"]),
    "probe_annotations_missing": ("fork", ["probe", "--ckpt", "{ckpt}", "--probe", "sugarcrepe",
                                           "annotations={cwd}/none", "images={cwd}/sugar/images"], ["{cwd}/none"]),
    "probe_image_zero_bytes": ("fork", ["probe", "--ckpt", "{ckpt}", *PROBE_SET, "--out", "{cwd}/results"],
                               ["{cwd}/sugar/images/", "is empty (0 bytes)"]),
    # found only when the image is decoded, after the model is loaded: still one line, and no results
    "probe_image_cut_short": ("fork", ["probe", "--ckpt", "{ckpt}", *PROBE_SET, "--out", "{cwd}/results",
                                       "--dump", "{cwd}/records"], ["{cwd}/sugar/images/", "cannot be read"]),
    # synth
    "synth_built_with_other_arguments": ("fork", ["synth", DEFAULT, "synth.out_dir={cwd}/w", *TINY_WORLD, "synth.seed=7"],
                                         ["built with other arguments", "seed: 0 -> 7", "--overwrite"]),
    "synth_half_built": ("fork", ["synth", DEFAULT, "synth.out_dir={cwd}/half", *TINY_WORLD],
                         ["{cwd}/half holds a partial synthetic world", "--overwrite"]),
    "synth_out_dir_is_a_file": ("fresh", ["synth", DEFAULT, "synth.out_dir={cwd}/afile", *TINY_WORLD],
                                ["synth.out_dir '{cwd}/afile' is a file"]),
    "synth_out_dir_beneath_a_file": ("fork", ["synth", DEFAULT, "synth.out_dir={cwd}/afile/synth", *TINY_WORLD],
                                     ["synth.out_dir '{cwd}/afile/synth'", "'{cwd}/afile' is a file"]),
    "synth_out_dir_unwritable": ("fork", ["synth", DEFAULT, "synth.out_dir=/proc/compclip-synth", *TINY_WORLD],
                                 ["synth.out_dir '/proc/compclip-synth' cannot be written"]),
    "synth_unknown_key": ("fork", ["synth", DEFAULT, "synth.out_dir={cwd}/new", "synth.seeed=1"], ["'synth.seeed'"]),
    "synth_experiment_missing": ("fork", ["synth", "{cwd}/none.yaml"], ["{cwd}/none.yaml"]),
    "synth_image_size_too_small": ("fork", ["synth", DEFAULT, "synth.out_dir={cwd}/new", "synth.image_size=8"],
                                   ["synth.image_size"]),
    # config, batch-stats, an unknown command
    "config_bad_value": ("fork", ["config", DEFAULT, "data.batch_size=-4"], ["'data.batch_size'"]),
    "config_experiment_missing": ("fork", ["config", "{cwd}/none.yaml"], ["{cwd}/none.yaml"]),
    "config_not_key_value": ("fork", ["config", DEFAULT, "batch_size"], ["'batch_size' is not of the form key=value"]),
    "batch_stats_unknown_key": ("fork", ["batch-stats", DEFAULT, "data.batchsize=3"], ["'data.batchsize'"]),
    "batch_stats_world_is_a_file": ("fork", ["batch-stats", DEFAULT, "synth.out_dir={cwd}/afile",
                                             "data.train_shards={cwd}/afile/train"],
                                    ["synth.out_dir '{cwd}/afile' is a file"]),
    "batch_stats_half_built_world": ("fork", ["batch-stats", DEFAULT, "synth.out_dir={cwd}/half",
                                              "data.train_shards={cwd}/half/train"],
                                     ["{cwd}/half holds a partial synthetic world", "compclip synth EXP.yaml"]),
    "unknown_command": ("fresh", ["trian", "data.batch_size=4"], ["unknown command 'trian'", "'train'"]),
    # make targets: the command's line (make adds its own `make: *** [...] Error 2` after it) or make's refusal
    "make_train_experiment_missing": ("make", ["train", "EXP={cwd}/none.yaml"],
                                      ["compclip train: error: ", "{cwd}/none.yaml"]),
    "make_synth_experiment_missing": ("make", ["synth", "EXP={cwd}/none.yaml"],
                                      ["compclip synth: error: ", "{cwd}/none.yaml"]),
    "make_probe_checkpoint_missing": ("make", ["probe", f"EXP={DEFAULT}", "CKPT={cwd}/none.ckpt"],
                                      ["compclip probe: error: ", "none.ckpt' not found"]),
    "make_probe_checkpoint_empty": ("make", ["probe", f"EXP={DEFAULT}", "CKPT="],
                                    ["compclip probe: error: ", "--ckpt is given an empty value"]),
    "make_config_bad_args": ("make", ["config", f"EXP={DEFAULT}", "ARGS=data.batch_size=-4"],
                             ["compclip config: error: ", "'data.batch_size'"]),
    "make_finetune_given_exp": ("make", ["finetune", "EXP={cwd}/other.yaml"],
                                ["make finetune: EXP is not used", "experiments/hard_negatives.yaml"]),
    "make_seeds_given_sweep": ("make", ["seeds", "SWEEP={cwd}/other.yaml"], ["make seeds: SWEEP is not used"]),
}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """Not the session's world: one as TINY_WORLD configures it, so `synth` over a copy finds only the seed changed."""
    from lit_compclip.synth import generate

    out = tmp_path_factory.mktemp("world") / "synth"
    generate(str(out), train_families=2, eval_families=2, probe_size=4, plain_lists=1)
    return out


def world_overrides(world) -> list[str]:
    p = f"{world}/probes"
    return [DEFAULT, f"synth.out_dir={world}", "synth.auto=false", "probes.limit=2",
            f"probes.suites.sugarcrepe.annotations={p}/sugarcrepe",
            f"probes.suites.sugarcrepe.images={p}/sugarcrepe/images", f"probes.suites.aro.root={p}/aro",
            f"probes.suites.aro.images={p}/aro/images", f"probes.suites.winoground.examples={p}/winoground/examples.jsonl",
            f"probes.suites.winoground.images={p}/winoground/images",
            f"probes.suites.docci.annotations={p}/docci/docci_descriptions.jsonlines",
            f"probes.suites.docci.images={p}/docci/images"]


def populate(cwd, world, case: str) -> None:
    """The files every case may name (see CASES); the probe images damaged as the case says."""
    (cwd / "afile").write_text("")
    whole = {"state_dict": {"w": torch.zeros(64)}, "hyper_parameters": {}}
    (cwd / "zero.ckpt").write_bytes(b"")
    torch.save(whole, cwd / "plain.ckpt", _use_new_zipfile_serialization=False)
    (cwd / "cut.ckpt").write_bytes((cwd / "plain.ckpt").read_bytes()[:10])  # torch's EOFError: an empty message
    torch.save({"w": torch.zeros(64)}, cwd / "plain.ckpt")
    data = (cwd / "plain.ckpt").read_bytes()
    (cwd / "half.ckpt").write_bytes(data[:len(data) // 2])
    shutil.copytree(world / "probes" / "sugarcrepe", cwd / "sugar")
    if case == "synth_built_with_other_arguments":
        shutil.copytree(world, cwd / "w")
    (cwd / "half" / "train").mkdir(parents=True)
    for image in (cwd / "sugar" / "images").iterdir():
        if case == "probe_image_zero_bytes":
            image.write_bytes(b"")
        elif case == "probe_image_cut_short":
            image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])


def snapshot(folder) -> dict:
    """Every path under `folder` with its size and modification time (None for a folder)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = None if name in dirs else (os.path.getsize(path),
                                                                              os.stat(path).st_mtime_ns)
    return found


def command_line(case: str, cwd, world, ckpt) -> list[str]:
    argv = []
    for arg in CASES[case][1]:
        argv += world_overrides(world) if arg == "{W}" else [arg.format(cwd=cwd, ckpt=ckpt)]
    return argv


def environment(home) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(home / "hf"), "WANDB_MODE": "disabled"}


class Finished:
    def __init__(self, cwd, before, code, out: str, err: str):
        self.cwd, self.before, self.code, self.out, self.err = cwd, before, code, out, err


@pytest.fixture(scope="module")
def results(tmp_path_factory, forks, tiny_world, tiny_checkpoint):
    """Every case once, each in its own folder: the forked ones two at a time from the session's warm interpreter,
    then the fresh processes and make two at a time; stdout and stderr go to files outside the folder."""
    logs = tmp_path_factory.mktemp("logs")
    prepared = {}
    for case in CASES:
        cwd = tmp_path_factory.mktemp(case)
        populate(cwd, tiny_world, case)
        prepared[case] = (cwd, snapshot(cwd))
    forked = [case for case, (kind, _, _) in CASES.items() if kind == "fork"]
    jobs = [{"cwd": str(prepared[case][0]), "argv": command_line(case, prepared[case][0], tiny_world, tiny_checkpoint),
             "out": str(logs / f"{case}.out"), "err": str(logs / f"{case}.err")} for case in forked]
    codes = dict(zip(forked, forks.run(jobs, 2)[0]))

    def spawn(case: str) -> int:
        cwd = prepared[case][0]
        argv = command_line(case, cwd, tiny_world, tiny_checkpoint)
        argv = [*MAKE, *argv] if CASES[case][0] == "make" else [sys.executable, "-m", "lit_compclip.cli", *argv]
        # as a user's shell runs make, not as the suite's own `make test` (whose level would make it say make[1])
        env = user_shell_env(environment(logs))
        with open(logs / f"{case}.out", "w") as out, open(logs / f"{case}.err", "w") as err:
            return subprocess.run(argv, cwd=cwd, env={**env, "HOME": str(cwd)}, stdout=out, stderr=err,
                                  timeout=300).returncode

    spawned = [case for case in CASES if case not in codes]
    with ThreadPoolExecutor(2) as pool:
        codes.update(zip(spawned, pool.map(spawn, spawned)))
    return {case: Finished(cwd, before, codes[case], (logs / f"{case}.out").read_text(),
                           (logs / f"{case}.err").read_text()) for case, (cwd, before) in prepared.items()}


def test_the_table_covers_every_command_it_names():
    kinds = [CASES[c][1][0] if CASES[c][0] != "make" else "make" for c in CASES]
    assert kinds.count("probe") >= 12 and kinds.count("synth") >= 6 and kinds.count("make") >= 5
    assert sum(k in ("config", "batch-stats", "trian") for k in kinds) >= 3
    assert 2 <= sum(kind == "fresh" for kind, _, _ in CASES.values()) <= 3


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, results):
    kind, argv, texts = CASES[case]
    result = results[case]
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert "Traceback" not in result.err + result.out, result.err[-3000:]
    assert result.code == 2, (result.code, result.err[-3000:])
    if kind == "make":  # the command's line, then make's own `make: *** [Makefile:NN: target] Error 2`
        first = lines[0] if lines else ""
        assert all(line.startswith("make: *** [") for line in lines[1:]) and len(lines) <= 2, result.err
        assert first.startswith("compclip ") or re.match(r".*Makefile:\d+: \*\*\* make \S+: ", first), first
    else:
        command = argv[0] if argv[0] in ("probe", "synth", "config", "batch-stats") else None
        assert len(lines) == 1 and result.out == "", (result.out, result.err)
        first = lines[0]
        assert first.startswith(f"compclip {command}: error: " if command else "compclip: error: "), first
    for text in texts:
        assert text.format(cwd=result.cwd) in first, first
    assert snapshot(result.cwd) == result.before, "the command left something behind (or changed a file)"


@pytest.mark.parametrize("existing", [False, True])
def test_a_synth_build_that_fails_midway_leaves_no_half_built_world(tmp_path, monkeypatch, capsys, existing):
    """A full disk while the probe sets are written: one line, and the folder as it was (absent, or the old world)."""
    from lit_compclip.cli import main
    from lit_compclip.synth import write

    out = tmp_path / "a" / "synth"
    args = ["synth", DEFAULT, f"synth.out_dir={out}", *TINY_WORLD]
    if existing:
        assert main([*args, "synth.seed=1"]) == 0
        before = snapshot(out)
    capsys.readouterr()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "write_probes", full_disk)
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compclip synth: error: synth.out_dir: ") and "No space left" in err and "\n" not in err
    if existing:
        assert snapshot(out) == before, "the world built before was changed"
    else:
        assert not (tmp_path / "a").exists(), "a half-built world (or its folders) was left"
