"""A recaption run's counts (samples, failures by reason, the backend's answers, shards done, skipped, redone or over
the failure limit) and the summary lines printed at its end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REASON_CHARS = 120  # failure reasons are grouped by their text, cut to this length


@dataclass
class Stats:
    samples: int = 0
    recaptioned: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> samples
    tokens: int | None = None  # None while no backend answer reported a count
    answered: int = 0  # requests the backend answered with a recaption
    unanswered: Counter = field(default_factory=Counter)  # reason -> requests it failed (error, empty, refused)
    shards_done: int = 0  # written and renamed into place: complete and within the failure limit
    shards_finished_before: int = 0  # skipped: this job's finished output from an earlier run
    shards_redone: list = field(default_factory=list)  # "name: why" for an earlier output that was not finished
    over_limit: list = field(default_factory=list)  # "name: k of n samples failed", kept as NAME.tar.partial
    bad_shards: list = field(default_factory=list)  # "path: reason" for inputs that could not be read to the end
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def fail(self, reason: str) -> None:
        self.failures[reason[:REASON_CHARS]] += 1

    def summary(self) -> dict:
        secs = max(self.seconds, 1e-9)
        return {"samples": self.samples, "recaptioned": self.recaptioned, "failed": self.failed,
                "failure_rate": self.failed / self.samples if self.samples else 0.0,
                "failures": dict(self.failures.most_common()), "shards_done": self.shards_done,
                "shards_finished_before": self.shards_finished_before, "shards_redone": self.shards_redone,
                "over_limit": self.over_limit, "bad_shards": self.bad_shards, "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / secs, 2),
                "tokens": self.tokens, "tokens_per_s": None if self.tokens is None else round(self.tokens / secs, 2)}


def format_summary(summary: dict) -> str:
    s = summary
    lines = [f"recaption: {s['samples']} samples, {s['recaptioned']} recaptioned, {s['failed']} failed "
             f"({100 * s['failure_rate']:.1f}%); shards: {s['shards_done']} done, {s['shards_finished_before']} "
             f"already finished (skipped), {len(s['shards_redone'])} redone, {len(s['over_limit'])} over the "
             f"failure limit (kept as .partial), {len(s['bad_shards'])} unreadable",
             f"  {s['samples_per_s']:.1f} samples/s, "
             + (f"{s['tokens_per_s']:.1f} tokens/s" if s["tokens_per_s"] is not None else "tokens/s unknown")
             + f", {s['seconds']:.1f} s"]
    lines += [f"  failed: {n} x {reason}" for reason, n in s["failures"].items()]
    lines += [f"  redone: {r}" for r in s["shards_redone"]]
    lines += [f"  over the failure limit: {o}" for o in s["over_limit"]]
    lines += [f"  unreadable input shard: {b}" for b in s["bad_shards"]]
    return "\n".join(lines)


def failed_line(summary: dict, limit: float) -> str | None:
    """The one stderr line of a run that exits 1 (a shard over the failure limit, an unreadable input), else None."""
    over, bad = summary["over_limit"], summary["bad_shards"]
    parts = []
    if over:
        parts.append(f"{len(over)} shard(s) over --max-failure-rate {limit} kept as NAME.tar.partial (e.g. "
                     f"{over[0]}; failure rate {summary['failure_rate']:.3f} over this run)")
    if bad:
        parts.append(f"{len(bad)} input shard(s) unreadable (e.g. {bad[0]})")
    if not parts:
        return None
    return f"compclip recaption: {'; '.join(parts)}; finished shards are kept; run the same command again to redo " \
           f"the rest"
