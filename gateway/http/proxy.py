"""The ``proxy_pass`` handler: one request relayed to a peer, with nginx's retry rules.

Theory of operation. A :class:`ProxyRequest` lives for one client exchange. It takes a
peer from the upstream group (``acquire``), gets a connection for it (keepalive pool or
a fresh connect), sends the request head and body, and relays the response. Every
attempt ends with exactly one ``lease.release(outcome)``. Between attempts it applies
``proxy_next_upstream`` exactly as nginx's ``ngx_http_upstream_next`` does:

- ``error``, ``timeout`` and ``invalid_header`` always count as a failure of the peer;
  they are retried only when listed. ``http_500|502|503|504|429`` retry when listed and
  then count as failures, ``http_403|404`` retry but never count (``Outcome.NEXT``).
- no retry when no try is left, after ``proxy_next_upstream_timeout``, for POST, LOCK
  and PATCH once the request was sent unless ``non_idempotent`` is listed, once part of
  an unbuffered request body was sent, and never once response bytes reached the client.
- a failure after the response head reached the client is not retried and, as in
  nginx, not counted against the peer: the client sees a truncated response.
- a reused keepalive connection that fails before answering a single byte was stale:
  the same peer is tried again on a fresh connection, without using up a try.

When no peer is live the client gets 502 ("no live upstreams"), unless the group has a
``queue`` and a peer this request could use is only at ``max_conns``: then the request
waits in the group's FIFO (``group.wait``) and goes on when a lease frees, or gets 502
when the queue is full or its ``timeout`` passes (``$upstream_queue_time`` says how
long it waited); a client that goes away leaves the queue.

When no retry is possible the client gets 502 (504 for timeouts), or the last upstream
response when the condition was a status. With ``proxy_request_buffering`` the body is
read completely first (and re-sent in full on a retry); without it the body streams with
backpressure both ways. With ``proxy_buffering`` the response goes through a
:class:`~gateway.http.spool.ResponseSpool`; without it the upstream connection is paused
while the client is slow.

Trailers pass both ways, filtered by :func:`trailer_fields` (and, for the response,
by the location's hidden headers, as nginx's ``proxy_pass_trailers`` does): the
upstream's response trailers go to ``exchange.send_trailers`` right before
``finish`` (after everything spooled), and the client's request trailers
(``exchange.request_trailers`` at body end) go in the last chunk of a chunked request
body; a buffered body that has trailers is sent chunked for that reason.

An ``Upgrade`` request (:func:`~gateway.http.tunnel.requested_upgrade`) on a location
with ``proxy_websocket`` goes out with its ``Upgrade`` and ``Connection: upgrade``, and
is retried by the rules above until a peer answers. A ``101`` is relayed and the try's
connection and lease pass to a :class:`~gateway.http.tunnel.Tunnel`; the lease is
released (``OK``) once both connections closed. A ``101`` to a request that asked for no
upgrade is an ``invalid_header`` failure: the client never sees what followed it.

Header construction, routing, the upstream client and the balancer live elsewhere; this
module only sequences them.
"""
from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from gateway.http.client import UpstreamError
from gateway.http.exchange import UpstreamState
from gateway.http.headers import RequestHeaderPlan, ResponseHeaderPlan
from gateway.http.routing import upstream_uri
from gateway.http.spool import DEFAULT_MEMORY_LIMIT as SPOOL_MEMORY_LIMIT, ResponseSpool
from gateway.http.tunnel import MSG_IDLE_TIMEOUT, Tunnel, downstream_end, requested_upgrade
from gateway.http.variables import VariableContext, compile_template
from gateway.upstream import Outcome, PickContext, QueueError

log = Logger()

_NON_IDEMPOTENT = frozenset({"POST", "LOCK", "PATCH"})
MSG_UNSOLICITED_101 = ("upstream sent \"101 Switching Protocols\" to a request "
                       "without Upgrade while reading response header from upstream")
#: the pool key of a TLS connection is this prefix and the peer's name
TLS_POOL_PREFIX = "https "
_NOT_QUEUED = 0.0   # $upstream_queue_time of a try that did not wait
# statuses proxy_next_upstream can name, and whether a retry on them is a peer failure
_STATUS_CONDITIONS = {
    500: ("http_500", Outcome.FAILED),
    502: ("http_502", Outcome.FAILED),
    503: ("http_503", Outcome.FAILED),
    504: ("http_504", Outcome.FAILED),
    429: ("http_429", Outcome.FAILED),
    403: ("http_403", Outcome.NEXT),
    404: ("http_404", Outcome.NEXT),
}


#: Fields that never travel in a trailer section, in either direction: hop-by-hop and
#: framing fields, and those RFC 9110 §6.5.1 says a recipient must not merge from
#: trailers (routing, request modifiers, authentication, response control data, how
#: to process the content).
FORBIDDEN_TRAILERS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
    b"upgrade", b"trailer", b"content-length", b"host",
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range", b"if-match",
    b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"authentication-info", b"proxy-authentication-info", b"cookie", b"set-cookie",
    b"age", b"date", b"expires", b"location", b"retry-after", b"vary",
    b"content-encoding", b"content-type", b"content-range",
})


def trailer_fields(headers) -> list:
    """The fields of ``headers`` that may be forwarded as trailers: none of
    :data:`FORBIDDEN_TRAILERS`, no pseudo-header, nothing that could break the
    framing of an HTTP/1.1 trailer section (CR, LF, NUL)."""
    kept = []
    for name, value in headers:
        if name.lower() in FORBIDDEN_TRAILERS or name[:1] == b":":
            continue
        if b"\r" in value or b"\n" in value or b"\0" in value or b"\n" in name:
            continue
        kept.append((name, value))
    return kept


def proxy_host(proxy_pass) -> str:
    """``$proxy_host``: the host (and port, when written) of ``proxy_pass`` as written."""
    rest = proxy_pass.text.split("://", 1)[-1]
    return rest.split("/", 1)[0] if not rest.startswith("unix:") else "localhost"


class ProxyHandler:
    """The handler of one ``proxy_pass`` location: shared, precompiled parts."""

    def __init__(self, location, group, pool, connector, clock,
                 response_plan: Optional[ResponseHeaderPlan] = None, tls=None,
                 metrics=None):
        self.location = location
        self.group = group
        self.pool = pool
        self.connector = connector
        self.clock = clock
        #: ``proxy_pass https://``: the group's :class:`~gateway.tls.client.UpstreamTLS`.
        #: Its pooled connections are kept under their own key, so a group used with
        #: both schemes never hands a TLS connection to a cleartext request or back.
        self.tls = tls
        self.pool_prefix = TLS_POOL_PREFIX if tls is not None else ""
        #: the live Upgrade tunnels of this location (:mod:`gateway.http.tunnel`),
        #: also counted in ``metrics`` (``gateway_tunnels``) when given
        self.tunnels: set = set()
        self.metrics = metrics
        keepalive = group.settings.keepalive > 0
        self.request_plan = RequestHeaderPlan(location, keepalive=keepalive)
        self.response_plan = response_plan or ResponseHeaderPlan(location)
        self.proxy_host = proxy_host(location.proxy_pass)
        self.passes_target = location.proxy_pass.uri is None
        hash_key = group.settings.hash_key
        #: ``hash_key`` of the group compiled (validated at load), rendered per request
        self.hash_key = compile_template(hash_key).renderer if hash_key else None

    def pick_context(self, exchange, ctx: VariableContext) -> Optional[PickContext]:
        """What the group's balancer needs of this request (None for round robin)."""
        if not self.group.needs_context:
            return None
        hash_key = self.hash_key(ctx) if self.hash_key is not None else ""
        return PickContext(remote_addr=exchange.connection.remote_addr, hash_key=hash_key)

    def __call__(self, exchange) -> None:
        ProxyRequest(self, exchange).start()


class ProxyRequest:
    """One client request being proxied (a BodyReceiver and a ResponseHandler)."""

    __slots__ = (
        "h", "exchange", "location", "clock", "request", "method", "state", "ctx",
        "attempts", "lease", "conn", "body", "body_complete", "request_sent",
        "streamed_body", "client_started", "spool", "done", "try_start", "started", "uri",
        "waiting", "queued_at", "trailers", "upgrade",
    )

    def __init__(self, handler: ProxyHandler, exchange):
        self.h = handler
        self.exchange = exchange
        self.location = handler.location
        self.clock = handler.clock
        self.request = exchange.request
        self.method = self.request.method
        self.state = UpstreamState()
        exchange.variables["upstream"] = self.state
        exchange.variables["proxy_host"] = handler.proxy_host
        self.ctx = VariableContext(exchange, self.clock)
        self.attempts = None
        self.lease = None
        self.conn = None
        self.body: Optional[list[bytes]] = None   # the buffered request body
        self.body_complete = False
        self.request_sent = False       # any byte of this request went to a peer
        self.streamed_body = False      # part of an unbuffered body went upstream
        self.client_started = False     # response bytes reached the client
        self.spool: Optional[ResponseSpool] = None
        self.done = False
        self.try_start = 0.0
        self.waiting = None             # the Deferred[Lease] while in the group's queue
        self.queued_at = 0.0
        self.trailers: Optional[list] = None   # the response's, filtered
        self.upgrade: Optional[bytes] = None   # the client's Upgrade, when forwarded

    # -- start --------------------------------------------------------------

    def start(self) -> None:
        self.started = self.clock.seconds()
        self.attempts = self.h.group.attempts(self.location.proxy_next_upstream_tries)
        target = self.request.target
        if self.h.passes_target and target[:1] == "/":
            self.uri = target           # no URI part in proxy_pass: sent as received
        else:
            self.uri = upstream_uri(
                self.location.proxy_pass, self.location, target,
                self.request.path, self.request.args,
            )
        self.exchange.on_close(self._client_gone)
        if self.location.proxy_websocket:
            self.upgrade = requested_upgrade(self.exchange)
            if self.upgrade is not None and not self.request.has_body:
                # until the peer answers, what the client sends after its head waits
                # in the parser, unbounded: read no more of it meanwhile
                self.exchange.pause_body()
        if self.request.has_body and self.location.proxy_request_buffering:
            self.body = []
            self.exchange.read_body(_BufferedBody(self))
        else:
            self.body_complete = not self.request.has_body
            self._next_peer()

    def _buffered_body_done(self) -> None:
        self.body_complete = True
        # nginx starts the upstream part (and proxy_next_upstream_timeout) once the
        # buffered body has been read: a slow upload does not use up the retry window
        self.started = self.clock.seconds()
        self._next_peer()

    # -- choosing a peer and a connection --------------------------------------

    def _next_peer(self) -> None:
        if self.done:
            return
        group = self.h.group
        context = self.h.pick_context(self.exchange, self.ctx)
        self.lease = group.acquire(self.attempts, context)
        if self.lease is not None:
            self._use_lease(_NOT_QUEUED)
            return
        # With a queue, and a peer this request could use at max_conns, wait for it
        # (NGINX Plus); otherwise, or when the queue refuses, 502 as nginx.
        waiting = group.wait(self.attempts, context)
        if waiting is None:
            log.error("no live upstreams while connecting to upstream {upstream}",
                      upstream=group.name)
            self._no_peer(_NOT_QUEUED)
            return
        self.waiting = waiting
        self.queued_at = self.clock.seconds()
        waiting.addCallbacks(self._dequeued, self._queue_failed)

    def _use_lease(self, queue_time: float) -> None:
        self.state.addrs.append(self.lease.peer.name)
        self.state.queue_times.append(queue_time)
        self._connect(allow_pooled=True)

    def _dequeued(self, lease) -> None:
        self.waiting = None
        if self.done:
            # a gone client cancels its wait, so this is only a safety net: the
            # lease must never leak
            lease.release(Outcome.OK)
            return
        self.lease = lease
        self._use_lease(self.clock.seconds() - self.queued_at)

    def _queue_failed(self, failure) -> None:
        self.waiting = None
        if self.done:
            return None       # cancelled because the client went away (_client_gone)
        if failure.check(QueueError):
            # NGINX Plus: "upstream queue is full while connecting to upstream"
            log.error("{reason} while connecting to upstream {upstream}",
                      reason=failure.value.message, upstream=self.h.group.name)
        else:
            log.failure("waiting in the queue of upstream {upstream} broke", failure,
                        upstream=self.h.group.name)
        self._no_peer(self.clock.seconds() - self.queued_at)

    def _no_peer(self, queue_time: float) -> None:
        """No peer for this try: one more $upstream_* entry naming the group, and 502."""
        self.state.addrs.append(self.h.group.name)
        self.state.statuses.append(502)
        self.state.queue_times.append(queue_time)
        self._align_state()
        self._fail_client(502)

    def _connect(self, allow_pooled: bool) -> None:
        self.try_start = self.clock.seconds()
        self.request_sent = False
        peer = self.lease.peer
        conn = self.h.pool.take(self.h.pool_prefix + peer.name) if allow_pooled else None
        if conn is not None:
            self._connected(conn)
            return
        tls = self.h.tls
        if tls is None:
            d = self.h.connector.connect(peer.address, self.location.proxy_connect_timeout)
        else:
            d = self.h.connector.connect(peer.address, self.location.proxy_connect_timeout,
                                         tls=tls.for_peer(peer))
        d.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure) -> None:
        error = failure.value
        if not isinstance(error, UpstreamError):
            error = UpstreamError("error", str(error))
        if self.done:
            return
        self._attempt_failed(error)

    def _connected(self, conn) -> None:
        if self.done:
            conn.close()
            return
        self.conn = conn
        self.state.connect_times.append(self.clock.seconds() - self.try_start)
        self.request_sent = True
        trailers = () if self.body is None else trailer_fields(self.exchange.request_trailers)
        if self.request.has_body and not self.location.proxy_request_buffering:
            framing = "length" if self.request.content_length is not None else "chunked"
        elif trailers:
            framing = "chunked"     # only a chunked body has room for trailers
        elif self.body:
            framing = "length"
        else:
            framing = "none"
        head = self.h.request_plan.build(
            self.exchange, self.ctx, self.method, self.uri, self._framing_headers(framing),
            upgrade=self.upgrade,
        )
        conn.send_request(
            head, self, method=self.method, body=framing,
            read_timeout=self.location.proxy_read_timeout,
            send_timeout=self.location.proxy_send_timeout,
        )
        if self.body is not None and framing != "none":
            for chunk in self.body:
                conn.write_body(chunk)
            conn.end_body(trailers)
        elif framing != "none":
            self._stream_body(conn)

    def _framing_headers(self, framing: str) -> list:
        if framing == "none":
            # nginx passes "Content-Length: 0" when the client sent it, nothing else
            return [(b"Content-Length", b"0")] if self.request.content_length == 0 else []
        if framing == "chunked":
            return [(b"Transfer-Encoding", b"chunked")]
        if self.body is not None:
            length = sum(len(c) for c in self.body)
        else:
            length = self.request.content_length
        return [(b"Content-Length", str(length).encode())]

    def _stream_body(self, conn) -> None:
        """proxy_request_buffering off: the client body flows to the peer as it comes."""
        self.streamed_body = True
        conn.set_body_producer(_ExchangeBodyProducer(self.exchange))
        self.exchange.read_body(_StreamedBody(self, conn))

    # -- ResponseHandler --------------------------------------------------------

    def response_head(self, head) -> None:
        if self.done:
            return
        now = self.clock.seconds()
        self.state.statuses.append(head.status)
        self.state.header_times.append(now - self.try_start)
        if head.status == 101:
            self._switch_protocols(head)
            return
        condition = _STATUS_CONDITIONS.get(head.status)
        if condition is not None and condition[0] in self.location.proxy_next_upstream:
            if self._may_retry(condition[0], last_try_allowed=False):
                self._record_response_time()
                # a retried status that counts as a failure is the peer's last error
                error = condition[0] if condition[1] is Outcome.FAILED else None
                self._end_attempt(condition[1], close=True, error=error)
                self._next_peer()
                return
        headers = self.h.response_plan.filter(head.headers)
        self.h.response_plan.add(headers, self.ctx)
        self.client_started = True
        if not self.location.proxy_buffering:
            self.exchange.register_producer(self.conn.producer)
        elif head.content_length is None or head.content_length > SPOOL_MEMORY_LIMIT:
            self.spool = ResponseSpool(
                self.exchange, self.conn.pause_reading, self.conn.resume_reading
            )
            self.exchange.register_producer(self.spool)
        # else: a body no larger than the spool's memory part is simply handed to the
        # client transport, which holds it as the spool would (the upstream is free
        # at once either way)
        self.exchange.send_head(head.status, headers, head.reason or None)

    def response_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.spool is not None:
            self.spool.write(data)
        else:
            self.exchange.send_body(data)

    def response_trailers(self, headers: list) -> None:
        if self.done:
            return
        self.trailers = trailer_fields(self.h.response_plan.filter(headers)) or None

    def response_end(self) -> None:
        if self.done:
            return
        conn, self.conn = self.conn, None
        peer_name = self.h.pool_prefix + self.lease.peer.name
        self._record_response_time(conn)
        # a complete response recorded connect, header and response time: aligned
        self._release(Outcome.OK, aligned=True)
        if conn.reusable:
            self.h.pool.put(peer_name, conn)
        else:
            conn.close()
        self.done = True
        if self.spool is not None:
            self.spool.finish(self.trailers)
        else:
            self.exchange.unregister_producer()
            if self.trailers:
                self.exchange.send_trailers(self.trailers)
            self.exchange.finish()

    def response_error(self, error: UpstreamError) -> None:
        if self.done:
            return
        self._attempt_failed(error)

    # -- failures and retries ------------------------------------------------

    def _attempt_failed(self, error: UpstreamError) -> None:
        message = error.message or error.kind
        log.warn(
            "{message} (upstream {peer}, request \"{method} {uri}\")",
            message=message, peer=self._peer_name(),
            method=self.method, uri=self.request.target,
        )
        if self.client_started:
            # Response bytes are with the client: nothing can be retried and the
            # client must see a truncated response, never a clean end. As in nginx
            # (ngx_http_upstream_finalize_request frees the peer with state 0), a
            # failure after the response head does not count against the peer.
            self._record_response_time()
            self._end_attempt(Outcome.OK, close=True, error=message)
            self.done = True
            if self.spool is not None:
                self.spool.stopProducing()
            self.exchange.unregister_producer()
            self.exchange.abort()
            return
        if self._stale(error):
            self.state.connect_times.pop()
            self._close_conn()
            self._connect(allow_pooled=False)
            return
        self.state.statuses.append(504 if error.kind == "timeout" else 502)
        self._record_response_time()
        self._end_attempt(Outcome.FAILED, close=True, error=message)
        if error.kind in self.location.proxy_next_upstream and self._may_retry(error.kind):
            self._next_peer()
            return
        self._fail_client(504 if error.kind == "timeout" else 502)

    def _stale(self, error: UpstreamError) -> bool:
        """A pooled connection the peer had closed: retry once on a fresh connection.

        The peer may have seen the request before closing, so a non-idempotent request
        is re-sent only when ``non_idempotent`` allows it, as for any other retry.
        """
        return (
            self.conn is not None and self.conn.reused and error.nothing_received
            and error.kind == "error" and not self.streamed_body
            and (
                self.method not in _NON_IDEMPOTENT
                or "non_idempotent" in self.location.proxy_next_upstream
            )
        )

    def _may_retry(self, condition: str, last_try_allowed: bool = True) -> bool:
        """nginx's checks in ngx_http_upstream_next / ngx_http_upstream_test_next.

        A status condition is tested before the attempt's lease is released (so a try
        must remain besides the current one); a connection condition after it.
        """
        tries = self.attempts.tries if last_try_allowed else self.attempts.tries - 1
        if tries <= 0:
            return False
        if self.request_sent and self.method in _NON_IDEMPOTENT:
            if "non_idempotent" not in self.location.proxy_next_upstream:
                return False
        if self.streamed_body and self.request_sent:
            return False
        timeout = self.location.proxy_next_upstream_timeout
        if timeout and self.clock.seconds() - self.started >= timeout:
            return False
        return True

    def _end_attempt(self, outcome: Outcome, close: bool,
                     error: Optional[str] = None) -> None:
        if close:
            self._close_conn()
        self._release(outcome, error=error)

    def _release(self, outcome: Outcome, aligned: bool = False,
                 error: Optional[str] = None) -> None:
        """Release the try's lease with its outcome and, when it went wrong, the
        error text (the peer's ``last_error`` on status pages)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release(outcome, error)
            if not aligned:
                self._align_state()

    def _align_state(self) -> None:
        """One entry per tried peer in every $upstream_* list; "-" where an attempt
        ended before that point (no connection, no header), as nginx prints."""
        count = len(self.state.addrs)
        for values in (self.state.statuses, self.state.connect_times,
                       self.state.header_times, self.state.response_times,
                       self.state.queue_times):
            values.extend("-" * (count - len(values)))
        for values in (self.state.bytes_received, self.state.bytes_sent):
            values.extend([0] * (count - len(values)))

    def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.set_body_producer(None)
            conn.close()

    def _record_response_time(self, conn=None) -> None:
        """The try's ``$upstream_response_time`` and byte counts (on ``conn``, by
        default the try's connection; none when it never connected)."""
        self.state.response_times.append(self.clock.seconds() - self.try_start)
        conn = conn or self.conn
        if conn is not None:
            self.state.bytes_received.append(conn.bytes_received)
            self.state.bytes_sent.append(conn.bytes_sent)
        else:
            self.state.bytes_received.append(0)
            self.state.bytes_sent.append(0)

    # -- Upgrade -------------------------------------------------------------------

    def _switch_protocols(self, head) -> None:
        """The peer answered 101: relay it and make both connections a tunnel that
        holds this try's lease until it ends (:mod:`gateway.http.tunnel`)."""
        if self.upgrade is None:
            # nginx would relay this 101 and then the peer's bytes as its body; a
            # switch this gateway did not ask for is refused before any of them
            self.state.statuses.pop()
            self._attempt_failed(UpstreamError("invalid_header", MSG_UNSOLICITED_101))
            return
        conn, self.conn = self.conn, None
        self.done = True
        self.client_started = True
        # the response filter drops hop-by-hop fields; a 101 carries the peer's Upgrade
        # and "Connection: upgrade", as nginx writes them
        headers = self.h.response_plan.filter(head.headers)
        headers += [(name, value) for name, value in head.headers
                    if name.lower() == b"upgrade"]
        headers.append((b"Connection", b"upgrade"))
        self.h.response_plan.add(headers, self.ctx)
        self.exchange.send_head(101, headers, head.reason or None)
        tunnel = Tunnel(
            downstream_end(self.exchange), conn, clock=self.clock,
            deadlines=self.h.connector.deadlines,
            idle_timeout=self.location.proxy_read_timeout,
            on_closing=self._tunnel_closing, on_closed=self._tunnel_closed,
        )
        self.h.tunnels.add(tunnel)
        if self.h.metrics is not None:
            self.h.metrics.tunnel_opened()
        tunnel.start()

    def _tunnel_closing(self, tunnel: Tunnel) -> None:
        """The first side closed: the try's numbers are final (nginx's finalize)."""
        if tunnel.ended_by == "timeout":
            log.error("{message} (upstream {peer}, request \"{method} {uri}\")",
                      message=MSG_IDLE_TIMEOUT, peer=self._peer_name(),
                      method=self.method, uri=self.request.target)
        self.state.response_times.append(tunnel.ended - self.try_start)
        self.state.bytes_received.append(tunnel.upstream_bytes_received)
        self.state.bytes_sent.append(tunnel.upstream_bytes_sent)

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        """Both connections are gone: the peer is free again. As in nginx
        (ngx_http_upstream_finalize_request), however it ended it is not a failure."""
        self.h.tunnels.discard(tunnel)
        if self.h.metrics is not None:
            self.h.metrics.tunnel_closed()
        self._release(Outcome.OK, aligned=True)

    def _peer_name(self) -> str:
        return self.lease.peer.name if self.lease is not None else self.h.group.name

    def _fail_client(self, status: int) -> None:
        self.done = True
        headers: list = []
        self.h.response_plan.add(headers, self.ctx)
        self.exchange.send_error(status, headers)

    # -- the client side --------------------------------------------------------

    def _client_gone(self) -> None:
        """The client closed: stop, and release the peer without blaming it (499)."""
        if self.spool is not None:
            self.spool.stopProducing()
        if self.done:
            return
        self.done = True
        if self.waiting is not None:
            # leave the group's queue: the entry names the group, with the time waited
            waiting, self.waiting = self.waiting, None
            waited = self.clock.seconds() - self.queued_at
            self.state.addrs.append(self.h.group.name)
            self.state.response_times.append(waited)
            self.state.queue_times.append(waited)
            self._align_state()
            waiting.cancel()
            return
        if self.lease is not None:
            self._record_response_time()
        self._close_conn()
        self._release(Outcome.OK)


class _BufferedBody:
    """BodyReceiver collecting the whole request body before the first attempt."""

    def __init__(self, request: ProxyRequest):
        self.request = request

    def body_data(self, data: bytes) -> None:
        self.request.body.append(data)

    def body_end(self) -> None:
        self.request._buffered_body_done()

    def body_error(self, reason: str) -> None:
        self.request.done = True


class _StreamedBody:
    """BodyReceiver forwarding body bytes straight to the upstream connection."""

    def __init__(self, request: ProxyRequest, conn):
        self.request = request
        self.conn = conn

    def body_data(self, data: bytes) -> None:
        if self.request.conn is self.conn:
            self.conn.write_body(data)

    def body_end(self) -> None:
        self.request.body_complete = True
        if self.request.conn is self.conn:
            self.conn.end_body(trailer_fields(self.request.exchange.request_trailers))

    def body_error(self, reason: str) -> None:
        self.request._client_gone()


class _ExchangeBodyProducer:
    """The client body as a push producer, for the upstream transport's backpressure."""

    def __init__(self, exchange):
        self.exchange = exchange

    def pauseProducing(self) -> None:
        self.exchange.pause_body()

    def resumeProducing(self) -> None:
        self.exchange.resume_body()

    def stopProducing(self) -> None:
        pass
