"""The experiment config: its schema (schema.py), loading files and overrides (load.py) and the checks run before
anything is built (checks.py)."""

from lit_compclip.config.checks import check_caption_fields, check_option_types, check_trainer, check_values
from lit_compclip.config.load import load_config, normalise_overrides, split_args
from lit_compclip.config.schema import Config
from lit_compclip.errors import BUILD_ERRORS, ConfigError, first_line, reported_as

__all__ = ["BUILD_ERRORS", "Config", "ConfigError", "check_caption_fields", "check_option_types", "check_trainer",
           "check_values", "first_line", "load_config", "normalise_overrides", "reported_as", "split_args"]
