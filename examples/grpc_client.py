"""Call the demo gRPC echo service through the gateway, with grpcio and raw bytes.

    .venv/bin/python examples/grpc_client.py                  # every call kind, once
    .venv/bin/python examples/grpc_client.py --target 127.0.0.1:50051 unary hello

``make run`` starts the demo gRPC backends (127.0.0.1:50061-50063) and the gateway, whose
``[[grpc_servers]]`` front door listens on 127.0.0.1:50051 (conf/site.toml). No
generated stubs are needed: the demo's ``demo.Echo`` methods take and return bytes, so
the client passes ``bytes`` with no (de)serializers. Each answer says which backend
served it (the ``x-backend`` initial metadata), so repeated runs show the balancing.
"""
from __future__ import annotations

import argparse
import sys

import grpc

SERVICE = "/demo.Echo/"


def show(kind: str, answer, call) -> None:
    backend = dict(call.initial_metadata()).get("x-backend", "?")
    print(f"{kind:13} via {backend}: {answer!r}")


def run(channel: grpc.Channel, kind: str, text: str, timeout: float) -> None:
    data = text.encode()
    if kind == "unary":
        unary = channel.unary_unary(SERVICE + "Unary")
        answer, call = unary.with_call(data, timeout=timeout)
        show(kind, answer, call)
    elif kind == "server-stream":
        call = channel.unary_stream(SERVICE + "ServerStream")(data, timeout=timeout)
        show(kind, list(call), call)
    elif kind == "client-stream":
        parts = [part.encode() for part in text.split()] or [b""]
        answer, call = channel.stream_unary(SERVICE + "ClientStream").with_call(
            iter(parts), timeout=timeout)
        show(kind, answer, call)
    elif kind == "bidi":
        parts = [part.encode() for part in text.split()] or [b""]
        call = channel.stream_stream(SERVICE + "Bidi")(iter(parts), timeout=timeout)
        show(kind, list(call), call)
    elif kind == "health":
        # grpc.health.v1 HealthCheckRequest{service: ""}: the empty message
        answer = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=timeout)
        status = {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(answer, answer)
        print(f"{kind:13}: {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051",
                        help="the gateway's gRPC front door (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline, seconds")
    parser.add_argument("kind", nargs="?", default="all",
                        choices=("all", "unary", "server-stream", "client-stream", "bidi",
                                 "health"))
    parser.add_argument("text", nargs="?", default="hello gRPC through the gateway")
    args = parser.parse_args(argv)
    kinds = (("unary", "server-stream", "client-stream", "bidi", "health")
             if args.kind == "all" else (args.kind,))
    with grpc.insecure_channel(args.target) as channel:
        try:
            for kind in kinds:
                run(channel, kind, args.text, args.timeout)
        except grpc.RpcError as e:
            print(f"{kind}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
