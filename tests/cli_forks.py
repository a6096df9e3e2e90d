"""Runs many `compclip` command lines as real processes, each forked from one interpreter that imported the heavy
libraries once (torch, Lightning, transformers: seconds of every fresh process). A child is a separate process
with its own working directory, HOME, stdout, stderr and exit status, exactly as `python -m lit_compclip.cli`.

Usage: python cli_forks.py JOBS.json RESULTS.json PARALLEL [SECONDS.json], JOBS = [{"cwd", "argv", "out", "err"}, ...];
RESULTS gets each job's exit status, SECONDS (if named) each job's wall time from fork to exit.
Or python cli_forks.py --serve: requests as JSON lines on stdin, each answered by one line on stdout; the suite's
session keeps one such interpreter (tests/conftest.py, fixture `forks`):
  {"jobs": JOBS, "parallel": N, "env": {...}} -> {"codes": [...], "seconds": [...]} once all have ended;
  {"start": JOB, "env": {...}} -> {"pid": PID} at once (the test signals it, say), then
  {"wait": PID, "timeout": S} -> {"code": ...}, null if it is still running after S seconds.
A job may also name "env" (variables to set, null to unset, in its process only), "threads" (torch's intra-op threads:
the interpreter runs with one; OMP_NUM_THREADS is read once, on import), "session": true (a process group of its own,
as Popen's start_new_session) and "script": a Python file run as `python SCRIPT ARGV...` would run it, instead of
`compclip ARGV...`.
"""

import json
import os
import runpy
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


def child(job, env: dict) -> None:
    if job.get("session"):
        os.setsid()
    os.chdir(job["cwd"])
    for name, value in {**env, **job.get("env", {}), "HOME": job["cwd"]}.items():  # HOME: no ~/.netrc, no W&B login
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    stdin = os.open(os.devnull, os.O_RDONLY)  # never the server's request pipe
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, job["out"]), (2, job["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    code = 1
    try:
        if job.get("script"):
            sys.argv = [job["script"], *job["argv"]]
            runpy.run_path(job["script"], run_name="__main__")
            code = 0
        else:
            code = main(job["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


ENDED: dict[int, int] = {}  # started jobs a batch reaped before their own wait came: pid -> exit status


def start(job, env: dict | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        child(job, env or {})
    return pid


def run(jobs: list[dict], parallel: int, env: dict | None = None) -> tuple[list[int], list[float]]:
    codes, seconds, running, queue = [None] * len(jobs), [None] * len(jobs), {}, list(enumerate(jobs))
    while queue or running:
        while queue and len(running) < parallel:
            index, job = queue.pop(0)
            running[start(job, env)] = index, time.perf_counter()
        pid, status = os.wait()
        if pid not in running:
            ENDED[pid] = status
            continue
        index, started = running.pop(pid)
        codes[index], seconds[index] = os.waitstatus_to_exitcode(status), time.perf_counter() - started
    return codes, seconds


def wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while pid not in ENDED:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ENDED[pid] = status
        elif time.monotonic() >= deadline:
            return None
        else:
            time.sleep(0.05)
    return os.waitstatus_to_exitcode(ENDED.pop(pid))


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            answer = {"pid": start(request["start"], request.get("env"))}
        elif "wait" in request:
            answer = {"code": wait(request["wait"], request["timeout"])}
        else:
            codes, seconds = run(request["jobs"], request["parallel"], request.get("env"))
            answer = {"codes": codes, "seconds": seconds}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
        os._exit(0)  # its input closed: nothing to clean up, and the libraries' own exit handlers take seconds
    jobs = json.load(open(sys.argv[1]))
    codes, seconds = run(jobs, int(sys.argv[3]))
    json.dump(codes, open(sys.argv[2], "w"))
    if len(sys.argv) > 4:
        json.dump(seconds, open(sys.argv[4], "w"))
