"""Compositional and retrieval probes, built by name from a plain registry and run on any encoder.

A probe is a class whose constructor takes its data paths and options (checked at once, one-line errors) and whose
`run(encoder, records=None) -> {metric: value}` sees only `encode_image` / `encode_text`. Given a dict as
`records`, it also appends one record per scored example under records[<subset>]: `id`, `image`, `captions`
(the true one first), `scores` (same order) and `correct` (strict rule), which probes/report.py turns into the
per-example dump and the failure pages."""

from __future__ import annotations

import time
from typing import Any, Mapping

from lit_compclip.registry import build

# name -> "module:class"; a probe is imported only when chosen. Adding one = one file + one line here.
PROBES = {
    "sugarcrepe": "lit_compclip.probes.sugarcrepe:SugarCrepe",
    "sugarcrepe_pp": "lit_compclip.probes.sugarcrepe_pp:SugarCrepePP",
    "aro": "lit_compclip.probes.aro:ARO",
    "winoground": "lit_compclip.probes.winoground:Winoground",
    "whatsup": "lit_compclip.probes.whatsup:WhatsUp",
    "retrieval": "lit_compclip.probes.retrieval:Retrieval",
    "zeroshot": "lit_compclip.probes.zeroshot:ZeroShot",
}


def build_probe(name: str, options: Mapping[str, Any] | None = None):
    """Construct probe `name` with `options`; an unknown name or option is a one-line ValueError."""
    return build(PROBES, name, "probe", options)


def build_probes(suites: Mapping[str, Mapping[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """A config's `probes.suites` (name -> options; `type` picks the probe, default the name) -> name -> probe, each
    with at most `limit` examples per file when given. Raises one-line errors."""
    probes = {}
    for name, suite in suites.items():
        kind, options = split_suite(name, suite)
        if limit is not None:
            options.setdefault("limit", limit)
        probes[name] = build_probe(kind, options)
    return probes


def split_suite(name: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `probes.suites.<name>` entry -> (probe type, constructor options); the type defaults to the name."""
    options = dict(options)
    return options.pop("type", name), options


def run_suite(probes: Mapping[str, Any], encoder, records: dict | None = None, truncation=None) -> dict[str, float]:
    """Every probe on `encoder` in one pass, each distinct caption and image encoded once across them (see
    encoders/memo.py): flat `probe/<name>/<metric>` -> value plus each probe's wall time; with `records`, each
    probe's per-example records under records[<name>]. Shared by training's probe callback and `compclip probe`."""
    from lit_compclip.encoders.memo import PassMemo

    memo, results = PassMemo(encoder, truncation), {}
    for name, probe in probes.items():
        start = time.perf_counter()
        found = probe.run(memo) if records is None else probe.run(memo, records=records.setdefault(name, {}))
        for metric, value in found.items():
            results[f"probe/{name}/{metric}"] = float(value)
        results[f"probe/{name}/seconds"] = time.perf_counter() - start
    return results
