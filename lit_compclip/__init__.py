"""lit_compclip: CLIP-style training that learns visual composition (arXiv 2412.15396) with Lightning."""

__version__ = "0.1.0"
