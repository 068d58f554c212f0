#!/usr/bin/env python3
"""WebSocket echo backend for the benchmark's ``ws`` case: ``wsecho.py --port P``.

One asyncio process on 127.0.0.1 (standard library only), written to cost as little as
possible per message so that the proxies, not the backend, are what the case measures:

- any request with ``Upgrade: websocket`` and a ``Sec-WebSocket-Key`` (whatever the
  path) gets ``101 Switching Protocols``; any other request gets ``200 wsecho`` and the
  connection is closed;
- after the handshake every frame is echoed as it arrives, frame by frame (fragmented
  messages stay fragmented; the FIN bit and opcode are kept), unmasked as a server
  must send it; ping → pong, close → the same close frame back, then the connection is
  closed. All frames parsed from one read go out in one write.

No limits and no validation beyond what echoing needs: it is a load-test peer, not a
WebSocket server to expose to anyone.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import socket
import sys

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame_head(first: int, n: int) -> bytes:
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


class Echo(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.buf = b""
        self.ws = False

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        if not self.ws:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.transport.abort()
                self.buf = buf
                return
            self.handshake(buf[:end])
            buf = buf[end + 4:]
            if not self.ws:
                return
        self.buf = self.frames(buf)

    def handshake(self, head: bytes) -> None:
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if b"websocket" not in headers.get(b"upgrade", b"").lower() or not key:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nwsecho\n")
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.ws = True

    def frames(self, buf: bytes) -> bytes:
        out = []
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            hdr = pos + 2
            if length == 126:
                if n - hdr < 2:
                    break
                length = int.from_bytes(buf[hdr:hdr + 2], "big")
                hdr += 2
            elif length == 127:
                if n - hdr < 8:
                    break
                length = int.from_bytes(buf[hdr:hdr + 8], "big")
                hdr += 8
            if b1 & 0x80:
                if n - hdr < 4 + length:
                    break
                payload = unmask(buf[hdr + 4:hdr + 4 + length], buf[hdr:hdr + 4])
                pos = hdr + 4 + length
            else:
                if n - hdr < length:
                    break
                payload = buf[hdr:hdr + length]
                pos = hdr + length
            opcode = b0 & 0x0F
            if opcode == OP_CLOSE:
                out.append(frame_head(0x80 | OP_CLOSE, len(payload)) + payload)
                self.transport.write(b"".join(out))
                self.transport.close()
                return b""
            if opcode == OP_PING:
                out.append(frame_head(0x80 | OP_PONG, len(payload)) + payload)
            elif opcode != OP_PONG:
                out.append(frame_head(b0, len(payload)) + payload)
        if out:
            self.transport.write(b"".join(out))
        return buf[pos:] if pos < n else b""


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"wsecho: listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="WebSocket echo backend for bench/bench.py")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
