"""The training config: schema, validation, the keys each schedule reads, and the generated reference."""
from libs.config.reference import config_reference_markdown, write_config_reference
from libs.config.schedule_keys import check_schedule_keys, iter_max, learning_rate
from libs.config.schema import NETS, SCHEMA, Key
from libs.config.validate import Config, ConfigError, ConfigFileNotFoundError, load_config, save_config, validate_config

__all__ = [
    "SCHEMA", "NETS", "Key", "Config", "ConfigError", "ConfigFileNotFoundError", "load_config", "validate_config",
    "save_config", "check_schedule_keys", "iter_max", "learning_rate", "config_reference_markdown",
    "write_config_reference",
]
