"""Runs many `compclip` command lines as real processes, each forked from one interpreter that imported the heavy
libraries once (torch, Lightning, transformers: seconds of every fresh process). A child is a separate process
with its own working directory, HOME, stdout, stderr and exit status, exactly as `python -m lit_compclip.cli`.

Usage: python cli_forks.py JOBS.json RESULTS.json PARALLEL [SECONDS.json], JOBS = [{"cwd", "argv", "out", "err"}, ...];
RESULTS gets each job's exit status, SECONDS (if named) each job's wall time from fork to exit.
"""

import json
import os
import sys
import time

# what the CLI itself sets before anything imports huggingface_hub (it reads the setting once, on import)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import lightning  # noqa: E402,F401
import sentence_transformers  # noqa: E402,F401
import timm  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401

from lit_compclip.cli import main  # noqa: E402


def child(job) -> None:
    os.chdir(job["cwd"])
    os.environ["HOME"] = job["cwd"]  # no ~/.netrc: no W&B login, whoever runs the suite
    for fd, path in ((1, job["out"]), (2, job["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    code = 1
    try:
        code = main(job["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(jobs: list[dict], parallel: int) -> tuple[list[int], list[float]]:
    codes, seconds, running, queue = [None] * len(jobs), [None] * len(jobs), {}, list(enumerate(jobs))
    while queue or running:
        while queue and len(running) < parallel:
            index, job = queue.pop(0)
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                child(job)
            running[pid] = index, started
        pid, status = os.wait()
        index, started = running.pop(pid)
        codes[index], seconds[index] = os.waitstatus_to_exitcode(status), time.perf_counter() - started
    return codes, seconds


if __name__ == "__main__":
    jobs = json.load(open(sys.argv[1]))
    codes, seconds = run(jobs, int(sys.argv[3]))
    json.dump(codes, open(sys.argv[2], "w"))
    if len(sys.argv) > 4:
        json.dump(seconds, open(sys.argv[4], "w"))
