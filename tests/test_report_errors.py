"""Every bad input to `compclip sweep`, `compare` and `breakdown`, each run as its own process through the CLI: exit 2,
one stderr line `compclip <command>: error: ...` naming the bad thing, nothing on stdout, and the working directory
exactly as it was (no out folder, no compare.md, no half file). Sweep cases use --dry-run: their check must come
before any run, and a missed one lists the runs and exits 0 instead of training."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

GRID = "method: grid\nparameters:\n  seed: {values: [0, 1]}\n  trainer.max_steps: {value: 1}\n"
SPECS = {
    "grid.yaml": GRID,
    "random.yaml": "method: random\nparameters:\n  optim.lr: {min: 0.0001, max: 0.01}\n",
    "not_yaml.yaml": "method: grid\nparameters: [\n",
    "list.yaml": "- method\n- grid\n",
    "empty.yaml": "",
    "no_parameters.yaml": "method: grid\n",
    "no_value.yaml": "method: grid\nparameters:\n  seed: {q: 1}\n",
    "unknown_method.yaml": "method: hyperband\nparameters:\n  seed: {values: [0]}\n",
    "no_range.yaml": "method: random\nparameters:\n  optim.lr: {distribution: uniform}\n",
    "text_range.yaml": "method: random\nparameters:\n  optim.lr: {min: low, max: high}\n",
    "log_from_zero.yaml": "method: random\nparameters:\n  optim.lr: {distribution: log_uniform_values, min: 0, max: 1}\n",
    "min_above_max.yaml": "method: random\nparameters:\n  seed: {min: 9, max: 1}\n",
    "other_program.yaml": "program: train.py\n" + GRID,
    "command_without_args.yaml": "command: [python, -m, lit_compclip.cli, train]\n" + GRID,
    "name_a_list.yaml": "name: [a, b]\n" + GRID,
}
# probes.json contents; json.loads reads Infinity, -Infinity and NaN
RESULTS = {
    "good": '{"probe/sugarcrepe/swap_att": 0.75, "probe/aro/vg_relation": 0.5, "probe/sugarcrepe/n": 8}',
    "infinity": '{"probe/sugarcrepe/swap_att": Infinity, "probe/aro/vg_relation": 0.5}',
    "nan": '{"probe/sugarcrepe/swap_att": 0.75, "probe/aro/vg_relation": NaN}',
    "minus_infinity": '{"probe/winoground/group": -Infinity}',
    "huge": '{"probe/sugarcrepe/swap_att": 1' + "0" * 400 + "}",
    "invalid": '{"probe/sugarcrepe/swap_att": 0.7',
    "array": "[0.5, 0.7]",
    "no_metric": '{"note": "not a result", "probe/sugarcrepe/swap_att": "0.7"}',
}


def record(true: str, false: str, correct=True, **extra) -> str:
    return json.dumps({"id": "1", "image": "img/1.jpg", "captions": [true, false], "scores": [0.3, 0.2],
                       "correct": correct, **extra}) + "\n"


GOOD = record("a red star and a blue cross", "a red cross and a blue star")
# per run folder: its probe_records/sugarcrepe/swap_obj.jsonl (bytes), and an optional config.yaml
RUNS = {
    "good": GOOD.encode(),
    "bad_json_line": (GOOD + '{"id": "2", "captions": \n').encode(),
    "record_a_list": b'["a red star", "a blue cross"]\n',
    "no_captions": b'{"id": "1", "correct": true}\n',
    "one_caption": (GOOD + GOOD + json.dumps({"captions": ["a red star and a blue cross"], "correct": True})
                    + "\n").encode(),
    "no_correct": b'{"captions": ["a red star and a blue cross", "a red cross and a blue star"]}\n',
    "correct_a_word": record("a red star and a blue cross", "a red cross and a blue star", correct="yes").encode(),
    "image_a_number": record("a red star and a blue cross", "a red cross and a blue star", image=7).encode(),
    "blank": b"\n\n",
    "latin1": "a caption in latin-1: caf\u00e9".encode("latin-1") + b"\xff\n",
    # a run on real data, probed on the real SugarCrepe: its records name no shape of the world
    "real_data": (record("A man riding a horse on a beach.", "A horse riding a man on a beach.")
                  + GOOD).encode(),
}
REAL_CONFIG = "data:\n  train_shards: /data/laion/{00000..00099}.tar\n  caption_fields: {txt: 1.0}\n"

# id: (command, arguments, what the error line must hold). {tmp} is the case's own working directory.
CASES = {
    # sweep: the counts and runner options
    "sweep_count_zero": ("sweep", ["specs/grid.yaml", "--dry-run", "--count", "0"], "--count: must be at least 1"),
    "sweep_count_minus_one": ("sweep", ["specs/random.yaml", "--dry-run", "--count", "-1"],
                              "--count: must be at least 1"),
    "sweep_count_a_word": ("sweep", ["specs/grid.yaml", "--dry-run", "--count", "two"], "--count: 'two'"),
    "sweep_jobs_zero": ("sweep", ["specs/grid.yaml", "--dry-run", "--jobs", "0"], "--jobs: must be at least 1"),
    "sweep_jobs_minus_one": ("sweep", ["specs/grid.yaml", "--dry-run", "--jobs=-1"], "--jobs: must be at least 1"),
    "sweep_out_a_file": ("sweep", ["specs/grid.yaml", "--dry-run", "--out", "afile"], "--out 'afile' is a file"),
    "sweep_out_beneath_a_file": ("sweep", ["specs/grid.yaml", "--dry-run", "--out", "afile/sweep"], "afile"),
    "sweep_no_spec": ("sweep", ["--dry-run"], "name a sweep spec"),
    "sweep_unknown_option": ("sweep", ["specs/grid.yaml", "--dry-run", "--paralel", "2"], "--paralel"),
    "sweep_abbreviated_option": ("sweep", ["specs/grid.yaml", "--dry", "--cou", "1"], "--dry"),
    # sweep: the spec file
    "sweep_spec_missing": ("sweep", ["specs/nothing.yaml", "--dry-run"], "specs/nothing.yaml"),
    "sweep_spec_a_folder": ("sweep", ["specs", "--dry-run"], "specs is a folder"),
    "sweep_spec_not_yaml": ("sweep", ["specs/not_yaml.yaml", "--dry-run"], "cannot parse specs/not_yaml.yaml"),
    "sweep_spec_a_list": ("sweep", ["specs/list.yaml", "--dry-run"], "specs/list.yaml must hold a mapping"),
    "sweep_spec_empty": ("sweep", ["specs/empty.yaml", "--dry-run"], "specs/empty.yaml is empty"),
    "sweep_no_parameters": ("sweep", ["specs/no_parameters.yaml", "--dry-run"], "'parameters'"),
    "sweep_parameter_without_value": ("sweep", ["specs/no_value.yaml", "--dry-run"], "parameter 'seed' needs"),
    "sweep_unknown_method": ("sweep", ["specs/unknown_method.yaml", "--dry-run"], "method 'hyperband'"),
    "sweep_distribution_without_range": ("sweep", ["specs/no_range.yaml", "--dry-run", "--count", "2"],
                                         "parameter 'optim.lr': distribution 'uniform' needs 'min' and 'max'"),
    "sweep_range_of_words": ("sweep", ["specs/text_range.yaml", "--dry-run", "--count", "2"],
                             "parameter 'optim.lr': 'min' and 'max' must be numbers"),
    "sweep_log_range_from_zero": ("sweep", ["specs/log_from_zero.yaml", "--dry-run", "--count", "2"],
                                  "parameter 'optim.lr': log_uniform_values needs 'min' above 0"),
    "sweep_min_above_max": ("sweep", ["specs/min_above_max.yaml", "--dry-run", "--count", "2"],
                            "parameter 'seed': 'min' 9 is above 'max' 1"),
    "sweep_other_program": ("sweep", ["specs/other_program.yaml", "--dry-run"], "program 'train.py'"),
    "sweep_command_without_args": ("sweep", ["specs/command_without_args.yaml", "--dry-run"], "command ["),
    "sweep_name_a_list": ("sweep", ["specs/name_a_list.yaml", "--dry-run"], "'name' must be a string"),
    # sweep: overrides given to every run
    "sweep_override_without_equals": ("sweep", ["specs/grid.yaml", "--dry-run", "seed"], "override 'seed'"),
    "sweep_override_unknown_key": ("sweep", ["specs/grid.yaml", "--dry-run", "optim.lrr=0.1"], "'optim.lrr'"),
    "sweep_override_of_run_dir": ("sweep", ["specs/grid.yaml", "--dry-run", "run_dir=elsewhere"],
                                  "override 'run_dir=elsewhere'"),
    "sweep_override_of_a_swept_key": ("sweep", ["specs/grid.yaml", "--dry-run", "seed=3"], "override 'seed=3'"),
    # compare: values no chart can draw, and an earlier comparison in --out left as it was
    "compare_infinity": ("compare", ["results/infinity", "results/good", "--out", "earlier"],
                         "results/infinity/probes.json: 'probe/sugarcrepe/swap_att' is inf"),
    "compare_nan": ("compare", ["results/good", "results/nan", "--out", "new"],
                    "results/nan/probes.json: 'probe/aro/vg_relation' is nan"),
    "compare_minus_infinity": ("compare", ["results/minus_infinity/probes.json"], "'probe/winoground/group' is -inf"),
    "compare_number_too_large": ("compare", ["results/huge"], "results/huge/probes.json: 'probe/sugarcrepe/swap_att'"),
    # compare: unreadable or foreign inputs
    "compare_invalid_json": ("compare", ["results/invalid"], "results/invalid/probes.json: not valid JSON"),
    "compare_an_array": ("compare", ["results/array"], "results/array/probes.json: expected a JSON object"),
    "compare_no_metric": ("compare", ["results/no_metric"], "results/no_metric/probes.json: holds no probe metric"),
    "compare_missing_input": ("compare", ["results/good", "results/nowhere"], "results/nowhere"),
    "compare_folder_without_results": ("compare", ["results/empty"], "results/empty"),
    # compare: the command line and --out
    "compare_out_a_file": ("compare", ["results/good", "--out", "afile"], "--out 'afile' is a file"),
    "compare_out_beneath_a_file": ("compare", ["results/good", "--out", "afile/cmp"], "afile"),
    "compare_png_a_folder": ("compare", ["results/good", "--out", "png_a_folder"], "folder compare.png"),
    "compare_names_one_short": ("compare", ["results/good", "results/good", "--names", "a"], "--names"),
    "compare_names_without_value": ("compare", ["results/good", "--names"], "--names"),
    "compare_nothing": ("compare", ["--out", "cmp"], "name at least one run folder"),
    "compare_unknown_option": ("compare", ["results/good", "--colour", "red"], "--colour"),
    "compare_abbreviated_option": ("compare", ["results/good", "--name", "a"], "--name"),
    # breakdown: run folders
    "breakdown_missing_run": ("breakdown", ["runs/nowhere"], "runs/nowhere"),
    "breakdown_run_a_file": ("breakdown", ["afile"], "'afile' is a file"),
    "breakdown_no_records": ("breakdown", ["results/empty"], "results/empty: no probe records"),
    "breakdown_second_run_bad": ("breakdown", ["runs/good", "runs/nowhere"], "runs/nowhere"),
    "breakdown_no_run": ("breakdown", [], "runs"),
    "breakdown_unknown_option": ("breakdown", ["runs/good", "--by", "shape"], "--by"),
    # breakdown: corrupt or foreign records, each named by file and line
    "breakdown_bad_json_line": ("breakdown", ["runs/bad_json_line"], "swap_obj.jsonl line 2: not valid JSON"),
    "breakdown_record_a_list": ("breakdown", ["runs/record_a_list"], "swap_obj.jsonl line 1: not a probe record"),
    "breakdown_record_without_captions": ("breakdown", ["runs/no_captions"], "swap_obj.jsonl line 1: not a probe"),
    "breakdown_record_of_one_caption": ("breakdown", ["runs/one_caption"], "swap_obj.jsonl line 3: not a probe"),
    "breakdown_record_without_correct": ("breakdown", ["runs/no_correct"], "swap_obj.jsonl line 1: not a probe"),
    "breakdown_correct_a_word": ("breakdown", ["runs/correct_a_word"], "swap_obj.jsonl line 1: not a probe"),
    "breakdown_image_a_number": ("breakdown", ["runs/image_a_number"], "swap_obj.jsonl line 1: not a probe"),
    "breakdown_records_file_blank": ("breakdown", ["runs/blank"], "swap_obj.jsonl: holds no records"),
    "breakdown_records_not_utf8": ("breakdown", ["runs/latin1"], "swap_obj.jsonl: cannot be read"),
    "breakdown_run_on_real_data": ("breakdown", ["runs/real_data"],
                                   "swap_obj.jsonl line 1: the caption 'A man riding a horse on a beach.' names none"),
}
# Run as a user runs them, each a fresh interpreter: whatever imports print must not add a line.
FRESH = ("sweep_count_zero", "compare_infinity")


def populate(cwd) -> None:
    """Every case's inputs, in each case's own working directory."""
    (cwd / "afile").write_text("a file where a folder should be\n")
    (cwd / "specs").mkdir()
    for name, text in SPECS.items():
        (cwd / "specs" / name).write_text(text)
    for name, text in RESULTS.items():
        (cwd / "results" / name).mkdir(parents=True)
        (cwd / "results" / name / "probes.json").write_text(text)
    (cwd / "results" / "empty").mkdir()
    (cwd / "earlier").mkdir()  # an earlier comparison: a refused one must leave it as it was
    (cwd / "earlier" / "compare.md").write_text("# Probe comparison: a, b\n")
    (cwd / "earlier" / "compare.png").write_bytes(b"\x89PNG earlier")
    (cwd / "png_a_folder" / "compare.png").mkdir(parents=True)  # compare.md would be written, then the chart fail
    for name, data in RUNS.items():
        folder = cwd / "runs" / name / "probe_records" / "sugarcrepe"
        folder.mkdir(parents=True)
        (folder / "swap_obj.jsonl").write_bytes(data)
    (cwd / "runs" / "real_data" / "config.yaml").write_text(REAL_CONFIG)


def snapshot(cwd) -> dict[str, str]:
    """Every path under `cwd` and a digest of its bytes ('dir' for a folder)."""
    found = {}
    for root, dirs, files in os.walk(cwd):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), cwd)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, cwd)] = hashlib.sha256(f.read()).hexdigest()
    return found


class Finished:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory, forks):
    """Every case run once in its own populated working directory, most forked from the session's warm interpreter:
    (snapshot before, process, snapshot after)."""
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "MPLCONFIGDIR": str(logs / "matplotlib")}  # matplotlib's cache, not in the case's folder (its HOME)
    jobs, before = {}, {}
    for case, (command, args, _) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        populate(cwd)
        before[case] = snapshot(cwd)
        jobs[case] = {"cwd": str(cwd), "argv": [command, *args], "out": str(logs / f"{case}.out"),
                      "err": str(logs / f"{case}.err")}
    forked = [case for case in CASES if case not in FRESH]
    done = {}
    for case, code in zip(forked, forks.run([jobs[c] for c in forked], 2)[0]):
        job = jobs[case]
        done[case] = Finished(code, open(job["out"]).read(), open(job["err"]).read())
    for case in FRESH:
        job = jobs[case]
        proc = subprocess.run([sys.executable, "-m", "lit_compclip.cli", *job["argv"]], cwd=job["cwd"],
                              env={**env, "HOME": job["cwd"]}, capture_output=True, text=True, timeout=300)
        done[case] = Finished(proc.returncode, proc.stdout, proc.stderr)
    return {case: (before[case], done[case], snapshot(jobs[case]["cwd"])) for case in CASES}


def test_the_table_covers_each_command_and_the_issues_inputs():
    commands = [command for command, _, _ in CASES.values()]
    assert all(commands.count(c) >= 8 for c in ("sweep", "compare", "breakdown")) and len(CASES) >= 24
    named = {"sweep_count_zero", "sweep_count_minus_one", "sweep_out_a_file", "compare_infinity",
             "breakdown_bad_json_line", "breakdown_record_without_captions", "breakdown_run_on_real_data"}
    assert named <= set(CASES) and set(FRESH) <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, results):
    before, proc, after = results[case]
    command, _, named = CASES[case]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-1000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"compclip {command}: error: "), proc.stderr[-2000:]
    assert named in lines[0], lines[0]
    assert proc.stdout == "", proc.stdout[-1000:]  # no table, no run list, nothing of a good run before a bad one
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_help_still_prints_and_exits_0(capsys):
    from lit_compclip.cli import main

    for command, words in (("sweep", "--dry-run"), ("compare", "RUN_OR_RESULT"), ("breakdown", "runs")):
        assert main([command, "--help"]) == 0
        captured = capsys.readouterr()
        assert words in captured.out and captured.err == ""
