"""Training data without Lightning: shard specs, WebDataset streams (img2dataset layout), caption selection and
hard-negative captions. The LightningDataModule over them is lit_compclip.training.datamodule."""
