"""Compositional and retrieval probes, built by name from a plain registry and run on any encoder.

A probe is a class whose constructor takes its data paths and options (checked at once, one-line errors) and whose
`run(encoder, records=None) -> {metric: value}` sees only `encode_image` / `encode_text`. Given a dict as
`records`, it also appends one record per scored example under records[<subset>]: `id`, `image`, `captions`
(the true one first), `scores` (same order) and `correct` (strict rule), which probes/report.py turns into the
per-example dump and the failure pages."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.registry import build

# name -> "module:class"; a probe is imported only when chosen. Adding one = one file + one line here.
PROBES = {
    "sugarcrepe": "lit_compclip.probes.sugarcrepe:SugarCrepe",
    "aro": "lit_compclip.probes.aro:ARO",
    "winoground": "lit_compclip.probes.winoground:Winoground",
    "retrieval": "lit_compclip.probes.retrieval:Retrieval",
    "zeroshot": "lit_compclip.probes.zeroshot:ZeroShot",
}


def build_probe(name: str, options: Mapping[str, Any] | None = None):
    """Construct probe `name` with `options`; an unknown name or option is a one-line ValueError."""
    return build(PROBES, name, "probe", options)


def split_suite(name: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `probes.suites.<name>` entry -> (probe type, constructor options); the type defaults to the name."""
    options = dict(options)
    return options.pop("type", name), options
