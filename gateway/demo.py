"""Demo backends: ``python -m gateway.demo [--ports 8081,8082,8083] [--host 127.0.0.1]``.

Starts one small HTTP/1.1 server per port, all in one process, for trying the gateway
out (``conf/site.toml`` points at them) and for integration tests. Backend N answers:

- ``GET /health`` (any method) → ``200 ok\\n``
- ``/ws`` → a minimal RFC 6455 WebSocket echo: handshake with ``Sec-WebSocket-Accept``,
  text and binary messages echoed (fragmented messages are reassembled and echoed as one
  frame), ping → pong, close → close with the same status code, then the connection
  closes. A ``/ws`` request without a WebSocket handshake gets ``426``.
- any other path → ``200`` with a small text body naming the backend and echoing the
  request line, e.g.::

      backend-1 (127.0.0.1:8081)
      GET /some/path?x=1

  plus ``body: N bytes`` when the request had a body. Every response carries
  ``X-Backend: backend-N``.

HTTP/1.1 keepalive (and HTTP/1.0 ``Connection: keep-alive``), pipelining,
``Content-Length`` and chunked request bodies and ``Expect: 100-continue`` are supported.

With ``--grpc-ports`` (default ``50061,50062,50063``; ``""`` for none) the process also
runs one small gRPC server per port (grpcio's threaded server, so any reactor works),
named ``grpc-backend-N``, serving raw bytes without generated code:

- ``demo.Echo/Unary`` answers the request message; ``ServerStream`` sends it back three
  times; ``ClientStream`` answers all request messages joined; ``Bidi`` echoes each
  message as it comes. Every call's initial metadata carries ``x-backend``;
- ``grpc.health.v1.Health/Check`` answers ``SERVING`` for ``""`` and ``demo.Echo``.

``examples/grpc_client.py`` calls them through the gateway's front door.

This is a plain ``Protocol`` rather than twisted.web because the WebSocket endpoint needs
the connection itself after the handshake, and because a demo backend should be cheap
enough never to be what a quick load test measures. It uses the standard library and
Twisted only.

Tests start backends on port 0 with :func:`start_backends`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import struct
import sys
from typing import List, Optional, Sequence

from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_HEAD = 64 * 1024
MAX_WS_MESSAGE = 16 * 1024 * 1024
MAX_GRPC_MESSAGE = 16 * 1024 * 1024

REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    400: b"Bad Request",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}

# WebSocket opcodes
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def websocket_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """One WebSocket frame. Servers send unmasked frames; clients pass a 4-byte ``mask``."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    maskbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", first, maskbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, maskbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, maskbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask`` (masking and unmasking alike)."""
    if not data:
        return b""
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DemoProtocol(Protocol):
    """One connection: HTTP/1.1 requests, or a WebSocket after a ``/ws`` upgrade."""

    def __init__(self, name: str, address: str):
        self.name = name
        self.address = address
        self._buf = b""
        self._state = "head"  # head | body | chunk-size | chunk-data | chunk-crlf | trailers | ws | closed
        self._request: Optional[dict] = None
        self._remaining = 0
        # WebSocket state
        self._ws_opcode: Optional[int] = None
        self._ws_fragments: List[bytes] = []
        self._ws_size = 0

    # -- plumbing -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state == "closed":
            return
        self._buf += data
        try:
            if self._state == "ws":
                self._ws_process()
            else:
                self._http_process()
        except _BadRequest as e:
            self._respond(e.status, (e.message + "\n").encode(), keep_alive=False)

    def _close(self) -> None:
        self._state = "closed"
        self._buf = b""
        self.transport.loseConnection()

    # -- HTTP/1.1 -----------------------------------------------------------------

    def _http_process(self) -> None:
        while self._state not in ("ws", "closed"):
            if self._state == "head":
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise _BadRequest(431, "request head too large")
                    if self._buf.startswith(b"\r\n"):
                        # empty lines before a request line are ignored (RFC 9112 §2.2)
                        self._buf = self._buf.lstrip(b"\r\n")
                    return
                head, self._buf = self._buf[:end], self._buf[end + 4:]
                head = head.lstrip(b"\r\n")
                if not head:
                    continue
                self._start_request(head)
            elif self._state == "body":
                take = min(self._remaining, len(self._buf))
                self._request["body"] += take
                self._buf = self._buf[take:]
                self._remaining -= take
                if self._remaining:
                    return
                self._finish_request()
            elif self._state == "chunk-size":
                eol = self._buf.find(b"\r\n")
                if eol < 0:
                    if len(self._buf) > 4096:
                        raise _BadRequest(400, "bad chunk size line")
                    return
                line, self._buf = self._buf[:eol], self._buf[eol + 2:]
                size = line.split(b";", 1)[0].strip()
                try:
                    if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                        raise ValueError(size)
                    self._remaining = int(size, 16)
                except ValueError:
                    raise _BadRequest(400, "bad chunk size") from None
                self._state = "chunk-data" if self._remaining else "trailers"
            elif self._state == "chunk-data":
                take = min(self._remaining, len(self._buf))
                self._request["body"] += take
                self._buf = self._buf[take:]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = "chunk-crlf"
            elif self._state == "chunk-crlf":
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise _BadRequest(400, "bad chunk terminator")
                self._buf = self._buf[2:]
                self._state = "chunk-size"
            elif self._state == "trailers":
                eol = self._buf.find(b"\r\n")
                if eol < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise _BadRequest(431, "trailers too large")
                    return
                line, self._buf = self._buf[:eol], self._buf[eol + 2:]
                if not line:
                    self._finish_request()

    def _start_request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith(b"HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise _BadRequest(400, "bad header line")
            key = name.lower().decode("latin-1")
            value = value.strip()
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise _BadRequest(400, "conflicting Content-Length")
                headers[key] = headers[key] + b", " + value
            else:
                headers[key] = value
        connection = {t.strip().lower() for t in headers.get("connection", b"").split(b",")}
        if version == b"HTTP/1.0":
            keep_alive = b"keep-alive" in connection
        else:
            keep_alive = b"close" not in connection
        self._request = {
            "method": method,
            "target": target,
            "version": version,
            "headers": headers,
            "connection": connection,
            "keep_alive": keep_alive,
            "body": 0,
        }
        te = headers.get("transfer-encoding")
        if te is not None:
            codings = [c.strip().lower() for c in te.split(b",")]
            if codings[-1] != b"chunked" or version == b"HTTP/1.0":
                raise _BadRequest(400, "unsupported Transfer-Encoding")
            self._state = "chunk-size"
            self._remaining = 0
        elif "content-length" in headers:
            cl = headers["content-length"].split(b",")[0].strip()
            if not cl.isdigit():
                raise _BadRequest(400, "bad Content-Length")
            self._remaining = int(cl)
            self._state = "body"
        else:
            self._remaining = 0
            self._state = "body"
        if self._state != "body" or self._remaining:
            if headers.get("expect", b"").lower() == b"100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _finish_request(self) -> None:
        req, self._request = self._request, None
        self._state = "head"
        path = req["target"].split(b"?", 1)[0]
        if path == b"/health":
            self._respond(200, b"ok\n", req["keep_alive"], req)
        elif path == b"/ws":
            self._websocket_handshake(req)
        else:
            body = b"%s (%s)\n%s %s\n" % (
                self.name.encode(), self.address.encode(), req["method"], req["target"])
            if req["body"]:
                body += b"body: %d bytes\n" % req["body"]
            self._respond(200, body, req["keep_alive"], req)

    def _respond(self, status: int, body: bytes, keep_alive: bool,
                 req: Optional[dict] = None, extra: Sequence[tuple] = ()) -> None:
        version = req["version"] if req is not None else b"HTTP/1.1"
        lines = [
            b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Unknown")),
            b"Server: gateway-demo",
            b"X-Backend: " + self.name.encode(),
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % len(body),
        ]
        lines.extend(b"%s: %s" % kv for kv in extra)
        if not keep_alive:
            lines.append(b"Connection: close")
        elif version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive")
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if req is not None and req["method"] == b"HEAD":
            body = b""
        self.transport.write(head + body)
        if not keep_alive:
            self._close()

    # -- WebSocket ------------------------------------------------------------------

    def _websocket_handshake(self, req: dict) -> None:
        headers = req["headers"]
        upgrade = {t.strip().lower() for t in headers.get("upgrade", b"").split(b",")}
        key = headers.get("sec-websocket-key", b"")
        if b"websocket" not in upgrade or b"upgrade" not in req["connection"]:
            self._respond(426, b"this is a WebSocket endpoint\n", req["keep_alive"], req,
                          [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")])
            return
        if req["method"] != b"GET" or req["version"] != b"HTTP/1.1" or req["body"]:
            self._respond(400, b"bad WebSocket handshake\n", False, req)
            return
        if headers.get("sec-websocket-version", b"").strip() != b"13":
            self._respond(426, b"unsupported WebSocket version\n", False, req,
                          [(b"Sec-WebSocket-Version", b"13")])
            return
        try:
            ok = len(base64.b64decode(key.strip(), validate=True)) == 16
        except ValueError:
            ok = False
        if not ok:
            self._respond(400, b"bad Sec-WebSocket-Key\n", False, req)
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + websocket_accept(key) + b"\r\n"
            b"X-Backend: " + self.name.encode() + b"\r\n"
            b"\r\n"
        )
        self._state = "ws"
        self._ws_process()

    def _ws_fail(self, code: int, reason: bytes = b"") -> None:
        self.transport.write(encode_frame(OP_CLOSE, struct.pack("!H", code) + reason))
        self._close()

    def _ws_process(self) -> None:
        while self._state == "ws":
            buf = self._buf
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
            masked, n = b1 & 0x80, b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                (n,) = struct.unpack_from("!H", buf, 2)
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                (n,) = struct.unpack_from("!Q", buf, 2)
                pos = 10
            if rsv or opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
                return self._ws_fail(1002, b"protocol error")
            if not masked:
                return self._ws_fail(1002, b"client frames must be masked")
            if opcode >= OP_CLOSE and (n > 125 or not fin):
                return self._ws_fail(1002, b"bad control frame")
            if n + self._ws_size > MAX_WS_MESSAGE:
                return self._ws_fail(1009, b"message too big")
            if len(buf) < pos + 4 + n:
                return
            mask = buf[pos:pos + 4]
            payload = apply_mask(buf[pos + 4:pos + 4 + n], mask)
            self._buf = buf[pos + 4 + n:]
            self._ws_frame(bool(fin), opcode, payload)

    def _ws_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            if len(payload) == 1:
                return self._ws_fail(1002, b"bad close frame")
            reply = payload[:2]  # echo the status code, as RFC 6455 §5.5.1 suggests
            if reply:
                (code,) = struct.unpack("!H", reply)
                if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000:
                    return self._ws_fail(1002, b"bad close code")
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return self._ws_fail(1007, b"bad close reason")
            self.transport.write(encode_frame(OP_CLOSE, reply))
            self._close()
        elif opcode == OP_CONT:
            if self._ws_opcode is None:
                return self._ws_fail(1002, b"unexpected continuation frame")
            self._ws_message_part(fin, payload)
        else:
            if self._ws_opcode is not None:
                return self._ws_fail(1002, b"expected a continuation frame")
            self._ws_opcode = opcode
            self._ws_message_part(fin, payload)

    def _ws_message_part(self, fin: bool, payload: bytes) -> None:
        self._ws_fragments.append(payload)
        self._ws_size += len(payload)
        if not fin:
            return
        opcode, message = self._ws_opcode, b"".join(self._ws_fragments)
        self._ws_opcode, self._ws_fragments, self._ws_size = None, [], 0
        if opcode == OP_TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                return self._ws_fail(1007, b"invalid UTF-8")
        self.transport.write(encode_frame(opcode, message))


class DemoFactory(Factory):
    """Builds :class:`DemoProtocol`; ``address`` is filled in once the port listens."""

    def __init__(self, name: str, address: str = ""):
        self.name = name
        self.address = address

    def buildProtocol(self, addr):
        p = DemoProtocol(self.name, self.address)
        p.factory = self
        return p


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_backends(reactor, ports: Sequence[int], host: str = "127.0.0.1") -> List[IListeningPort]:
    """Listen with one demo backend per port (``0`` picks a free port).

    Backend ``i`` (counting from 1) is named ``backend-i``. Returns the listening ports
    in order; ``port.factory.name`` and ``port.factory.address`` say who is who.
    """
    listening = []
    try:
        for i, port in enumerate(ports, 1):
            factory = DemoFactory(f"backend-{i}")
            lp = reactor.listenTCP(port, factory, interface=host)
            factory.address = _format_address(host, lp.getHost().port)
            lp.factory = factory
            listening.append(lp)
    except BaseException:
        for lp in listening:
            lp.stopListening()
        raise
    return listening


GRPC_SERVICE = "demo.Echo"
#: a serialised grpc.health.v1 HealthCheckResponse{status: SERVING}
_SERVING = b"\x08\x01"


def _grpc_handlers(name: str):
    """The generic handlers of one gRPC demo backend (raw bytes both ways)."""
    import grpc

    def tagged(context):
        context.send_initial_metadata((("x-backend", name),))

    def unary(request, context):
        tagged(context)
        return request

    def server_stream(request, context):
        tagged(context)
        for _ in range(3):
            yield request

    def client_stream(requests, context):
        tagged(context)
        return b"".join(requests)

    def bidi(requests, context):
        tagged(context)
        for message in requests:
            yield message

    def check(request, context):
        # HealthCheckRequest{service}: field 1, length-delimited (b"" asks about the server)
        if request not in (b"", b"\x0a\x09" + GRPC_SERVICE.encode()):
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return _SERVING

    echo = grpc.method_handlers_generic_handler(GRPC_SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })
    health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check),
    })
    return echo, health


def start_grpc_backends(ports: Sequence[int], host: str = "127.0.0.1") -> list:
    """One threaded gRPC demo server per port (``0`` picks a free one), started.
    Returns ``(server, name, address)`` tuples; ``server.stop(0)`` stops one."""
    import grpc
    from concurrent.futures import ThreadPoolExecutor

    started = []
    try:
        for i, port in enumerate(ports, 1):
            name = f"grpc-backend-{i}"
            server = grpc.server(ThreadPoolExecutor(max_workers=8), options=(
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE)))
            server.add_generic_rpc_handlers(_grpc_handlers(name))
            try:
                bound = server.add_insecure_port(_format_address(host, port))
            except RuntimeError:
                bound = 0
            if not bound:
                raise SystemExit(f"demo: cannot listen for gRPC on {host}:{port}")
            server.start()
            started.append((server, name, _format_address(host, bound)))
    except BaseException:
        for server, _, _ in started:
            server.stop(0)
        raise
    return started


def _ports(text: str) -> list:
    ports = [int(p) for p in text.split(",") if p.strip()]
    if any(not 0 <= p < 65536 for p in ports):
        raise ValueError(text)
    return ports


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", default="8081,8082,8083",
                        help="comma-separated ports, one backend each (default: %(default)s)")
    parser.add_argument("--grpc-ports", default="50061,50062,50063",
                        help="comma-separated ports, one gRPC echo backend each; empty for"
                             " none (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.ports = _ports(args.ports)
        if not args.ports:
            raise ValueError
    except ValueError:
        parser.error(f"--ports: expected comma-separated port numbers, got {args.ports!r}")
    try:
        args.grpc_ports = _ports(args.grpc_ports)
    except ValueError:
        parser.error("--grpc-ports: expected comma-separated port numbers, got "
                     f"{args.grpc_ports!r}")
    return args


def main(reactor, *argv: str):
    args = parse_args(argv)
    for lp in start_backends(reactor, args.ports, args.host):
        print(f"{lp.factory.name} listening on http://{lp.factory.address}/", flush=True)
    grpc_servers = start_grpc_backends(args.grpc_ports, args.host) if args.grpc_ports else []
    for server, name, address in grpc_servers:
        print(f"{name} serving gRPC ({GRPC_SERVICE}, grpc.health.v1) at {address}",
              flush=True)
    if grpc_servers:
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: [server.stop(0) for server, _, _ in grpc_servers])
    # Never fires: react() stops on SIGINT/SIGTERM (reactor.run's signal handlers),
    # closing the listening ports on the way out, and exits with status 0.
    return defer.Deferred()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
