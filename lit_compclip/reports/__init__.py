"""Reports over finished runs: sweeps, the ablation report, comparisons, charts and the notebooks' helpers."""
