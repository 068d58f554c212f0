"""The site configuration: ``load_config(path)`` → a frozen ``model.Config``.

``model`` owns the shape and defaults, ``load`` the reading and validation (every error
at once, as ``ConfigError.errors``), ``units`` the duration and size grammars. ``load``
reads the top level itself and hands each kind of table to a private module:
``_upstreams``, ``_servers`` and ``_locations``, all built on ``_reader`` (errors, the
table reader, generic value parsers) and ``_addresses`` (paths, addresses, endpoints).
"""
from gateway.config.load import ConfigError, load_config, parse_config

__all__ = ["ConfigError", "load_config", "parse_config"]
