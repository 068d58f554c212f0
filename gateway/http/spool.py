"""Response buffering for ``proxy_buffering = true``.

nginx reads the upstream's response as fast as the upstream sends it, keeps it in memory
buffers and spills the rest to a temporary file, so a slow client does not hold the
upstream connection (which can then go back to the keepalive pool). This module owns
that buffer: a :class:`ResponseSpool` sits between the upstream response and the client
exchange, registered as the exchange's push producer. While the client keeps up, bytes
pass straight through; while the client's transport is paused, they accumulate in memory
up to ``memory_limit``, then in a temporary file up to ``file_limit``; beyond that the
upstream is paused (``pause_upstream``) until the spool drains.

It knows nothing of HTTP framing or of upstream connections: it receives body bytes and
an end marker (with the response's trailer fields, if any), and calls the exchange's
``send_body``, then ``send_trailers`` once everything spooled was sent, then ``finish``.
"""
from __future__ import annotations

import tempfile
from collections import deque
from typing import Callable, Optional

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

#: nginx's default proxy_buffers (8 × 8k) plus a busy buffer, rounded
DEFAULT_MEMORY_LIMIT = 64 * 1024
#: nginx's default proxy_max_temp_file_size
DEFAULT_FILE_LIMIT = 1024 * 1024 * 1024
_READ_CHUNK = 64 * 1024


@implementer(IPushProducer)
class ResponseSpool:
    """Buffers a response body between an upstream and a slow client."""

    def __init__(
        self,
        exchange,
        pause_upstream: Callable[[], None],
        resume_upstream: Callable[[], None],
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        file_limit: int = DEFAULT_FILE_LIMIT,
    ):
        self._exchange = exchange
        self._pause_upstream = pause_upstream
        self._resume_upstream = resume_upstream
        self.memory_limit = memory_limit
        self.file_limit = file_limit
        self._memory: deque[bytes] = deque()
        self._memory_size = 0
        self._file = None
        self._file_write = 0      # bytes written to the temp file
        self._file_read = 0       # bytes read back from it
        self._client_paused = False
        self._upstream_paused = False
        self._ended = False
        self._stopped = False
        self._trailers = None

    # -- upstream side --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        if not self._client_paused and not self.buffered:
            self._exchange.send_body(data)
            return
        if self._file is None and self._memory_size + len(data) <= self.memory_limit:
            self._memory.append(data)
            self._memory_size += len(data)
        else:
            self._spill(data)
        if self.buffered >= self.memory_limit + self.file_limit and not self._upstream_paused:
            self._upstream_paused = True
            self._pause_upstream()

    def finish(self, trailers=None) -> None:
        """The upstream response is complete; finish the client response once drained,
        passing ``trailers`` (already filtered) after the last spooled byte."""
        self._ended = True
        self._trailers = trailers
        if not self.buffered and not self._stopped:
            self._complete()

    @property
    def buffered(self) -> int:
        """Bytes held (memory and file) and not yet written to the client."""
        return self._memory_size + self._file_write - self._file_read

    @property
    def spilled(self) -> bool:
        return self._file is not None

    # -- IPushProducer (the client side calls these) ----------------------------

    def pauseProducing(self) -> None:
        self._client_paused = True

    def resumeProducing(self) -> None:
        self._client_paused = False
        self._drain()

    def stopProducing(self) -> None:
        self._stopped = True
        self._close_file()

    # -- internals ---------------------------------------------------------

    def _spill(self, data: bytes) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gateway-spool-")
        self._file.seek(self._file_write)
        self._file.write(data)
        self._file_write += len(data)

    def _drain(self) -> None:
        while not self._client_paused and not self._stopped:
            if self._memory:
                data = self._memory.popleft()
                self._memory_size -= len(data)
            elif self._file is not None and self._file_read < self._file_write:
                self._file.seek(self._file_read)
                data = self._file.read(min(_READ_CHUNK, self._file_write - self._file_read))
                self._file_read += len(data)
                if self._file_read == self._file_write:
                    self._close_file()
            else:
                break
            self._exchange.send_body(data)
        if self._upstream_paused and self.buffered < self.memory_limit:
            self._upstream_paused = False
            self._resume_upstream()
        if self._ended and not self.buffered and not self._stopped:
            self._complete()

    def _complete(self) -> None:
        self._stopped = True
        exchange = self._exchange
        exchange.unregister_producer()
        if self._trailers:
            exchange.send_trailers(self._trailers)
        exchange.finish()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._file_write = self._file_read = 0
