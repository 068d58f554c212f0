#!/usr/bin/env python3
"""gRPC client for the benchmark's ``grpc`` case (grpc.aio, raw bytes, no generated code).

    grpcload.py --port P check          # a unary call and a 3-message bidi call, checked
    grpcload.py --port P load -n 50 --size 64 --warmup 2 --duration 5

``check`` calls ``/demo.Echo/Unary`` and ``/demo.Echo/Bidi`` (3 messages) and exits 0
when each comes back equal to what was sent with status OK; otherwise it prints what went
wrong and exits 1.

``load`` opens ``-n`` bidi calls (``/demo.Echo/Bidi``) on ``--channels`` channels (HTTP/2
connections; calls spread round-robin over them) and ping-pongs on each: one message of
``--size`` bytes in flight, the next written as soon as its echo was read. After
``--warmup`` seconds it counts echoes for ``--duration`` seconds, then half-closes every
call and waits for status OK. Every echo is compared with what was sent; a mismatch, a
call that ends early or a status other than OK is an error.

Output, one line each on stdout, for bench.py to follow: ``ready N`` once every call
got its first echo, ``measure`` when the measured window starts and ``stop`` when it
ends (``load``), and ``result {json}`` once every call has ended. Errors go to stderr with exit status 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
from grpc import aio

UNARY = "/demo.Echo/Unary"
BIDI = "/demo.Echo/Bidi"
OPTIONS = (("grpc.so_reuseport", 0), ("grpc.enable_retries", 0),
           # separate channels with the same target must not share one subchannel
           ("grpc.use_local_subchannel_pool", 1))


def channel(port: int) -> aio.Channel:
    return aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)


async def check(port: int, timeout: float) -> int:
    payload = b"bench-grpc-check"
    async with channel(port) as ch:
        try:
            got = await ch.unary_unary(UNARY)(payload, timeout=timeout)
        except aio.AioRpcError as e:
            print(f"unary call failed: {e.code().name} {e.details()!r}", file=sys.stderr)
            return 1
        if got != payload:
            print(f"unary call answered {got[:100]!r}, not the request", file=sys.stderr)
            return 1
        call = ch.stream_stream(BIDI)(timeout=timeout)
        try:
            for i in range(3):
                message = payload + b"-%d" % i
                await call.write(message)
                echo = await call.read()
                if echo != message:
                    print(f"bidi message {i} came back as {echo!r}", file=sys.stderr)
                    return 1
            await call.done_writing()
            if await call.read() is not aio.EOF:
                print("bidi call sent more messages than it was sent", file=sys.stderr)
                return 1
            code = await call.code()
        except aio.AioRpcError as e:
            print(f"bidi call failed: {e.code().name} {e.details()!r}", file=sys.stderr)
            return 1
        if code != grpc.StatusCode.OK:
            print(f"bidi call ended with {code.name}", file=sys.stderr)
            return 1
    return 0


class Load:
    def __init__(self, size: int):
        self.message = (b"bench-grpc-" * (size // 11 + 1))[:size]
        self.counting = False
        self.stopping = False
        self.messages = 0
        self.errors = 0
        self.first_error = ""
        self.started = 0

    def error(self, text: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text

    async def stream(self, ch: aio.Channel, all_open: asyncio.Future, n: int) -> None:
        call = ch.stream_stream(BIDI)()
        message = self.message
        try:
            await call.write(message)
            if await call.read() != message:
                self.error("first echo differs from the message")
                return
            self.started += 1
            if self.started == n and not all_open.done():
                all_open.set_result(None)
            while not self.stopping:
                await call.write(message)
                echo = await call.read()
                if echo != message:
                    self.error("an echo is not the message sent" if echo is not aio.EOF
                               else "the call ended early")
                    return
                if self.counting:
                    self.messages += 1
            await call.done_writing()
            if await call.read() is not aio.EOF:
                self.error("a message after the half-close")
            code = await call.code()
            if code != grpc.StatusCode.OK:
                self.error(f"status {code.name}")
        except aio.AioRpcError as e:
            self.error(f"{e.code().name} {e.details()!r}")
        except Exception as e:   # keep the others going; report it
            self.error(f"{type(e).__name__}: {e}")
        finally:
            if not all_open.done() and self.errors:
                all_open.set_result(None)


async def load(port: int, n: int, channels: int, size: int, warmup: float, duration: float) -> int:
    chans = [channel(port) for _ in range(channels)]
    state = Load(size)
    all_open = asyncio.get_running_loop().create_future()
    tasks = [asyncio.ensure_future(state.stream(chans[i % channels], all_open, n)) for i in range(n)]
    try:
        await asyncio.wait_for(all_open, 30)
    except asyncio.TimeoutError:
        state.error(f"only {state.started} of {n} calls answered within 30s")
    if state.errors:
        print(f"calls failed to start: {state.errors} ({state.first_error})", file=sys.stderr)
        state.stopping = True
        for t in tasks:
            t.cancel()
        return 1
    print(f"ready {n}", flush=True)
    await asyncio.sleep(warmup)
    state.counting = True
    print("measure", flush=True)
    t0 = time.monotonic()
    await asyncio.sleep(duration)
    state.counting = False
    seconds = time.monotonic() - t0
    counted = state.messages
    print("stop", flush=True)
    state.stopping = True
    done, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
    if pending:
        state.error(f"{len(pending)} calls did not end within 30s of the half-close")
    for ch in chans:
        await ch.close()
    print("result " + json.dumps({"messages": counted, "seconds": seconds, "rate": counted / seconds,
                                  "errors": state.errors, "first_error": state.first_error}), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=5, help="check: seconds per call")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("check")
    lp = sub.add_parser("load")
    lp.add_argument("-n", type=int, default=50, help="concurrent bidi calls")
    lp.add_argument("--channels", type=int, default=1, help="channels (HTTP/2 connections)")
    lp.add_argument("--size", type=int, default=64, help="message bytes")
    lp.add_argument("--warmup", type=float, default=2)
    lp.add_argument("--duration", type=float, default=5)
    args = p.parse_args(argv)
    if args.mode == "check":
        return asyncio.run(check(args.port, args.timeout))
    return asyncio.run(load(args.port, args.n, args.channels, args.size, args.warmup, args.duration))


if __name__ == "__main__":
    sys.exit(main())
