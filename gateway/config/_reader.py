"""Reading one TOML table at a time, with every error kept and none raised.

This module owns the machinery every section of the loader shares: the error collector
(``Errors``, one ``<toml.path>: <message>`` line per problem, in the order found), the
typed table reader (``Table``: unknown keys with a "did you mean" suggestion, required
keys, getters that record a bad value and return the default), the spelling of key paths
(``upstreams."a b".servers[2]``) and the generic value parsers (integers, strings,
booleans, enums, positive durations and sizes, header names, header tables, condition
lists, ``$variable`` templates).

A value parser takes a TOML value and returns the result or raises ``ValueError`` whose
text is the message part of the error; the getter adds the path. What a key means, and
how tables refer to one another, is left to the section modules (``load``,
``_upstreams``, ``_servers``, ``_locations``); unit grammars are ``units``'s; paths and
addresses relative to the configuration file are ``_addresses``'s.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Iterable, Optional, TypeVar

from gateway.config.units import parse_duration, parse_size, show

T = TypeVar("T")
UNSUPPORTED = "not supported yet"

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(parent: str, key: str) -> str:
    """``parent.key``, the key quoted as TOML would when it is not a bare key."""
    segment = key if _BARE_KEY.fullmatch(key) else show(key)
    return f"{parent}.{segment}" if parent else segment


def suggest(word: str, options: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# -- value parsers: value -> result, or ValueError(message) ------------------------


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None
            ) -> Callable[[object], int]:
    if minimum is not None and maximum is not None:
        wanted = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        wanted = f"an integer >= {minimum}"
    else:
        wanted = "an integer"

    def parse(value: object) -> int:
        if (isinstance(value, bool) or not isinstance(value, int)
                or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)):
            raise ValueError(f"must be {wanted}, got {show(value)}")
        return value

    return parse


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {show(value)}")
    return value


def nonempty_string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {show(value)}")
    return value


def choice(*options: str) -> Callable[[object], str]:
    listed = ", ".join(f'"{o}"' for o in options)

    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            hint = suggest(value, options) if isinstance(value, str) else ""
            raise ValueError(f"must be one of {listed}, got {show(value)}{hint}")
        return value

    return parse


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a duration greater than 0, got {show(value)}")
    return seconds


def positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be a size greater than 0, got {show(value)}")
    return size


def header_name(value: object) -> str:
    if not isinstance(value, str) or not TOKEN.fullmatch(value):
        raise ValueError(f"must be a header name (an HTTP token), got {show(value)}")
    return value


# -- one TOML table being read -----------------------------------------------------


class Errors:
    """Every error of one load, in the order found."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path}: {message}")


class Table:
    """Typed access to one TOML table at ``path``.

    Unknown keys are reported on construction. Getters record a failed value as an error
    at the key's path and return the default, so reading goes on and every error of the
    file is found in one pass.
    """

    def __init__(self, errors: Errors, path: str, value: object, keys: Iterable[str]):
        self.errors = errors
        self.path = path
        # a non-table is reported once; its "required" keys are not reported again
        self.broken = not isinstance(value, dict)
        if self.broken:
            errors.add(path, f"must be a table, got {show(value)}")
            value = {}
        self.data: dict = value
        known = tuple(keys)
        for key in value:
            if key not in known:
                errors.add(self.at(key), "unknown key" + suggest(key, known))

    def at(self, key: str) -> str:
        return key_path(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, message: str) -> None:
        self.errors.add(self.at(key), message)

    def unsupported(self, key: str) -> None:
        self.error(key, UNSUPPORTED)

    def get(self, key: str, default: T, parse: Callable[[object], T],
            required: bool = False) -> T:
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return default
        try:
            return parse(self.data[key])
        except ValueError as e:
            self.error(key, str(e))
            return default

    def list(self, key: str, parse: Callable[[object], T], default: tuple = (),
             required: bool = False, single: bool = True) -> tuple[T, ...]:
        """An array (or, when ``single``, one bare value) parsed item by item; each bad
        item is an error at ``key[i]``."""
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return default
        value = self.data[key]
        if isinstance(value, list):
            items = [(f"{self.at(key)}[{i}]", v) for i, v in enumerate(value)]
        elif single and not isinstance(value, dict):
            items = [(self.at(key), value)]
        else:
            self.error(key, f"must be an array, got {show(value)}")
            return default
        parsed = []
        for path, item in items:
            try:
                parsed.append(parse(item))
            except ValueError as e:
                self.errors.add(path, str(e))
        return tuple(parsed)

    def tables(self, key: str, required: bool = False) -> list[tuple[str, object]]:
        """An array of tables as ``(path, item)`` pairs; items are checked by the caller."""
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables, got {show(value)}")
            return []
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]


# -- readers of a key that need the table: templates, headers, conditions -----------


def template(errors: Errors, path: str, text: Optional[str]) -> None:
    """Report each unknown ``$variable`` of ``text`` as an error at ``path``."""
    if not text or "$" not in text:
        return
    from gateway.http.variables import unknown_variables

    for name in unknown_variables(text):
        errors.add(path, f'unknown variable "${name.lstrip("$")}"')


def header_table(t: Table, key: str, templates: bool = True
                 ) -> tuple[tuple[str, str], ...]:
    """A table of ``Header-Name = "value"``: names are tokens, once each (any case)."""
    if not t.has(key):
        return ()
    value = t.data[key]
    if not isinstance(value, dict):
        t.error(key, f"must be a table of header = value, got {show(value)}")
        return ()
    headers: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for name, text in value.items():
        path = key_path(t.at(key), name)
        if not TOKEN.fullmatch(name):
            t.errors.add(path, "header names must be HTTP tokens")
            continue
        if name.lower() in seen:
            t.errors.add(path, f'duplicate header (also "{seen[name.lower()]}")')
            continue
        seen[name.lower()] = name
        if not isinstance(text, str):
            t.errors.add(path, f"must be a string, got {show(text)}")
            continue
        if templates:
            template(t.errors, path, text)
        headers.append((name, text))
    return tuple(headers)


def conditions(t: Table, key: str, allowed: tuple[str, ...],
               default: frozenset[str]) -> frozenset[str]:
    """``proxy_next_upstream``-style: a condition, a list of them, or ``"off"``."""
    names = t.list(key, choice("off", *allowed), default=None)
    if names is None:
        return default
    if not names and isinstance(t.data[key], list) and not t.data[key]:
        t.error(key, 'must list at least one condition, or be "off"')
    if "off" in names:
        if len(names) > 1:
            t.error(key, '"off" cannot be combined with other conditions')
        return frozenset()
    return frozenset(names)
