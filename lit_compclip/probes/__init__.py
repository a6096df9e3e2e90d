"""Compositional and retrieval probes, built by name from a plain registry and run on any encoder."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.registry import build

# name -> "module:class"; a probe is imported only when chosen. Adding one = one file + one line here.
PROBES = {
    "sugarcrepe": "lit_compclip.probes.sugarcrepe:SugarCrepe",
    "aro": "lit_compclip.probes.aro:ARO",
    "winoground": "lit_compclip.probes.winoground:Winoground",
    "retrieval": "lit_compclip.probes.retrieval:Retrieval",
}


def build_probe(name: str, options: Mapping[str, Any] | None = None):
    """Construct probe `name` with `options`; an unknown name or option is a one-line ValueError."""
    return build(PROBES, name, "probe", options)


def split_suite(name: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `probes.suites.<name>` entry -> (probe type, constructor options); the type defaults to the name."""
    options = dict(options)
    return options.pop("type", name), options
