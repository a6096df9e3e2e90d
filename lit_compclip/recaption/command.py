"""`compclip recaption INPUT_SHARDS... OUTPUT_DIR --backend NAME [options]`: argument parsing, the run, its summary."""

from __future__ import annotations

import argparse
import datetime
import inspect
import logging
import os
import sys
from collections import Counter

from lit_compclip.recaption import BACKENDS, build_backend
from lit_compclip.recaption.pipeline import Job, input_shards, run, worker_shards
from lit_compclip.recaption.prompt import DEFAULT_FIELDS, load_template, prompt_version
from lit_compclip.registry import resolve

# (flag, type, help): options handed to the backend, only when given and only if its constructor takes them
BACKEND_OPTIONS = (
    ("--model", str, "model name, hub id or local folder"),
    ("--max-tokens", int, "most tokens to generate per caption"),
    ("--temperature", float, "sampling temperature"),
    ("--top-p", float, "nucleus sampling mass"),
    ("--seed", int, "sampling seed"),
    ("--batch-size", int, "images per model forward pass"),
    ("--concurrency", int, "requests in flight at once"),
    ("--base-url", str, "OpenAI-compatible endpoint, e.g. http://host:8000/v1"),
    ("--api-key-env", str, "environment variable holding the API key (never written anywhere)"),
    ("--timeout", float, "seconds per request"),
    ("--retries", int, "retries per request after the first try"),
    ("--device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("--dtype", str, "auto, bfloat16, float16, float32"),
)
PROVENANCE_OPTIONS = ("max_tokens", "temperature", "top_p", "seed", "dtype")  # what shapes the text
DEFAULT_CHUNK = 16  # requests per backend call when the backend states no batch size or concurrency
USAGE = "compclip recaption INPUT_SHARDS [INPUT_SHARDS ...] OUTPUT_DIR --backend NAME [options]"
EXAMPLES = """examples:
  compclip recaption data/web data/recap --backend scene              every *.tar in data/web
  compclip recaption data/web/*.tar data/recap --backend scene        what a shell glob gives: several inputs
  compclip recaption 'data/web/{00000..00099}.tar' data/recap ...     a brace pattern (quoted: expanded here)
  compclip recaption a/00000.tar::b/00001.tar data/recap ...          paths joined with '::'"""

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compclip recaption", usage=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a copy of img2dataset/WebDataset shards whose KEY.json carries a new `recaption`\n"
                    "(and `recaption_provenance`); every original file is kept byte for byte. Rerun the same\n"
                    "command to resume: finished shards are skipped, a partial one is redone.")
    # one list, split in main(): argparse would hand every path to a greedy INPUT_SHARDS and leave OUTPUT_DIR empty
    p.add_argument("paths", nargs="+", metavar="INPUT_SHARDS ... OUTPUT_DIR",
                   help="INPUT_SHARDS: one or more of a .tar shard, a folder of .tar shards, a brace pattern "
                        "(data/{00000..00099}.tar) or paths joined by '::'; a shard given twice is read once. "
                        "OUTPUT_DIR, always the last: the folder for the output shards (same file names)")
    p.add_argument("--backend", required=True, help=f"one of {sorted(BACKENDS)}")
    p.add_argument("--fields", default=",".join(DEFAULT_FIELDS),
                   help="comma-separated prompt fields: txt = KEY.txt (fills {alt_text}), other names = KEY.json "
                        "fields (fill {name}; empty when a sample lacks one) (default: %(default)s)")
    p.add_argument("--prompt", metavar="FILE", help="prompt template file with {alt_text}, {title}, ... placeholders "
                                                    "(default: a grounded dense-description prompt)")
    for flag, typ, text in BACKEND_OPTIONS:
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--shard-index", type=int, default=0, help="this worker's index: it takes shards j with "
                                                              "j %% num-shards == shard-index (default: 0)")
    p.add_argument("--num-shards", type=int, default=1, help="number of workers splitting the shards (default: 1)")
    p.add_argument("--max-failure-rate", type=float, default=0.05,
                   help="exit 1 when failed/samples exceeds this (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo shards that are already finished in OUTPUT_DIR (default: skip them)")
    p.add_argument("--provenance-time", metavar="ISO",
                   help="time written into the provenance (default: this run's start, UTC); fix it to make reruns "
                        "byte-identical")
    p.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                   help="tqdm bar or one log line per shard (default: bar on a terminal)")
    return p


def backend_options(args: argparse.Namespace, name: str) -> dict:
    """The backend options the user gave; one the backend does not take is a ValueError naming both."""
    cls = resolve(BACKENDS, name, "recaption backend")
    takes = [n for n in inspect.signature(cls).parameters if n != "self"]
    given = {}
    for flag, _, _ in BACKEND_OPTIONS:
        dest = flag[2:].replace("-", "_")
        value = getattr(args, dest)
        if value is None:
            continue
        if dest not in takes:
            valid = ", ".join("--" + t.replace("_", "-") for t in takes) or "none"
            raise ValueError(f"backend {name!r} does not take {flag} (it takes: {valid})")
        given[dest] = value
    return given


def request_chunk(backend, options: dict) -> int:
    """Requests per backend.caption() call: a batch, or enough to keep every concurrent request slot busy."""
    batch = options.get("batch_size") or getattr(backend, "batch_size", None) or 0
    slots = options.get("concurrency") or getattr(backend, "concurrency", None) or 0
    return max(int(batch), 4 * int(slots)) or DEFAULT_CHUNK


def _check(args: argparse.Namespace) -> None:
    if not 0.0 <= args.max_failure_rate <= 1.0:
        raise ValueError(f"--max-failure-rate must be in [0, 1], got {args.max_failure_rate}")
    for flag in ("max_tokens", "batch_size", "concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.retries is not None and args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")


def gather_inputs(specs: list[str]) -> list[str]:
    """Local shard paths of every INPUT_SHARDS spec (each '::' part expanded by pipeline.input_shards), in order."""
    paths, seen, repeats = [], set(), []
    for spec in specs:
        for part in spec.split("::"):
            for path in input_shards(part):
                real = os.path.realpath(path)
                if real in seen:
                    repeats.append(path)
                    continue
                seen.add(real)
                paths.append(path)
    # Overlapping globs (data/0*.tar data/*.tar) name a shard twice; like `cp a a dir/`, warn and take it once:
    # its output file is named after it, so a second pass could only rewrite the same file.
    if repeats:
        log.warning("%d input shard(s) given more than once, recaptioned once: e.g. %s", len(repeats), repeats[0])
    names = Counter(os.path.basename(p) for p in paths)
    twice = [n for n, c in names.items() if c > 1]
    if twice:  # as pipeline.input_shards says for one spec
        raise ValueError(f"input shards share the file name {twice[0]!r}; output shards keep input names, so each "
                         f"name must be unique")
    return paths


def check_output(out_dir: str, shards: list[str]) -> None:
    """Refuse an OUTPUT_DIR that is a file or an input folder before any backend is built."""
    if out_dir.endswith(".tar") and not os.path.isdir(out_dir):  # a glob swallowed OUTPUT_DIR, or a typo
        what = "an existing .tar file" if os.path.exists(out_dir) else "a name ending in .tar"
        raise ValueError(f"OUTPUT_DIR {out_dir!r} is {what}, not a folder; give the output folder as the last "
                         f"argument, after the input shards")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"OUTPUT_DIR {out_dir!r} is a file, not a folder")
    out_real = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(s)) == out_real for s in shards):  # run() says it too, after the build
        raise ValueError(f"output folder {out_dir!r} holds input shards; write the recaptioned shards elsewhere")


def format_summary(summary: dict) -> str:
    s = summary
    lines = [f"recaption: {s['samples']} samples, {s['recaptioned']} recaptioned, {s['failed']} failed "
             f"({100 * s['failure_rate']:.1f}%); shards: {s['shards_done']} done, {s['shards_finished_before']} "
             f"already finished (skipped), {len(s['shards_redone'])} redone, {len(s['bad_shards'])} unreadable",
             f"  {s['samples_per_s']:.1f} samples/s, "
             + (f"{s['tokens_per_s']:.1f} tokens/s" if s["tokens_per_s"] is not None else "tokens/s unknown")
             + f", {s['seconds']:.1f} s"]
    lines += [f"  failed: {n} x {reason}" for reason, n in s["failures"].items()]
    lines += [f"  unreadable input shard: {b}" for b in s["bad_shards"]]
    return "\n".join(lines)


def _setup_logging() -> None:
    logger = logging.getLogger("lit_compclip")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done, 1 when the failure rate passed --max-failure-rate or an input shard was unreadable,
    2 for a usage error, 130 when interrupted (rerun to resume)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_intermixed_args(argv)  # options may sit between the paths
    except SystemExit as exn:  # argparse printed the usage and the error (or --help)
        return int(exn.code or 0)
    _setup_logging()
    try:
        _check(args)
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        if not fields:
            raise ValueError("--fields is empty; give e.g. txt,title")
        template = load_template(args.prompt, fields)
        options = backend_options(args, args.backend)
        if len(args.paths) < 2:
            raise ValueError(f"OUTPUT_DIR is missing: give the output folder after the input shards ({USAGE})")
        *inputs, out_dir = args.paths
        every = gather_inputs(inputs)
        check_output(out_dir, every)
        shards = worker_shards(every, args.shard_index, args.num_shards)
        backend = build_backend(args.backend, options)
    except (ValueError, FileNotFoundError, ImportError) as exn:
        print(f"compclip recaption: error: {exn}", file=sys.stderr)
        return 2
    when = args.provenance_time or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    provenance = {"backend": backend.name, "model": backend.model, "prompt_version": prompt_version(template),
                  "fields": fields, "time": when,
                  "options": {k: v for k, v in options.items() if k in PROVENANCE_OPTIONS}}
    chunk = request_chunk(backend, options)
    job = Job(backend, fields, template, provenance, chunk)
    progress = None if args.progress == "auto" else args.progress == "bar"
    try:
        stats = run(shards, out_dir, job, overwrite=args.overwrite, progress=progress)
    except ValueError as exn:
        print(f"compclip recaption: error: {exn}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compclip recaption: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        backend.close()
    summary = stats.summary()
    print(format_summary(summary))
    if summary["bad_shards"]:
        return 1
    if summary["failure_rate"] > args.max_failure_rate:
        print(f"compclip recaption: failure rate {summary['failure_rate']:.3f} > --max-failure-rate "
              f"{args.max_failure_rate}", file=sys.stderr)
        return 1
    return 0
