"""A run's probe suites scored on the LightningModule's model in eval mode (lit_compclip.probes builds them from the
config). No Lightning, so the benchmarks load it fast; the callback that runs it during training is in callbacks.py."""

from __future__ import annotations

from typing import Any, Mapping

from lit_compclip.encoders.compclip import ModuleEncoder


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
