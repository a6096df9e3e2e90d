"""How step times become the benchmarks' figures: steady steps and rates, the A B B A order the arms of a ratio run
in, the ratios per block and their spread over the blocks; step functions timed in turn, step by step."""

from __future__ import annotations

import statistics
import time
from typing import Any


def steady(intervals: list[float], warmup: int) -> list[float]:
    """The step durations after the first `warmup` steps (compiling, allocator and cache warm-up)."""
    if len(intervals) <= warmup:
        raise ValueError(f"{len(intervals)} timed steps leave nothing after {warmup} warm-up steps")
    return intervals[warmup:]


def median_rate(intervals: list[float], batch_size: int) -> float:
    """Samples per second at the median step time (robust to a busy machine's spikes)."""
    return batch_size / statistics.median(intervals)


# -- rounds: every ratio's two sides in A B B A order ------------------------------------------------------------

def abba_order(arms: list[str], rounds: int) -> list[tuple[int, str]]:
    """(block, arm) in run order: each block runs the arms forwards, then backwards (A B B A for two arms), so that
    any two arms' runs sit symmetrically in it and a load that rises or falls steadily slows both alike."""
    if rounds < 1 or not arms or len(set(arms)) != len(arms):
        raise ValueError(f"abba_order needs rounds >= 1 and distinct arms, got {rounds} and {arms}")
    return [(block, arm) for block in range(rounds) for arm in [*arms, *reversed(arms)]]


def alternate(arms: dict, rounds: int, label: str = "") -> dict[str, dict]:
    """Run `arms` (name -> a callable taking `first`, true on the arm's first run, and returning {"intervals": step
    seconds, ...}) in `abba_order`. Returns {"times": {arm: [block 0's step seconds (its two runs pooled), ...]},
    "last": {arm: its last run's result}}."""
    times: dict[str, list[list[float]]] = {name: [[] for _ in range(rounds)] for name in arms}
    last: dict[str, dict] = {}
    for block, name in abba_order(list(arms), rounds):
        start = time.perf_counter()
        last[name] = arms[name](name not in last)
        times[name][block].extend(last[name]["intervals"])
        print(f"[bench] {label}block {block + 1}/{rounds} {name}: {statistics.median(last[name]['intervals']):.3f} "
              f"s/step ({time.perf_counter() - start:.1f} s)", flush=True)
    return {"times": times, "last": last}


def speedups(times: dict[str, list[list[float]]], fast: str, slow: str) -> list[float]:
    """Per block: `slow`'s median step time over `fast`'s (above 1: `fast` is faster), both from the same block."""
    return [statistics.median(s) / statistics.median(f) for f, s in zip(times[fast], times[slow])]


def spread(values: list[float]) -> dict[str, Any]:
    """A ratio over rounds: its median, min and max, and every value."""
    if not values:
        raise ValueError("a spread needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": len(values),
            "values": list(values)}


def step_seconds(times: dict[str, list[list[float]]], arm: str) -> float:
    """An arm's median step time over every block."""
    return statistics.median([x for block in times[arm] for x in block])


def describe(s: dict[str, Any]) -> str:
    """A spread as the table prints it: `1.02x (0.98-1.05, 3 rounds)`."""
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}, {s['rounds']} round{'s' * (s['rounds'] != 1)})"


def cache_figures(times: dict[str, list[list[float]]], on: str, off: str, frozen: str) -> dict[str, Any]:
    """A text cache's figures, each per block of `alternate`: the speed-up (off over on), its bound off / (off -
    frozen) (no cache can beat it: it removes the frozen part and adds nothing) and the speed-up over the bound,
    which is (off - frozen) / on; with the median step seconds of the three arms."""
    med = {arm: [statistics.median(b) for b in times[arm]] for arm in (on, off, frozen)}
    speed = [o / n for o, n in zip(med[off], med[on])]
    bound = [o / max(1e-9, o - f) for o, f in zip(med[off], med[frozen])]
    return {"speedup": spread(speed), "bound": spread(bound),
            "speedup_over_bound": spread([s / b for s, b in zip(speed, bound)]),
            "on_s": step_seconds(times, on), "off_s": step_seconds(times, off),
            "frozen_s": step_seconds(times, frozen)}


def hit_rate(counts: list[dict]) -> float | None:
    """The text cache's hit rate over runs' {"hits", "misses"} counts (None when nothing was looked up)."""
    seen = sum(c["hits"] + c["misses"] for c in counts)
    return sum(c["hits"] for c in counts) / seen if seen else None


# -- step functions timed step by step (`make bench-decoder`) ---------------------------------------------------

def time_interleaved(steps_by_arm: dict, items_by_arm: dict[str, list], steps: int,
                     start: int = 0) -> dict[str, list[float]]:
    """Several step functions timed step by step in turn: on item k (k = start, start + 1, ...) each arm runs once,
    in the given order on even k and in reverse on odd k (A B C, C B A, ...), so that a load lasting a few seconds
    slows every arm alike. Returns {arm: `steps` seconds}."""
    names = list(steps_by_arm)
    out: dict[str, list[float]] = {name: [] for name in names}
    for k in range(start, start + steps):
        for name in names if k % 2 == 0 else reversed(names):
            items = items_by_arm[name]
            began = time.perf_counter()
            steps_by_arm[name](items[k % len(items)])
            out[name].append(time.perf_counter() - began)
    return out
