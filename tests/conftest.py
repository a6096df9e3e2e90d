"""Test-wide settings: nothing is fetched from a hub, W&B never prompts."""

import os

# Set before huggingface_hub is imported anywhere: it reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
