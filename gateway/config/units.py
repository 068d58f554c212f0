"""Durations and sizes as the configuration file writes them.

This module owns the two unit grammars of CONFIG.md and nothing else:

* a **duration** is a number of seconds (int or float, not negative) or a string of one
  or more ``<digits><unit>`` parts with units ``ms``, ``s``, ``m``, ``h``, ``d``
  (``"500ms"``, ``"10s"``, ``"1m30s"``); a string of bare digits is seconds, as in nginx;
* a **size** is a number of bytes (int, not negative) or a string ``<digits>[k|m|g]``,
  case-insensitive (``"512k"``, ``"1M"``, ``"10g"``).

Both parsers raise ``ValueError`` whose text is the message part of a configuration
error (``must be a duration …, got "x"``); ``gateway.config.load`` prefixes the TOML path.
"""
from __future__ import annotations

import json
import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# "ms" must be tried before "m"; the whole string must be a run of such parts.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_SIZE = re.compile(r"(\d+)([kmg]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

DURATION_HELP = 'a duration like "500ms", "10s", "5m", "1h", "1d", "1m30s" or a number of seconds'
SIZE_HELP = 'a size like "512k", "1m", "10g" or a number of bytes'


def show(value: object) -> str:
    """Render a TOML value the way the file spells it (strings quoted, ``true``)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def parse_duration(value: object) -> float:
    """Return ``value`` as float seconds; raise ``ValueError`` with the message."""
    if isinstance(value, bool):
        raise ValueError(f"must be {DURATION_HELP}, got {show(value)}")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"must be {DURATION_HELP} (not negative), got {show(value)}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return float(text)
        if _DURATION_WHOLE.fullmatch(text):
            return sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
    raise ValueError(f"must be {DURATION_HELP}, got {show(value)}")


def parse_size(value: object) -> int:
    """Return ``value`` as int bytes; raise ``ValueError`` with the message."""
    if isinstance(value, bool):
        raise ValueError(f"must be {SIZE_HELP}, got {show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be {SIZE_HELP} (not negative), got {show(value)}")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"must be {SIZE_HELP}, got {show(value)}")
