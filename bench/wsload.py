#!/usr/bin/env python3
"""WebSocket load client for the benchmark's ``ws`` case (standard library only).

    wsload.py --port P check                     # one tunnel, a few echoes; exit 0 when they come back
    wsload.py --port P load -n 200 --depth 4 --size 64 --warmup 2 --duration 5
    wsload.py --port P idle -n 1000              # open N tunnels, hold them until stdin closes

``load`` opens ``-n`` WebSocket connections (``GET /ws`` + ``Upgrade: websocket``), and
once all are open keeps ``--depth`` binary messages of ``--size`` bytes in flight on
each: every echoed message that comes back is answered by a new one, in one write per
read. After ``--warmup`` seconds it counts the echoes received for ``--duration``
seconds. Every echoed byte is compared with the expected frames (all messages are the
same, so this is one ``bytes`` comparison per read); a mismatch, a lost connection or a
failed handshake is an error.

The client is built to cost little per message: one masked frame is precomputed (the
RFC's fresh mask per frame is skipped: the mask only matters against cache poisoning of
intermediaries that do not understand WebSocket, and both proxies here do), echoes are
counted by length, not parsed.

Output, one line each on stdout, for bench.py to follow: ``ready N`` once all
connections are open, ``measure`` when the measured window starts (``load``), and
``result {json}`` at the end. Errors go to stderr with exit status 1.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import sys
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_MAX = 256 * 1024 + 1   # asyncio's selector transports read at most 256 KiB at once


class Stats:
    def __init__(self):
        self.messages = 0
        self.errors = 0
        self.mismatches = 0
        self.running = False
        self.closing = False
        self.first_error = ""


class Frames:
    """The one message every connection sends, masked, and its echo as the server sends it."""

    def __init__(self, size: int, depth: int):
        payload = (b"bench-ws-" * (size // 9 + 1))[:size]
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if size < 126:
            head, echo_head = bytes((0x82, 0x80 | size)), bytes((0x82, size))
        elif size < 65536:
            head = bytes((0x82, 0x80 | 126)) + size.to_bytes(2, "big")
            echo_head = bytes((0x82, 126)) + size.to_bytes(2, "big")
        else:
            raise SystemExit("--size must be below 65536")
        self.frame = head + mask + masked
        self.echo = echo_head + payload
        self.echo_len = len(self.echo)
        self.by_count = [self.frame * k for k in range(depth + 1)]
        # the expected received stream from any offset: a slice of this
        self.stream = self.echo * (READ_MAX // self.echo_len + 2)


class Conn(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str, stats: Stats, frames: Frames):
        self.stats, self.frames = stats, frames
        self.key = base64.b64encode(os.urandom(16))
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n").encode() + \
            b"Sec-WebSocket-Key: " + self.key + b"\r\n\r\n"
        self.open = asyncio.get_running_loop().create_future()
        self.transport = None
        self.head = b""
        self.upgraded = False
        self.offset = 0        # position in the echo frame of the next received byte
        self.outstanding = 0   # messages sent and not echoed yet

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)

    def _fail(self, why: str) -> None:
        st = self.stats
        if not st.closing:
            st.errors += 1
            st.first_error = st.first_error or why
        if not self.open.done():
            self.open.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data):
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._fail("handshake response head too long")
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            lines = head.split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1.1 101"):
                return self._fail(f"handshake answered {lines[0][:100]!r}")
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
            if not any(line.lower().startswith(b"sec-websocket-accept:")
                       and line.split(b":", 1)[1].strip() == accept for line in lines[1:]):
                return self._fail("handshake response without the right Sec-WebSocket-Accept")
            self.upgraded = True
            self.open.set_result(self)
            if not data:
                return
        fr = self.frames
        n = len(data)
        off = self.offset
        if n <= READ_MAX and data != fr.stream[off:off + n]:
            self.stats.mismatches += 1
            return self._fail("echoed bytes differ from the message sent")
        total = off + n
        k = total // fr.echo_len
        self.offset = total - k * fr.echo_len
        if not k:
            return
        self.outstanding -= k
        if self.outstanding < 0:
            return self._fail("more echoes than messages sent")
        st = self.stats
        st.messages += k
        if st.running:
            self.transport.write(fr.by_count[k])
            self.outstanding += k

    def start(self, depth: int) -> None:
        self.transport.write(self.frames.by_count[depth])
        self.outstanding += depth

    def connection_lost(self, exc):
        if not self.open.done():
            self.open.set_exception(ConnectionError(f"connection closed during the handshake ({exc})"))
        elif not self.stats.closing:
            self._fail(f"connection closed during the run ({exc or 'EOF'})")


async def open_all(args, stats: Stats, frames: Frames, n: int) -> list:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(args.connect_concurrency)

    async def one():
        async with limit:
            _, proto = await loop.create_connection(
                lambda: Conn(args.host, args.port, args.path, stats, frames), args.host, args.port)
            return await proto.open

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    try:
        return await asyncio.wait_for(asyncio.gather(*tasks), args.open_timeout)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


def close_all(stats: Stats, conns: list) -> None:
    stats.running = False
    stats.closing = True
    for c in conns:
        c.transport.close()


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_load(args) -> dict:
    stats, frames = Stats(), Frames(args.size, args.depth)
    conns = await open_all(args, stats, frames, args.connections)
    emit(f"ready {len(conns)}")
    stats.running = True
    for c in conns:
        c.start(args.depth)
    await asyncio.sleep(args.warmup)
    m0, t0, cpu0 = stats.messages, time.monotonic(), time.process_time()
    emit("measure")
    await asyncio.sleep(args.duration)
    m1, t1, cpu1 = stats.messages, time.monotonic(), time.process_time()
    close_all(stats, conns)
    await asyncio.sleep(0.05)
    seconds = t1 - t0
    messages = m1 - m0
    return {"connections": len(conns), "depth": args.depth, "size": args.size,
            "messages": messages, "seconds": seconds, "rate": messages / seconds,
            "client_cpu": (cpu1 - cpu0) / seconds,
            "errors": stats.errors, "mismatches": stats.mismatches, "first_error": stats.first_error}


async def run_idle(args) -> dict:
    stats, frames = Stats(), Frames(args.size, 1)
    conns = await open_all(args, stats, frames, args.connections)
    emit(f"ready {len(conns)}")
    # hold the tunnels until bench.py closes our stdin (or a time limit passes)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await asyncio.wait_for(reader.read(), args.hold_timeout)
    except asyncio.TimeoutError:
        pass
    # each tunnel still works
    for c in conns:
        c.start(1)
    deadline = time.monotonic() + args.open_timeout
    while stats.messages < len(conns) and not stats.errors and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    echoed = stats.messages
    close_all(stats, conns)
    await asyncio.sleep(0.05)
    return {"connections": len(conns), "echoed_after_idle": echoed, "errors": stats.errors,
            "first_error": stats.first_error}


async def run_check(args) -> dict:
    stats, frames = Stats(), Frames(args.size, 3)
    conns = await open_all(args, stats, frames, 1)
    conns[0].start(3)
    deadline = time.monotonic() + args.open_timeout
    while stats.messages < 3 and not stats.errors and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    close_all(stats, conns)
    if stats.messages != 3 or stats.errors:
        raise ConnectionError(stats.first_error or f"{stats.messages} of 3 echoes came back")
    return {"echoed": stats.messages}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="WebSocket load client for bench/bench.py")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--size", type=int, default=64, help="message payload bytes (default 64)")
    p.add_argument("--open-timeout", type=float, default=20, help="seconds to open all connections")
    p.add_argument("--connect-concurrency", type=int, default=32,
                   help="handshakes in progress at once (default 32, below Twisted's listen backlog of 50)")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("check")
    lp = sub.add_parser("load")
    lp.add_argument("-n", "--connections", type=int, default=200)
    lp.add_argument("--depth", type=int, default=4, help="messages in flight per connection")
    lp.add_argument("--warmup", type=float, default=2)
    lp.add_argument("--duration", type=float, default=5)
    ip = sub.add_parser("idle")
    ip.add_argument("-n", "--connections", type=int, default=1000)
    ip.add_argument("--hold-timeout", type=float, default=120, help="longest hold when stdin stays open")
    args = p.parse_args(argv)
    run = {"check": run_check, "load": run_load, "idle": run_idle}[args.mode]
    try:
        result = asyncio.run(run(args))
    except (OSError, ConnectionError, asyncio.TimeoutError) as e:
        print(f"wsload: {args.mode} against {args.host}:{args.port} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    emit("result " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
