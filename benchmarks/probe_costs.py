"""What the probes cost a run: the passes a run makes, run as the probe callback runs them, in seconds and in
FLOPs."""

from __future__ import annotations

import statistics
import time

from omegaconf import DictConfig


def probe_passes(cfg: DictConfig, model):
    """The probe passes a run of `cfg` makes (one per `probes.every_n_epochs` epochs), as the probe callback runs
    them: yields one callable per pass, which runs it and returns its results. What does not change with the
    weights (token counts, image inputs) is carried from one pass to the next; give `cfg` a fresh text-cache folder
    and the first pass computes the probe captions' frozen prefix, the later ones read it."""
    from lit_compclip.probes import build_probes
    from lit_compclip.training.probing import run_probes
    from lit_compclip.encoders.memo import TransformedImages, TruncationCounts

    probes = build_probes(cfg.probes.suites, cfg.probes.get("limit"))
    carried = TruncationCounts(), TransformedImages()
    for _ in range(max(1, int(cfg.trainer.max_epochs) // int(cfg.probes.every_n_epochs))):
        yield lambda: run_probes(probes, model, None, *carried)


def probe_seconds(cfg: DictConfig, model) -> dict[str, float]:
    """Wall time of each of `probe_passes`. `seconds` is the mean pass; `per_probe` the last pass's seconds per
    probe."""
    passes, results = [], {}
    for run in probe_passes(cfg, model):
        start = time.perf_counter()
        results = run()
        passes.append(time.perf_counter() - start)
    per_probe = {k.split("/")[1]: v for k, v in results.items() if k.endswith("/seconds")}
    return {"seconds": statistics.mean(passes), "passes": passes, "per_probe": per_probe}


def probe_flops(cfg: DictConfig, model) -> list[float]:
    """FLOPs of each of `probe_passes` (torch's FlopCounterMode), counted on passes of their own: the counter slows
    what it counts."""
    from torch.utils.flop_counter import FlopCounterMode

    passes = []
    for run in probe_passes(cfg, model):
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        passes.append(float(counter.get_total_flops()))
    return passes
