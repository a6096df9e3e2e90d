"""`compclip recaption INPUT_SHARDS... OUTPUT_DIR --backend NAME [options]`: argument parsing, the run, its summary."""

from __future__ import annotations

import argparse
import datetime
import inspect
import logging
import math
import os
import re
import sys

from lit_compclip.cli_args import Parser, UsageError, first_line, log_to_stderr
from lit_compclip.recaption import BACKENDS, build_backend
from lit_compclip.recaption.paths import check_output, gather_inputs, worker_shards
from lit_compclip.recaption.pipeline import FAIL_FAST, Job, Stopped, run
from lit_compclip.recaption.prompt import DEFAULT_FIELDS, load_template, prompt_version
from lit_compclip.recaption.stats import failed_line, format_summary
from lit_compclip.recaption.tars import check_input
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
    ("--api-key-env", str, "NAME of the environment variable holding the API key (default OPENAI_API_KEY; the key "
                           "itself never goes on the command line and is never printed or written)"),
    ("--timeout", float, "seconds per request"),
    ("--retries", int, "retries per request after the first try"),
    ("--device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("--dtype", str, "auto, bfloat16, float16, float32"),
)
PROVENANCE_OPTIONS = ("max_tokens", "temperature", "top_p", "seed", "dtype")  # what shapes the text
DEFAULT_CHUNK = 16  # requests per backend call when the backend states no batch size or concurrency
USAGE = "compclip recaption INPUT_SHARDS [INPUT_SHARDS ...] OUTPUT_DIR --backend NAME [options]"
# options whose values may be secrets (other than --api-key-env, which holds a variable's name), and key shapes
SECRET_OPTION = re.compile(r"^--?(?:\w+-)*(?:api-?key|key|token|secret|password|passwd|auth)$", re.IGNORECASE)
KEY_LIKE = re.compile(r"^(sk|pk|rk)-\S{6,}$|^hf_\w{16,}$|^Bearer\s", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXAMPLES = """examples:
  compclip recaption data/web data/recap --backend scene              every *.tar in data/web
  compclip recaption data/web/*.tar data/recap --backend scene        what a shell glob gives: several inputs
  compclip recaption 'data/web/{00000..00099}.tar' data/recap ...     a brace pattern (quoted: expanded here)
  compclip recaption a/00000.tar::b/00001.tar data/recap ...          paths joined with '::'"""

log = logging.getLogger(__name__)


def parser() -> Parser:
    p = Parser(
        prog="compclip recaption", usage=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a copy of img2dataset/WebDataset shards whose KEY.json carries a new `recaption`\n"
                    "(and `recaption_provenance`); every original file is kept byte for byte. Rerun the same\n"
                    "command to resume: a shard counts as finished only when its output holds every sample,\n"
                    "was written by the same backend, model, prompt and --fields, and is within\n"
                    "--max-failure-rate; any other output (partial, failed, foreign) is redone, and said so.")
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
                   help="a shard whose failed/samples exceeds this is not finished: it stays NAME.tar.partial, is "
                        "redone when the command is run again, and the run exits 1. If the backend fails all of "
                        f"the run's first {FAIL_FAST} requests (server down, HTTP 5xx, garbage, timeouts) the run "
                        "stops there (exit 1). 1 accepts any failure (default: %(default)s)")
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
    if args.timeout is not None and not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout}")


def _check_key_env(name: str | None) -> None:
    """An --api-key-env given must name a variable that is set. Its name appears in messages, so a key given here
    by mistake stops the run unprinted."""
    if name is None:
        return
    if not ENV_NAME.match(name):
        raise ValueError("--api-key-env takes the NAME of an environment variable holding the key (letters, digits "
                         "and _, e.g. OPENAI_API_KEY), not the key itself; the value given is not such a name (not "
                         "shown: it may be a key)")
    if not os.environ.get(name):
        raise ValueError(f"--api-key-env {name}: the environment variable ${name} is not set (export it first, or "
                         f"leave out --api-key-env for a server that needs no key)")


def secrets(argv: list[str]) -> list[str]:
    """Values on the command line that may be keys: any value of an option named like a key, token or password
    (--api-key-env holds a name, and is checked to be one), and anything shaped like an API key."""
    found = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if arg.startswith("-") and name != "--api-key-env" and SECRET_OPTION.match(name):
            found.append(value if eq else argv[i + 1] if i + 1 < len(argv) else "")
        found += [v for v in (arg, value) if KEY_LIKE.match(v)]
    return sorted({f for f in found if f}, key=len, reverse=True)


def redact(text: str, argv: list[str]) -> str:
    for secret in secrets(argv):
        text = text.replace(secret, "***")
    return text


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line, or UsageError; an unknown option is named without the value that follows it (it may be a
    key: `--api-key sk-...`)."""
    if not argv:
        raise UsageError(f"no arguments; usage: {USAGE} (--help for the options)")
    args, unknown = parser().parse_known_intermixed_args(argv)  # options may sit between the paths
    names = [u.partition("=")[0] for u in unknown if u.startswith("-")]
    if names:
        hint = (" (give the key in an environment variable and its name with --api-key-env)"
                if any(SECRET_OPTION.match(n) for n in names) else "")
        raise UsageError(f"unrecognized option {', '.join(names)}{hint}; options are never abbreviated "
                         f"(--help lists them)")
    if unknown:
        raise UsageError(f"{len(unknown)} unexpected argument(s) (--help for the usage)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every shard is finished, 1 when a shard ended over --max-failure-rate, an input shard was
    unreadable, the backend failed all of the first requests or the output could not be written (one line on
    stderr), 2 for a bad command line (one line, nothing written), 130 when interrupted (rerun to resume)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except UsageError as exn:
        print(f"compclip recaption: error: {redact(first_line(exn, 1000), argv)}", file=sys.stderr)
        return 2
    except SystemExit as exn:  # --help
        return int(exn.code or 0)
    log_to_stderr()
    try:
        _check(args)
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        if not fields:
            raise ValueError("--fields is empty; give e.g. txt,title")
        template = load_template(args.prompt, fields)
        options = backend_options(args, args.backend)
        _check_key_env(args.api_key_env)
        if len(args.paths) < 2:
            raise ValueError(f"OUTPUT_DIR is missing: give the output folder after the input shards ({USAGE})")
        *inputs, out_dir = args.paths
        every, repeats = gather_inputs(inputs)
        check_output(out_dir, every)
        shards = worker_shards(every, args.shard_index, args.num_shards)
        for shard in shards:
            check_input(shard)
        backend = build_backend(args.backend, options)
    except (ValueError, OSError, ImportError) as exn:
        print(f"compclip recaption: error: {redact(first_line(exn, 1000), argv)}", file=sys.stderr)
        return 2
    # Overlapping globs (data/0*.tar data/*.tar) name a shard twice; like `cp a a dir/`, warn and take it once:
    # its output file is named after it, so a second pass could only rewrite the same file.
    if repeats:
        log.warning("%d input shard(s) given more than once, recaptioned once: e.g. %s", len(repeats), repeats[0])
    when = args.provenance_time or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    provenance = {"backend": backend.name, "model": backend.model, "prompt_version": prompt_version(template),
                  "fields": fields, "time": when,
                  "options": {k: v for k, v in options.items() if k in PROVENANCE_OPTIONS}}
    chunk = request_chunk(backend, options)
    job = Job(backend, fields, template, provenance, chunk, args.max_failure_rate)
    progress = None if args.progress == "auto" else args.progress == "bar"
    try:
        stats = run(shards, out_dir, job, overwrite=args.overwrite, progress=progress)
    except ValueError as exn:  # the backend refused every request alike (a rejected key, an unknown model)
        print(f"compclip recaption: error: {redact(first_line(exn, 1000), argv)}", file=sys.stderr)
        return 2
    except (Stopped, OSError) as exn:  # a dead backend; a full disk
        print(f"compclip recaption: error: {redact(first_line(exn, 1000), argv)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compclip recaption: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        backend.close()
    summary = stats.summary()
    print(redact(format_summary(summary), argv))
    line = failed_line(summary, args.max_failure_rate)
    if line:
        print(redact(line, argv), file=sys.stderr)
        return 1
    return 0
