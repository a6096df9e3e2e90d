"""Training data: WebDataset image-text streams (img2dataset layout) and caption selection."""

from .captions import CaptionPicker, split_sentences
from .datamodule import WebDataModule, expand_shards

__all__ = ["CaptionPicker", "WebDataModule", "expand_shards", "split_sentences"]
