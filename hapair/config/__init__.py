"""Configuration: the frozen, validated model and the loader that reports every problem."""

from __future__ import annotations

from hapair.config.load import load_config, read_secret
from hapair.config.model import Config
from hapair.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "read_secret"]
