#!/usr/bin/env python3
"""gRPC echo peer for the benchmark's ``grpc`` case: ``grpcecho.py --port P``.

One ``grpc.aio`` server on 127.0.0.1 (the project's venv has grpcio), raw bytes both ways
(no generated code, no (de)serialisers), answering the same service and methods as the
demo's gRPC backends (gateway/demo.py, ``--grpc-ports``):

- ``/demo.Echo/Unary``: answers the request message;
- ``/demo.Echo/Bidi``: echoes each request message as it arrives.

It is not the demo's server because that one is grpcio's threaded server with 8
threads: a bidi stream holds a thread for its whole life, so it would serve only 8 of
the case's streams at once. The same process serves every target of the case (direct,
nginx, the gateway), so they all measure against the same peer.

Prints ``ready PORT`` on stdout once serving; stops on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from grpc import aio

MiB = 1024 * 1024


def handlers():
    async def unary(request: bytes, context) -> bytes:
        return request

    async def bidi(requests, context):
        async for message in requests:
            yield message

    return (grpc.method_handlers_generic_handler("demo.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }),)


async def serve(port: int) -> None:
    server = aio.server(options=(
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", 16 * MiB),
        ("grpc.max_receive_message_length", 16 * MiB),
    ))
    server.add_generic_rpc_handlers(handlers())
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise SystemExit(f"grpcecho: cannot listen on 127.0.0.1:{port}")
    await server.start()
    print(f"ready {bound}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed)")
    args = p.parse_args(argv)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
