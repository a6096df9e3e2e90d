"""What every benchmark script does around its measurements: --steps and --rounds, progress lines, quiet runs,
the machine the figures were taken on, and the JSON they are saved to."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch


def timing_args(parser, args):
    """--steps and --rounds filled in (3 each, 1 with --quick) and checked: `parser.error` when below 1."""
    default = 1 if args.quick else 3
    # `is None`, not `or`: an explicit 0 is refused, not taken for "unset"
    args.steps = default if args.steps is None else args.steps
    args.rounds = default if args.rounds is None else args.rounds
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    return args


def timed(label: str, fn, *args, **kwargs):
    """Run fn and print one progress line with its wall time (the full run takes minutes)."""
    start = time.perf_counter()
    print(f"[bench] {label} ...", flush=True)
    out = fn(*args, **kwargs)
    print(f"[bench] {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os
    import platform

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": platform.processor() or platform.machine(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        with open("/proc/cpuinfo") as f:
            info["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


@contextlib.contextmanager
def quiet():
    """Each of a benchmark's many runs would print Lightning's banner and the Hugging Face load report: warnings
    only while the benchmark runs (restored after: tests call the scripts' main in their own process)."""
    import logging

    import lightning.pytorch  # noqa: F401  (importing it sets its loggers' levels: first, so that ours hold)
    from transformers.utils import logging as hf_logging

    # Lightning's rank-zero messages go through whichever of these two loggers was imported last
    lightning = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [x.level for x in lightning]
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    for x in lightning:
        x.setLevel(logging.WARNING)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for x, level in zip(lightning, levels):
            x.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def out_of_memory(e: BaseException) -> str:
    """What a GPU benchmark records for a run the card had no memory for, in place of its figures."""
    return f"OutOfMemoryError: {str(e).splitlines()[0][:200]}"


def save(result: dict, path: str, tag: str) -> None:
    """A benchmark's figures as sorted JSON at `path`, and one line saying where (`[tag] wrote PATH`)."""
    import json

    import os

    with open(path + ".part", "w") as f:  # renamed when whole: a run stopped mid-write leaves the last whole file
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(path + ".part", path)
    print(f"[{tag}] wrote {path}")


def script_main(argv, parse, run, table, tag: str = "bench") -> int:
    """A CPU benchmark script's main: parse, run quietly, print its table, save its JSON to --out."""
    args = parse(argv)
    with quiet():
        result = run(args)
    print(table(result), flush=True)
    save(result, args.out, tag)
    return 0
