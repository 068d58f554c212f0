"""The access log: one line per finished exchange, in nginx's formats.

Formats (``[gateway] access_log_format``):

- ``"combined"``: nginx's predefined format;
- ``"upstream"``: combined plus upstream address, status, response time and request time;
- ``"json"``: one JSON object a line with every parameterless variable (keys without
  ``$``, values as strings), escaped as nginx's ``escape=json``;
- anything else: a custom template with ``$variables``.

Values are escaped as ``ngx_http_log_escape`` does (``"``, ``\\``, control bytes and
bytes >= 0x7F become ``\\xHH``) and an empty value prints ``-``; in JSON an empty value
is ``""``.

Writes are buffered: lines collect in memory and are written with one ``write`` when
64 KiB have gathered, at most one second after the first unwritten line (a single
``callLater`` on the given clock, armed only while something is pending), and on
:meth:`AccessLog.close` — nginx's ``access_log … buffer= flush=1s``, so a crash loses at
most a second of lines. ``"-"`` writes to the process's real standard output (not
``sys.stdout``, which twistd may redirect into its own log).

This module owns formatting and writing; which exchanges are logged, and when, is the
server protocol's business (it calls :meth:`AccessLog.log` after the response ends).
"""
from __future__ import annotations

import io
import re
import sys
from typing import Optional

from twisted.logger import Logger

from gateway.config.model import GatewaySettings
from gateway.http.variables import (
    SIMPLE_VARIABLES,
    Variable,
    VariableContext,
    compile_template,
)

__all__ = ["AccessLog", "LogFormat", "COMBINED", "UPSTREAM", "JSON_VARIABLES"]

log = Logger()

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status '
            '$body_bytes_sent "$http_referer" "$http_user_agent"')
UPSTREAM = (COMBINED + " upstream=$upstream_addr upstream_status=$upstream_status"
            " upstream_response_time=$upstream_response_time request_time=$request_time")
#: The keys of the JSON format, in order.
JSON_VARIABLES: tuple[str, ...] = tuple(SIMPLE_VARIABLES)

_LOG_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_JSON_UNSAFE = re.compile(rb'[\x00-\x1f"\\]')
_JSON_NAMED = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r",
               0x09: b"\\t", 0x08: b"\\b", 0x0C: b"\\f"}


def _to_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _log_escape_byte(match: re.Match) -> bytes:
    return b"\\x%02X" % match.group()[0]


def _json_escape_byte(match: re.Match) -> bytes:
    byte = match.group()[0]
    return _JSON_NAMED.get(byte) or b"\\u%04x" % byte


def log_escape(value: bytes) -> bytes:
    """``ngx_http_log_escape``."""
    return _LOG_UNSAFE.sub(_log_escape_byte, value)


def json_escape(value: bytes) -> bytes:
    """``ngx_escape_json``: bytes >= 0x80 pass unchanged."""
    return _JSON_UNSAFE.sub(_json_escape_byte, value)


class LogFormat:
    """A compiled log format: ``render(ctx)`` gives one line without its newline."""

    def __init__(self, template_text: str, *, json: bool = False):
        self.text = template_text
        self.json = json
        parts = []
        for part in compile_template(template_text).parts:
            if isinstance(part, Variable):
                parts.append(part.getter)
            else:
                parts.append(part.encode("utf-8"))
        self._parts = tuple(parts)

    @classmethod
    def named(cls, name: str) -> "LogFormat":
        """The format for an ``access_log_format`` value."""
        if name == "combined":
            return cls(COMBINED)
        if name == "upstream":
            return cls(UPSTREAM)
        if name == "json":
            fields = ",".join(f'"{key}":"${{{key}}}"' for key in JSON_VARIABLES)
            return cls("{" + fields + "}", json=True)
        return cls(name)

    def render(self, ctx: VariableContext) -> bytes:
        out = []
        if self.json:
            for part in self._parts:
                if part.__class__ is bytes:
                    out.append(part)
                else:
                    value = part(ctx)
                    if value:
                        data = _to_bytes(value)
                        out.append(json_escape(data) if _JSON_UNSAFE.search(data) else data)
        else:
            for part in self._parts:
                if part.__class__ is bytes:
                    out.append(part)
                else:
                    value = part(ctx)
                    if not value:
                        out.append(b"-")
                    else:
                        data = _to_bytes(value)
                        out.append(log_escape(data) if _LOG_UNSAFE.search(data) else data)
        return b"".join(out)


class AccessLog:
    """Formats finished exchanges and writes them, buffered (see the module docstring).

    ``stream`` replaces the destination (tests): a binary or text file object, never
    closed by :meth:`close`. With ``settings.access_log`` None, :meth:`log` does nothing.
    """

    FLUSH_INTERVAL = 1.0
    BUFFER_SIZE = 64 * 1024

    def __init__(self, settings: GatewaySettings, clock, stream=None):
        self.clock = clock
        self.format = LogFormat.named(settings.access_log_format)
        self.path: Optional[str] = settings.access_log
        self.enabled = settings.access_log is not None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._timer = None
        self._owned = False
        self._text = False
        self._stream = None
        if not self.enabled:
            return
        if stream is not None:
            self._stream = stream
            self._text = isinstance(stream, io.TextIOBase)
        elif self.path == "-":
            stdout = sys.__stdout__
            self._stream = getattr(stdout, "buffer", None) if stdout else None
            if self._stream is None:
                self.enabled = False
        else:
            self._open()

    def _open(self) -> None:
        self._stream = open(self.path, "ab", buffering=0)
        self._owned = True

    def log(self, exchange, ctx: Optional[VariableContext] = None) -> None:
        """Record ``exchange`` (after its response ended). ``ctx`` reuses the handler's
        variable context; by default a fresh one is made."""
        if not self.enabled:
            return
        if ctx is None:
            ctx = VariableContext(exchange, self.clock)
        try:
            line = self.format.render(ctx) + b"\n"
        except Exception:
            log.failure("access log: cannot format a line")
            return
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= self.BUFFER_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.FLUSH_INTERVAL, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered line now."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._buffer or self._stream is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            if self._text:
                self._stream.write(data.decode("utf-8", "backslashreplace"))
            else:
                self._stream.write(data)
            if not self._owned:
                self._stream.flush()
        except (OSError, ValueError) as e:
            log.error("access log: cannot write to {path}: {error}",
                      path=self.path, error=e)

    def reopen(self) -> None:
        """Flush and reopen the file (after log rotation); a no-op for streams."""
        self.flush()
        if self._owned:
            self._stream.close()
            self._open()

    def close(self) -> None:
        """Flush and release the file. Further :meth:`log` calls are ignored."""
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
        self.enabled = False
