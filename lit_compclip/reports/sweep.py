"""`compclip sweep SPEC.yaml`: the runs of a W&B sweep spec, executed locally, several at once, resumably.

The spec is the file `wandb sweep` takes (method, parameters, metric, command). Every run is
`compclip train --experiment E --key=value ...` with the run's parameters (the arguments a W&B agent passes),
in `<out>/<run id>/`; a run whose folder holds `sweep_run.json` finished and is not redone, an unfinished one
starts again from scratch. At the end `<out>/REPORT.md` summarises every finished run (lit_compclip/reports/ablation.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lit_compclip.cli_args import Parser, UsageError, check_writable_folder
from lit_compclip.config import ConfigError, load_config, normalise_overrides, split_args
from lit_compclip.reports.runs import PROBES, SWEEP_RECORD
from lit_compclip.reports.sweep_spec import expand, load_spec

SET_BY_SWEEP = ("run_dir", "name")  # each run's folder and name come from --out and its parameters


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_args(params: dict[str, Any]) -> list[str]:
    """The arguments a W&B agent gives the command: `--name=value` per parameter (`experiment` names a YAML file)."""
    return [f"--{name}={_value_text(value)}" for name, value in params.items()]


def run_id(params: dict[str, Any], spec: dict[str, Any]) -> str:
    """A readable folder name from the parameters that vary: `default-seed1`, `lr0.001-layers2`, ..."""
    varying = [n for n, p in spec["parameters"].items() if "value" not in p] or list(params)
    parts = []
    for name in varying:
        value = params[name]
        if name == "experiment":
            parts.append(Path(str(value)).stem)
        else:
            short = name.split(".")[-1]
            parts.append(f"{short}{value:.3g}" if isinstance(value, float) else f"{short}{value}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def plan(spec: dict[str, Any], out: Path, overrides: list[str], count: int | None, seed: int) -> list[dict]:
    """Every run: id, folder, command-line arguments and its checked config (so a bad spec fails before any run)."""
    varying = {name for name, p in spec["parameters"].items() if "value" not in p}
    for item in normalise_overrides(split_args(list(overrides))[1]):
        key = item.split("=", 1)[0].strip()
        if key in SET_BY_SWEEP:
            raise ConfigError(f"override {item!r}: the sweep sets each run's {key} (its folders go under --out)")
        if key in varying:  # given after the spec's parameters, it would make every run the same
            raise ConfigError(f"override {item!r}: the spec sweeps {key}; change its values in the spec instead")
    runs, seen = [], set()
    for params in expand(spec, count, seed):
        rid = run_id(params, spec)
        if rid in seen:
            raise ConfigError(f"two runs of the spec share the folder name {rid!r}; make their parameters differ")
        seen.add(rid)
        args = run_args(params) + list(overrides) + [f"run_dir={out / rid}", f"name={rid}"]
        files, rest = split_args(args)
        try:
            cfg = load_config(files, rest)
        except ConfigError as e:
            raise ConfigError(f"run {rid}: {e}") from None
        runs.append({"id": rid, "dir": out / rid, "params": params, "args": args, "cfg": cfg})
    return runs


def finished(run: dict) -> bool:
    return (run["dir"] / SWEEP_RECORD).is_file()


def _slots(jobs: int | None) -> tuple[int, list[dict[str, str]]]:
    """How many runs at once and each slot's environment: one GPU each, or an equal share of the CPU cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = jobs or (gpus or min(4, cores))
    threads = str(max(1, cores // jobs))
    envs = []
    for k in range(jobs):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
        envs.append(env)
    return jobs, envs


def execute(runs: list[dict], out: Path, jobs: int | None = None, echo=print) -> dict[str, list[str]]:
    """Run every unfinished run, `jobs` at a time; returns {"done": [...], "skipped": [...], "failed": [...]}."""
    status = {"done": [], "skipped": [], "failed": []}
    todo = []
    for run in runs:
        if finished(run):
            status["skipped"].append(run["id"])
        else:
            todo.append(run)
    if status["skipped"]:
        echo(f"{len(status['skipped'])} run(s) already finished, not redone: {', '.join(status['skipped'])}")
    if not todo:
        return status
    from lit_compclip.config.plugins import prepare

    prepare(todo[0]["cfg"])  # once, before parallel runs could race to build it
    jobs, envs = _slots(jobs)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    free, active = list(range(jobs)), {}
    queue = list(todo)
    try:
        while queue or active:
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                if run["dir"].exists():
                    echo(f"[{run['id']}] unfinished earlier: its folder is cleared and the run starts again")
                    shutil.rmtree(run["dir"])
                log = open(out / "logs" / f"{run['id']}.log", "w")
                cmd = [sys.executable, "-m", "lit_compclip.cli", "train", *run["args"],
                       "trainer.enable_progress_bar=false"]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **envs[slot]})
                active[proc] = (run, slot, log, time.perf_counter())
                echo(f"[{run['id']}] started ({len(status['done']) + len(status['failed']) + len(active)}"
                     f"/{len(todo)}), log: {log.name}")
            time.sleep(0.5)
            for proc in [p for p in active if p.poll() is not None]:
                run, slot, log, start = active.pop(proc)
                log.close()
                free.append(slot)
                seconds = time.perf_counter() - start
                ok = proc.returncode == 0 and (run["dir"] / PROBES).is_file()
                if ok:
                    record = {"id": run["id"], "params": run["params"], "args": run["args"], "seconds": seconds}
                    (run["dir"] / SWEEP_RECORD).write_text(json.dumps(record, indent=1) + "\n")
                    status["done"].append(run["id"])
                    echo(f"[{run['id']}] finished in {seconds / 60:.1f} min")
                else:
                    status["failed"].append(run["id"])
                    echo(f"[{run['id']}] FAILED (exit {proc.returncode}); see {log.name}")
    except KeyboardInterrupt:
        for proc in active:
            proc.terminate()
        echo("interrupted: unfinished runs start again on the next `compclip sweep` of this spec")
        raise
    return status


def at_least_one(text: str) -> int:
    """--count and --jobs: a whole number, 1 or more (0 would mean 'all' to a slice, -1 'all but one')."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def check_out(out: Path) -> None:
    """The sweep's folder must be one this user can make or write: found before any run starts, not at the end."""
    check_writable_folder(str(out), "--out", ConfigError)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = Parser(prog="compclip sweep", description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", help="a W&B sweep spec (YAML)")
    ap.add_argument("--out", help="folder of the runs and REPORT.md (default runs/<spec name>)")
    ap.add_argument("--jobs", type=at_least_one, help="runs at once (default: one per GPU, else min(4, CPU cores))")
    ap.add_argument("--count", type=at_least_one, help="number of runs (random/bayes specs: draws; grid: the first N)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their arguments, run nothing")
    ap.add_argument("overrides", nargs="*", help="key=value given to every run, after the spec's parameters")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.spec is None:  # optional to argparse only so that its message does not call the overrides required
        raise UsageError("name a sweep spec: compclip sweep SPEC.yaml [options] [key=value ...]")
    return args


def main(argv: list[str]) -> int:
    try:
        args = parse(list(argv))
        spec = load_spec(args.spec)
        out = Path(args.out or os.path.join("runs", spec.get("name") or Path(args.spec).stem))
        check_out(out)
        runs = plan(spec, out, args.overrides, args.count, args.seed)
    except SystemExit as done:  # --help was printed
        return int(done.code or 0)
    except (UsageError, ConfigError) as e:
        print(f"compclip sweep: error: {e}", file=sys.stderr)
        return 2
    if spec["method"] == "bayes":
        print("note: bayes search needs the W&B sweep server; locally its parameters are drawn at random")
    if args.dry_run:
        for run in runs:
            state = "finished" if finished(run) else "to run"
            print(f"{run['id']:<32} {state:<9} compclip train {' '.join(run['args'])}")
        return 0
    print(f"sweep {args.spec}: {len(runs)} runs in {out}")
    try:
        status = execute(runs, out, args.jobs)
    except ConfigError as e:  # the synthetic world the runs share could not be built
        print(f"compclip sweep: error: {e}", file=sys.stderr)
        return 2
    from lit_compclip.reports.ablation import write_report

    report = write_report(out, spec_path=args.spec, failed=status["failed"])
    print(f"\n{report['summary']}\nreport: {report['path']}")
    return 1 if status["failed"] else 0
