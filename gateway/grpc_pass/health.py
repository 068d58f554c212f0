"""The ``grpc`` health probe: ``grpc.health.v1.Health/Check`` over the peer's own channel.

This module owns what one ``health_check.type = "grpc"`` probe does (CONFIG.md): a unary
``Check`` call asking about ``grpc_service`` (``""``: the server as a whole), on the same
``grpc.aio`` channel the peer's calls use (so with ``grpcs://`` it verifies the peer as
calls do, and a probe also keeps that channel's connection warm). The verdict:

- ``SERVING`` passes; ``NOT_SERVING``, ``SERVICE_UNKNOWN`` and ``UNKNOWN`` fail;
- a call that fails (refused, reset, timed out, any status) fails, with the status
  name and details as the reason;
- ``UNIMPLEMENTED`` (the peer has no health service) follows ``grpc_unimplemented``:
  ``"healthy"`` (the default: the peer answers gRPC, so it is up) or ``"unhealthy"``.

When to probe and what the result does to the peer is
:mod:`gateway.upstream.health`'s. The ``HealthCheckRequest``/``HealthCheckResponse``
messages are one-field protobufs, encoded and decoded here by hand (no generated code
and no extra dependency); the wire format is protobuf's (field 1, length-delimited
string; field 1, varint enum).
"""
from __future__ import annotations

import grpc
from grpc import aio
from twisted.internet.defer import Deferred

from gateway.upstream.health import ProbeResult

__all__ = ["CHECK_METHOD", "GrpcProbe", "SERVING_STATUS", "check_request",
           "serving_status"]

CHECK_METHOD = "/grpc.health.v1.Health/Check"

#: ``HealthCheckResponse.ServingStatus`` values and names
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def check_request(service: str) -> bytes:
    """A serialised ``HealthCheckRequest{service}`` (empty for ``""``, as protobuf
    leaves default values out)."""
    if not service:
        return b""
    name = service.encode("utf-8")
    return b"\x0a" + _varint(len(name)) + name


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def serving_status(response: bytes) -> int:
    """The ``status`` of a serialised ``HealthCheckResponse`` (0, UNKNOWN, when absent);
    other fields are skipped. ``ValueError`` when it is not a protobuf message."""
    status = 0
    pos = 0
    while pos < len(response):
        key, pos = _read_varint(response, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(response, pos)
            if field == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(response, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if pos > len(response):
            raise ValueError("truncated field")
    return status


class GrpcProbe:
    """``probe(peer) -> Deferred[ProbeResult]`` for the peers of one group.

    ``channels`` is the service's :class:`~gateway.grpc_pass.channels.Channels`;
    ``tls`` says whether the group is used with ``grpcs://``. Cancelling the Deferred
    (the checker's ``timeout``) cancels the call.
    """

    def __init__(self, settings, channels, group, tls: bool = False):
        self.settings = settings
        self.channels = channels
        self.group = group
        self.tls = tls
        self.request = check_request(settings.grpc_service)
        self.unimplemented_healthy = (
            getattr(settings, "grpc_unimplemented", "healthy") == "healthy")

    def __call__(self, peer) -> Deferred:
        task = self.channels.loop.create_task(self._check(peer))
        return Deferred.fromFuture(task)

    async def _check(self, peer) -> ProbeResult:
        channel = self.channels.get(self.group, peer, self.tls)
        check = channel.unary_unary(CHECK_METHOD, request_serializer=None,
                                    response_deserializer=None)
        try:
            response = await check(self.request, timeout=self.settings.timeout)
        except aio.AioRpcError as e:
            code = e.code()
            reason = f"{code.name}: {e.details()}" if e.details() else code.name
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return ProbeResult(self.unimplemented_healthy, reason)
            return ProbeResult(False, reason)
        try:
            status = serving_status(response)
        except ValueError as e:
            return ProbeResult(False, f"not a HealthCheckResponse: {e}")
        return ProbeResult(status == SERVING, SERVING_STATUS.get(status, str(status)))
