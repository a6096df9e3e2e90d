"""Every bad `compclip recaption` input through the real command, each its own process (forked from one warm
interpreter by tests/cli_forks.py, a few as fresh `python -m lit_compclip.cli` processes): exit 2, one line
`compclip recaption: error: ...` naming the bad thing, no traceback, nothing written, and never the API key."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

SECRET = "sk-SECRET123"
UNSET = "COMPCLIP_TEST_UNSET_KEY"  # removed from the environment the commands run in
SCENE = ["--backend", "scene"]
OPENAI = ["--backend", "openai", "--model", "vlm", "--base-url", "http://127.0.0.1:9/v1"]

# id: (arguments after `compclip recaption`, run in a folder holding the files of `populate`; text the line names)
CASES = {
    "no_arguments": ([], "no arguments"),
    "only_one_path": (["in", *SCENE], "OUTPUT_DIR is missing"),
    "no_backend": (["in", "out"], "--backend"),
    "unknown_backend": (["in", "out", "--backend", "scnee"], "'scnee'"),
    "unknown_option": (["in", "out", *SCENE, "--colour", "red"], "--colour"),
    "api_key_abbreviation": (["in", "out", *OPENAI, "--api-key", SECRET], "--api-key"),
    "api_key_with_equals": (["in", "out", *OPENAI, f"--api-key={SECRET}"], "--api-key"),
    "api_key_env_given_a_key": (["in", "out", *OPENAI, "--api-key-env", SECRET], "--api-key-env"),
    "api_key_env_unset": (["in", "out", *OPENAI, "--api-key-env", UNSET], f"${UNSET} is not set"),
    "max_failure_rate_2": (["in", "out", *SCENE, "--max-failure-rate", "2"], "--max-failure-rate"),
    "timeout_zero": (["in", "out", *OPENAI, "--timeout", "0"], "--timeout"),
    "timeout_negative": (["in", "out", *OPENAI, "--timeout", "-1"], "--timeout"),
    "timeout_not_a_number": (["in", "out", *OPENAI, "--timeout", "soon"], "--timeout"),
    "key_given_as_the_timeout": (["in", "out", *OPENAI, "--timeout", SECRET], "--timeout"),  # argparse echoes values
    "retries_negative": (["in", "out", *OPENAI, "--retries", "-1"], "--retries"),
    "concurrency_zero": (["in", "out", *OPENAI, "--concurrency", "0"], "--concurrency"),
    "batch_size_on_openai": (["in", "out", *OPENAI, "--batch-size", "256"], "--batch-size"),
    "option_the_backend_lacks": (["in", "out", *SCENE, "--temperature", "0.5"], "--temperature"),
    "openai_without_model": (["in", "out", "--backend", "openai"], "'model'"),
    "base_url_not_a_url": (["in", "out", "--backend", "openai", "--model", "vlm", "--base-url", "localhost:8000/v1"],
                           "localhost:8000/v1"),
    "missing_input": (["nope.tar", "out", *SCENE], "nope.tar"),
    "remote_input": (["https://example.com/00000.tar", "out", *SCENE], "is remote"),
    "inputs_share_a_name": (["in/00000.tar", "other/00000.tar", "out", *SCENE], "'00000.tar'"),
    "input_not_a_tar": (["bad/notatar.tar", "out", *SCENE], "notatar.tar"),
    "input_empty_file": (["bad/empty.tar", "out", *SCENE], "empty.tar"),
    "input_corrupt_tar": (["bad/corrupt.tar", "out", *SCENE], "corrupt.tar"),
    "input_cut_short": (["bad/cut.tar", "out", *SCENE], "cut.tar' is cut short"),
    "output_unwritable": (["in", "locked/out", *SCENE], "locked"),
    "output_beneath_a_file": (["in", "afile/out", *SCENE], "afile"),
    "output_is_a_file": (["in", "afile", *SCENE], "'afile' is a file"),
    "output_is_an_input_folder": (["in", "in", *SCENE], "holds input shards"),
    "output_named_like_a_shard": (["in", "out.tar", *SCENE], "out.tar"),
    "fields_only_commas": (["in", "out", *SCENE, "--fields", ","], "--fields"),
    "prompt_missing": (["in", "out", *SCENE, "--prompt", "nope.txt"], "nope.txt"),
    "prompt_empty": (["in", "out", *SCENE, "--prompt", "empty_prompt.txt"], "empty_prompt.txt"),
    "prompt_unfilled_placeholder": (["in", "out", *SCENE, "--prompt", "colour_prompt.txt"], "{colour}"),
    "shard_index_not_below_num_shards": (["in", "out", *SCENE, "--shard-index", "2", "--num-shards", "2"],
                                         "--shard-index"),
    "num_shards_zero": (["in", "out", *SCENE, "--num-shards", "0"], "--num-shards"),
}
FRESH = ("no_arguments", "api_key_abbreviation", "output_beneath_a_file")  # also run as fresh processes


def write_shard(path, keys):
    with tarfile.open(path, "w") as tar:
        for k in keys:
            for ext, data in (("jpg", b"\xff\xd8\xff\xe0jpeg"), ("txt", f"alt {k}".encode()),
                              ("json", json.dumps({"key": f"{k:09d}"}).encode())):
                info = tarfile.TarInfo(f"{k:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def populate(cwd):
    """Good shards in in/ (and a namesake in other/), bad ones in bad/, a file, a folder to lock, prompts."""
    for folder in ("in", "other", "bad", "locked"):
        (cwd / folder).mkdir()
    write_shard(cwd / "in" / "00000.tar", range(4))
    write_shard(cwd / "in" / "00001.tar", range(4, 8))
    shutil.copy(cwd / "in" / "00000.tar", cwd / "other")
    good = (cwd / "in" / "00000.tar").read_bytes()
    (cwd / "bad" / "notatar.tar").write_text("these are not the shards you are looking for\n")
    (cwd / "bad" / "empty.tar").write_bytes(b"")
    (cwd / "bad" / "corrupt.tar").write_bytes(b"X" + good[1:])  # the first header's checksum no longer holds
    with tarfile.open(cwd / "in" / "00000.tar") as tar:
        third = tar.getmembers()[3].offset
    (cwd / "bad" / "cut.tar").write_bytes(good[:third])  # cut at a header: Python's reader sees a shorter shard
    (cwd / "afile").write_text("a file where a folder should go\n")
    (cwd / "empty_prompt.txt").write_text("  \n")
    (cwd / "colour_prompt.txt").write_text("Describe the image; the {colour} is a hint.")


def snapshot(cwd) -> dict:
    """Every path under cwd with its bytes (None for a folder)."""
    found = {}
    for root, dirs, files in os.walk(cwd):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), cwd)] = None
        for f in files:
            path = os.path.join(root, f)
            found[os.path.relpath(path, cwd)] = open(path, "rb").read()
    return found


def environment(tmp) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (UNSET, "OPENAI_API_KEY")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp / "hf"), "WANDB_MODE": "disabled"}


class Finished:
    def __init__(self, cwd, code: int, out: str, err: str, before: dict, locked: bool):
        self.cwd, self.code, self.out, self.err, self.before, self.locked = cwd, code, out, err, before, locked


def prepared(tmp_path_factory, case):
    cwd = tmp_path_factory.mktemp(case)
    populate(cwd)
    return cwd, snapshot(cwd)


@pytest.fixture(scope="module")
def results(tmp_path_factory, forks):
    """Every case run once, forked two at a time from the session's warm interpreter, each in its own folder; stdout
    and stderr go to files outside it, so the folder can be compared with what it held before."""
    runner = tmp_path_factory.mktemp("runner")
    jobs, done = [], {}
    for case, (args, _) in CASES.items():
        cwd, before = prepared(tmp_path_factory, case)
        jobs.append({"cwd": str(cwd), "argv": ["recaption", *args], "out": str(runner / f"{case}.out"),
                     "err": str(runner / f"{case}.err")})
        done[case] = (cwd, before)
    os.chmod(done["output_unwritable"][0] / "locked", 0o500)
    try:
        codes = forks.run(jobs, 2, env={UNSET: None, "OPENAI_API_KEY": None}, timeout=300)[0]
        # root writes into a folder of mode 0o500 anyway: that case then shows nothing
        locked = not os.access(done["output_unwritable"][0] / "locked", os.W_OK)
    finally:
        os.chmod(done["output_unwritable"][0] / "locked", 0o700)
    return {case: Finished(cwd, code, open(job["out"]).read(), open(job["err"]).read(), before, locked)
            for (case, (cwd, before)), code, job in zip(done.items(), codes, jobs)}


def check(case: str, result: Finished) -> None:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert "Traceback" not in result.err + result.out, result.err[-2000:]
    assert result.code == 2 and result.out == "", (result.code, result.out, result.err)
    assert len(lines) == 1 and lines[0].startswith("compclip recaption: error: "), result.err
    assert CASES[case][1] in lines[0], lines[0]
    assert snapshot(result.cwd) == result.before, "the command left something behind (or changed a file)"
    written = [path for path, data in snapshot(result.cwd).items() if data is not None and SECRET.encode() in data]
    assert SECRET not in result.out + result.err and not written


def test_the_table_holds_the_inputs_the_issue_names():
    assert len(CASES) >= 16
    named = {"no_arguments", "only_one_path", "unknown_backend", "unknown_option", "api_key_abbreviation",
             "max_failure_rate_2", "timeout_zero", "retries_negative", "concurrency_zero", "batch_size_on_openai",
             "missing_input", "input_not_a_tar", "input_corrupt_tar", "output_unwritable", "output_beneath_a_file",
             "output_is_an_input_folder", "fields_only_commas", "prompt_missing", "shard_index_not_below_num_shards",
             "num_shards_zero", "base_url_not_a_url", "api_key_env_unset"}
    assert named <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(case, results):
    if case == "output_unwritable" and not results[case].locked:
        pytest.skip("this user may write into a folder of mode 0o500 (root)")
    check(case, results[case])


@pytest.mark.parametrize("case", FRESH)
def test_bad_input_in_a_fresh_process_is_one_line_too(case, tmp_path_factory):
    cwd, before = prepared(tmp_path_factory, f"fresh_{case}")
    done = subprocess.run([sys.executable, "-m", "lit_compclip.cli", "recaption", *CASES[case][0]], cwd=cwd,
                          env=environment(cwd.parent), capture_output=True, text=True, timeout=120)
    check(case, Finished(cwd, done.returncode, done.stdout, done.stderr, before, True))
