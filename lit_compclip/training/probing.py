"""The configured probe suites of a run: built from the config, scored on a model in eval mode. No Lightning, so
`compclip probe` and the benchmarks load it fast; the callback that runs it during training is in callbacks.py."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.encoders.compclip import ModuleEncoder


def build_probes(suites: Mapping[str, Mapping[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """name -> probe object; `type` picks the registry entry (default: the name). Raises one-line errors."""
    from lit_compclip.probes import build_probe, split_suite

    probes = {}
    for name, suite in suites.items():
        kind, options = split_suite(name, suite)
        if limit is not None:
            options.setdefault("limit", limit)
        probes[name] = build_probe(kind, options)
    return probes


def run_probes(probes: Mapping[str, Any], module, records: dict | None = None, truncation=None,
               inputs=None) -> dict[str, float]:
    """Score every probe in eval mode; returns flat `probe/<name>/<metric>` -> value plus each probe's wall time.

    With `records` (a dict), also fills records[<name>][<subset>] with per-example results (see probes/report).
    `truncation` (encoders.memo.TruncationCounts) and `inputs` (TransformedImages) keep the captions' token counts
    and the images' model inputs from one pass to the next."""
    from lit_compclip.probes import run_suite

    was_training = module.training
    module.eval()
    try:
        return run_suite(probes, ModuleEncoder(module.model, inputs), records, truncation)
    finally:
        module.train(was_training)
