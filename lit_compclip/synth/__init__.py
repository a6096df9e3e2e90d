"""Seeded synthetic world of coloured shapes with counterfactual families: the default data and probe suite."""

from lit_compclip.synth.world import hard_negative_stats
from lit_compclip.synth.write import generate

__all__ = ["generate", "hard_negative_stats"]
