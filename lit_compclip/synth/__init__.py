"""Seeded synthetic world of coloured shapes with counterfactual families: the embedded default's data and probe
sets, a plug-in (plugin.py) that the config reaches by name."""

from __future__ import annotations

from lit_compclip.synth.world import hard_negative_stats
from lit_compclip.synth.write import generate

__all__ = ["generate", "hard_negative_stats"]
