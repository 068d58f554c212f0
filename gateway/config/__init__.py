"""The site configuration: ``load_config(path)`` → a frozen ``model.Config``.

``model`` owns the shape and defaults, ``load`` the reading and validation (every error
at once, as ``ConfigError.errors``), ``units`` the duration and size grammars.
"""
from gateway.config.load import ConfigError, load_config, parse_config

__all__ = ["ConfigError", "load_config", "parse_config"]
