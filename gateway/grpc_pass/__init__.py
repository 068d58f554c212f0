"""gRPC: grpcio on the upstream side, raw message bytes, the shared upstream manager.

The only package of the gateway that touches asyncio (grpc.aio runs on the reactor's
own asyncio loop; DESIGN.md, decisions 1 and 4). Its parts:

- ``channels``: one lazily created ``grpc.aio`` channel per peer (and scheme);
- ``relay``: a client call relayed to peers — every call kind as raw bytes, metadata,
  deadlines, cancellation, retries before the response headers, upstream accounting;
- ``front_door``: the ``[[grpc_servers]]`` grpcio server relaying any method;
- ``location``: ``grpc_pass`` locations on the HTTP/1.1 and HTTP/2 listeners;
- ``health``: the ``grpc`` active health probe (``grpc.health.v1`` ``Check``).

Importing this package imports grpcio; ``gateway.service`` does so only for a
configuration that uses gRPC.
"""
from gateway.grpc_pass.channels import Channels
from gateway.grpc_pass.front_door import FrontDoor
from gateway.grpc_pass.health import GrpcProbe
from gateway.grpc_pass.relay import GrpcTarget, Relay, RelayCall, Sink

__all__ = ["Channels", "FrontDoor", "GrpcProbe", "GrpcTarget", "Relay", "RelayCall",
           "Sink"]
