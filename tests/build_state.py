"""Which of setup.py's compiled hot-path modules are built, and whether any is stale.

setup.py compiles ``HOT_PATH`` with Cython next to the sources (``make compiled``);
Python imports a compiled module in preference to its ``.py``, so an edited source
whose compiled file was not rebuilt would silently run (and be tested as) the old code.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hot_path() -> tuple:
    """setup.py's HOT_PATH (paths relative to the checkout)."""
    spec = importlib.util.spec_from_file_location("_gateway_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return setup.HOT_PATH


def compiled_file(source: Path):
    """The compiled module built from ``source`` (None when there is none)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def stale() -> list:
    """The compiled modules older than their source, as readable lines."""
    lines = []
    for relative in hot_path():
        source = ROOT / relative
        built = compiled_file(source)
        if built is not None and built.stat().st_mtime < source.stat().st_mtime:
            lines.append(f"{built.relative_to(ROOT)} is older than {relative}")
    return lines
