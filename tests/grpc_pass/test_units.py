"""The gRPC package's pure parts, without sockets or loops: request metadata towards
the peer, what an attempt's end means (retry condition and outcome), nginx's retry
tests, channel targets, client addresses, and the health check messages."""
from __future__ import annotations

import grpc
import pytest
from twisted.internet.task import Clock

from gateway.config.model import Address, GrpcServerSettings
from gateway.grpc_pass.channels import channel_target
from gateway.grpc_pass.front_door import client_address, front_door_target
from gateway.grpc_pass.health import check_request, serving_status
from gateway.grpc_pass.relay import (
    REPLAY_LIMIT, GrpcTarget, RelayCall, classify, status_name, upstream_metadata,
)
from gateway.upstream import Outcome, UpstreamManager
from tests.upstream.helpers import server, upstream

# -- metadata --------------------------------------------------------------------------


def test_hop_by_hop_pseudo_and_grpcio_keys_are_dropped_and_xff_set():
    metadata, compression = upstream_metadata([
        (":authority", "gw"), ("te", "trailers"), ("connection", "close, x-named"),
        ("x-named", "1"), ("keep-alive", "5"), ("proxy-authorization", "s"),
        ("transfer-encoding", "chunked"), ("upgrade", "h2c"), ("host", "h"),
        ("content-type", "application/grpc"), ("user-agent", "ua"),
        ("grpc-timeout", "1S"), ("grpc-accept-encoding", "gzip"),
        ("x-forwarded-for", "6.6.6.6"), ("x-kept", "v"), ("x-kept", "w"),
    ], "192.0.2.1")
    assert metadata == [("x-kept", "v"), ("x-kept", "w"), ("x-forwarded-for", "192.0.2.1")]
    assert compression is None


def test_without_a_client_address_x_forwarded_for_is_left_as_given():
    assert upstream_metadata([("x-forwarded-for", "1.2.3.4")], None) == (
        [("x-forwarded-for", "1.2.3.4")], None)


def test_values_are_made_what_grpcio_accepts():
    """Keys lower-cased; ``-bin`` text is base64 (padding optional) → bytes, invalid
    base64 dropped; text values must be printable ASCII; bytes text is latin-1."""
    metadata, _ = upstream_metadata([
        ("X-Mixed", "ok"), ("a-bin", "AAH/"), ("b-bin", "AAE"), ("c-bin", b"\x00"),
        ("d-bin", "not base64!"), ("e", "caf\u00e9"), ("f", b"raw"), ("bad key", "x"),
        ("g", "tab\there"),
    ], None)
    assert metadata == [("x-mixed", "ok"), ("a-bin", b"\x00\x01\xff"),
                        ("b-bin", b"\x00\x01"), ("c-bin", b"\x00"), ("f", "raw")]


@pytest.mark.parametrize("encoding, expected", [
    ("gzip", grpc.Compression.Gzip), ("deflate", grpc.Compression.Deflate),
    ("identity", None), ("snappy", None),
])
def test_the_clients_grpc_encoding_is_reapplied_upstream(encoding, expected):
    assert upstream_metadata([("grpc-encoding", encoding)], None) == ([], expected)


# -- what an attempt's end means --------------------------------------------------------

REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
           "Failed to connect to remote host: Connection refused")


@pytest.mark.parametrize("code, details, gateway_timeout, conditions, outcome", [
    (14, REFUSED, False, {"error": False}, Outcome.FAILED),
    (14, "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:1: "
         "Timeout occurred: FD Shutdown", False, {"timeout": False}, Outcome.FAILED),
    (14, "overloaded", False, {"unavailable": False}, Outcome.FAILED),
    (14, "Socket closed", False, {"unavailable": False}, Outcome.FAILED),
    (14, "Received http2 header with status: 502", False,
     {"http_502": True, "unavailable": False}, Outcome.FAILED),
    (7, "Received http2 header with status: 403", False, {"http_403": True}, Outcome.NEXT),
    (12, "Received http2 header with status: 404", False, {"http_404": True}, Outcome.NEXT),
    (13, "Received http2 header with status: 500", False,
     {"http_500": True, "internal": False}, Outcome.FAILED),
    (4, "peer's own deadline", False, {"deadline_exceeded": False}, Outcome.FAILED),
    (8, "quota", False, {"resource_exhausted": False}, Outcome.FAILED),
    (13, "bug", False, {"internal": False}, Outcome.FAILED),
    (4, "Deadline Exceeded", True, {"timeout": True}, Outcome.FAILED),
])
def test_failures_before_headers_name_their_conditions(code, details, gateway_timeout,
                                                       conditions, outcome):
    """Each condition that allows a retry, and whether it needs ``non_idempotent``
    too (True: the request reached the peer)."""
    failed = classify(code, details, [], gateway_timeout)
    assert (failed.conditions, failed.outcome) == (conditions, outcome)


@pytest.mark.parametrize("code", [0, 1, 2, 3, 5, 7, 9, 12, 16])
def test_other_answers_are_the_peers_and_passed_as_they_are(code):
    assert classify(code, "whatever", [], False) is None


def test_status_names():
    assert [status_name(c) for c in (0, 4, 14, 99)] == [
        "OK", "DEADLINE_EXCEEDED", "UNAVAILABLE", "99"]


class _Relay:
    def __init__(self, manager, clock):
        self.manager, self.clock, self.loop, self.metrics = manager, clock, None, None
        self.calls = set()


def relay_call(target: GrpcTarget, peers=3):
    clock = Clock()
    manager = UpstreamManager(
        {"app": upstream(*(server(f"p{i}") for i in range(peers)))}, clock)
    call = RelayCall(_Relay(manager, clock), target, "/a.B/C", [], None, None, None, None)
    return call, clock


def failure(condition: str, needs_non_idempotent: bool = False):
    failed = classify(14, REFUSED, [], False)
    failed.conditions = {condition: needs_non_idempotent}
    return failed


def test_retry_needs_the_condition_listed():
    call, _ = relay_call(GrpcTarget("app", next_upstream=("error",)))
    assert call._may_retry(failure("error"))
    assert not call._may_retry(failure("unavailable"))
    off, _ = relay_call(GrpcTarget("app", next_upstream=()))
    assert not off._may_retry(failure("error"))


def test_a_request_that_reached_the_peer_needs_non_idempotent():
    """nginx: a POST (every gRPC call) that was sent is retried only with
    ``non_idempotent``."""
    call, _ = relay_call(GrpcTarget("app", next_upstream=("timeout",)))
    assert not call._may_retry(failure("timeout", needs_non_idempotent=True))
    call, _ = relay_call(GrpcTarget("app", next_upstream=("timeout", "non_idempotent")))
    assert call._may_retry(failure("timeout", needs_non_idempotent=True))


def test_any_listed_condition_allows_the_retry():
    """An HTTP 502 from the peer is UNAVAILABLE to grpcio: ``unavailable`` retries it
    as well as ``http_502`` with ``non_idempotent``."""
    bad_gateway = classify(14, "Received http2 header with status: 502", [], False)
    for listed, retried in ((("unavailable",), True), (("http_502",), False),
                            (("http_502", "non_idempotent"), True), (("error",), False)):
        call, _ = relay_call(GrpcTarget("app", next_upstream=listed))
        assert call._may_retry(bad_gateway) is retried, listed


def test_retries_stop_at_tries_and_next_upstream_timeout():
    call, _ = relay_call(GrpcTarget("app", next_upstream=("error",), tries=2))
    assert call.attempts.tries == 2
    call.attempts.tries = 0
    assert not call._may_retry(failure("error"))
    call, clock = relay_call(GrpcTarget("app", next_upstream=("error",),
                                        next_upstream_timeout=1.0))
    clock.advance(0.9)
    assert call._may_retry(failure("error"))
    clock.advance(0.1)
    assert not call._may_retry(failure("error"))


class _Sink:
    def __init__(self):
        self.ended = []

    def end(self, code, details, trailing):
        self.ended.append((code, details, trailing))


class _Metrics:
    def __init__(self):
        self.calls = []

    def grpc_call(self, status):
        self.calls.append(status)


@pytest.mark.parametrize("args, ended, counted", [
    ((), (1, "Cancelled", []), "CANCELLED"),
    ((8, "Received message larger than max"),
     (8, "Received message larger than max", []), "RESOURCE_EXHAUSTED"),
])
def test_cancel_ends_and_counts_the_call_with_the_clients_status(args, ended, counted):
    """A call the gateway refused mid-way (a message above the limit) is counted in
    ``gateway_grpc_calls_total`` with the status the client got, not as CANCELLED."""
    clock = Clock()
    manager = UpstreamManager({"app": upstream(server("p0"))}, clock)
    relay = _Relay(manager, clock)
    relay.metrics = _Metrics()
    sink = _Sink()
    call = RelayCall(relay, GrpcTarget("app"), "/a.B/C", [], None, sink, None, None)
    relay.calls.add(call)
    call.cancel(*args)
    call.cancel()                     # once only
    assert sink.ended == [ended]
    assert relay.metrics.calls == [counted]
    assert call.status == ended[0] and relay.calls == set()


def test_requests_beyond_the_replay_limit_are_not_retried():
    call, _ = relay_call(GrpcTarget("app", next_upstream=("unavailable",)))
    call._replay = None      # what the writer does past REPLAY_LIMIT bytes
    assert not call._may_retry(failure("unavailable"))
    assert REPLAY_LIMIT == 1024 * 1024


def test_the_attempt_deadline_is_the_clients_capped_by_read_timeout():
    call, clock = relay_call(GrpcTarget("app", read_timeout=2.0))
    assert call._attempt_timeout() == (2.0, True)
    call.deadline = clock.seconds() + 5.0
    clock.advance(1.0)
    assert call._attempt_timeout() == (2.0, True)
    clock.advance(2.5)
    assert call._attempt_timeout() == (1.5, False)
    plain, _ = relay_call(GrpcTarget("app"))
    assert plain._attempt_timeout() == (None, False)


# -- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("address, target", [
    (Address("127.0.0.1:50051", "127.0.0.1", 50051), "ipv4:127.0.0.1:50051"),
    (Address("[::1]:50051", "::1", 50051), "ipv6:[::1]:50051"),
    (Address("backend:50051", "backend", 50051), "dns:///backend:50051"),
    (Address("unix:/run/g.sock", path="/run/g.sock"), "unix:/run/g.sock"),
])
def test_channel_targets(address, target):
    assert channel_target(address) == target


@pytest.mark.parametrize("peer, address", [
    ("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"),
    ("unix:/tmp/x.sock", "unix:"), ("unix:", "unix:"),
])
def test_client_addresses_as_remote_addr_writes_them(peer, address):
    assert client_address(peer) == address


def test_a_front_door_target():
    settings = GrpcServerSettings(listen="127.0.0.1:0", grpc_pass="grpcs://app",
                                  upstream="app", scheme="grpcs",
                                  grpc_next_upstream=("error", "unavailable"))
    assert front_door_target(settings) == GrpcTarget(
        group="app", tls=True, next_upstream=("error", "unavailable"))


# -- grpc.health.v1 messages --------------------------------------------------------------


def test_health_check_requests_are_protobuf():
    assert check_request("") == b""
    assert check_request("test.Echo") == b"\x0a\x09test.Echo"
    long_name = "s" * 200
    assert check_request(long_name) == b"\x0a\xc8\x01" + long_name.encode()


@pytest.mark.parametrize("response, status", [
    (b"", 0), (b"\x08\x01", 1), (b"\x08\x02", 2), (b"\x08\x03", 3),
    # unknown fields of every wire type are skipped
    (b"\x10\x05\x19" + b"\x00" * 8 + b"\x22\x02ab\x2d\x00\x00\x00\x00\x08\x01", 1),
])
def test_health_check_responses_are_decoded(response, status):
    assert serving_status(response) == status


@pytest.mark.parametrize("response", [b"\x08", b"\x0a\x05ab", b"\x0b", b"\x08\x80"])
def test_broken_health_check_responses_are_errors(response):
    with pytest.raises(ValueError):
        serving_status(response)
