"""The http and tcp probes of active health checks, as transcripts: the exact request
bytes a probe writes, the response bytes fed back, the verdict, and whether the
connection was closed. MemoryReactorClock and StringTransport; no sockets."""
from __future__ import annotations

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.config.model import Address, HealthCheckSettings, PeerSettings
from gateway.deadlines import Deadlines
from gateway.http.client import UpstreamConnector, UpstreamError
from gateway.http.probes import BODY_LIMIT, host_header, make_probe
from gateway.upstream.health import ProbeResult
from gateway.upstream.peer import Peer

ADDRESS = Address("127.0.0.1:8080", "127.0.0.1", 8080)


class Run:
    """One probe against a MemoryReactorClock: connect it with :meth:`accept`, feed
    response bytes with :meth:`feed`; ``results`` holds the verdict or the failure."""

    def __init__(self, address=ADDRESS, resolved=None, **settings):
        self.reactor = MemoryReactorClock()
        connector = UpstreamConnector(self.reactor, Deadlines(self.reactor))
        self.settings = HealthCheckSettings(**settings)
        probe = make_probe(self.settings, connector)
        self.results = []
        peer = Peer(PeerSettings(address=address))
        if resolved is not None:        # a resolve = true peer: the IP it connects to
            peer.address = resolved
        self.deferred = probe(peer)
        self.deferred.addBoth(self.results.append)
        self.transport = StringTransport()
        self.protocol = None

    def accept(self):
        factory = self.reactor.tcpClients[0][2]
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return self

    def refuse(self):
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ierror.ConnectionRefusedError()))
        return self

    def feed(self, *pieces):
        for piece in pieces:
            self.protocol.dataReceived(piece)
        return self

    @property
    def result(self):
        (result,) = self.results
        return result


def response(status, body=b"", reason=b"X"):
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (status, reason, len(body), body)


# -- the request ---------------------------------------------------------------------


def test_http_probe_sends_get_uri_with_the_peer_as_host_and_connection_close():
    run = Run(uri="/health?full=1").accept()
    assert run.transport.value() == (
        b"GET /health?full=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Connection: close\r\n\r\n")
    assert run.reactor.tcpClients[0][:2] == ("127.0.0.1", 8080)
    assert run.reactor.tcpClients[0][3] == 2.0      # timeout is the connect timeout


def test_a_resolved_peer_is_asked_for_the_configured_name_at_its_own_ip():
    run = Run(Address("app.internal:8080", "app.internal", 8080),
              resolved=Address("127.0.0.7:8080", "127.0.0.7", 8080)).accept()
    assert run.reactor.tcpClients[0][:2] == ("127.0.0.7", 8080)
    assert run.transport.value() == (
        b"GET / HTTP/1.1\r\nHost: app.internal:8080\r\nConnection: close\r\n\r\n")


def test_custom_headers_are_sent_and_a_host_header_replaces_the_default():
    run = Run(headers=(("Host", "app.example"), ("X-Check", "deep"))).accept()
    assert run.transport.value() == (
        b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Check: deep\r\n"
        b"Connection: close\r\n\r\n")


def test_a_connection_header_of_the_operator_replaces_connection_close():
    run = Run(headers=(("X-Check", "1"), ("Connection", "keep-alive"))).accept()
    assert run.transport.value() == (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Check: 1\r\n"
        b"Connection: keep-alive\r\n\r\n")


@pytest.mark.parametrize("address, host", [
    (Address("a.example:80", "a.example", 80), "a.example"),
    (Address("a.example:8080", "a.example", 8080), "a.example:8080"),
    (Address("[::1]:81", "::1", 81), "[::1]:81"),
    (Address("[::1]:80", "::1", 80), "[::1]"),
    (Address("unix:/run/app.sock", path="/run/app.sock"), "localhost"),
])
def test_default_host_is_written_as_proxy_host_writes_the_address(address, host):
    assert host_header(address) == host


# -- status ---------------------------------------------------------------------------


@pytest.mark.parametrize("status, passed", [
    (200, True), (204, True), (302, True), (399, True), (400, False),
    (404, False), (500, False), (503, False),
])
def test_default_status_range_is_200_to_399(status, passed):
    run = Run().accept().feed(response(status, b"x"))
    assert run.result == ProbeResult(passed, f"status {status}")


def test_an_interim_response_is_skipped_and_the_final_status_decides():
    run = Run().accept().feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert run.results == []
    run.feed(response(503))
    assert run.result == ProbeResult(False, "status 503")


@pytest.mark.parametrize("status, passed", [
    (200, True), (201, False), (204, True), (301, True), (302, True), (303, True),
    (304, False), (500, False),
])
def test_status_list_of_codes_and_ranges(status, passed):
    run = Run(status=((200, 200), (204, 204), (301, 303))).accept()
    run.feed(response(status, b"x"))
    assert run.result.passed is passed


def test_verdict_on_status_alone_closes_without_reading_the_body():
    run = Run().accept().feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    assert run.result == ProbeResult(True, "status 200")
    assert run.transport.disconnecting


def test_a_bad_status_fails_even_when_a_body_is_wanted():
    run = Run(body="ok").accept().feed(response(500, b"ok"))
    assert run.result == ProbeResult(False, "status 500")


# -- body ---------------------------------------------------------------------------------


def test_body_substring_found_across_reads_passes_at_once():
    run = Run(body="READY").accept().feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstate: RE", b"ADY and")
    assert run.result == ProbeResult(True, "status 200, body matched")
    assert run.transport.disconnecting


def test_body_substring_in_a_chunked_body_passes():
    run = Run(body="ok").accept().feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nall\r\n", b"3\r\n ok\r\n0\r\n\r\n")
    assert run.result.passed is True


def test_body_without_the_substring_fails_at_the_end_of_the_response():
    run = Run(body="ok").accept().feed(response(200, b"maintenance"))
    assert run.result == ProbeResult(False, "status 200, body does not contain 'ok'")


def test_only_the_first_256k_of_the_body_are_searched():
    run = Run(body="ok").accept().feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 2),
        b"x" * (BODY_LIMIT - 1))
    assert run.results == []
    run.feed(b"xok")
    assert run.result == ProbeResult(
        False, "status 200, body does not contain 'ok' in its first 256k")
    assert run.transport.disconnecting


def test_the_substring_ending_exactly_at_the_limit_is_found():
    run = Run(body="ok").accept().feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 10),
        b"x" * (BODY_LIMIT - 2), b"okxxxxxxxxxx")
    assert run.result.passed is True


# -- errors and cancellation ---------------------------------------------------------------


def test_refused_connection_is_an_errback_in_nginx_words():
    run = Run().refuse()
    assert run.result.check(UpstreamError)
    assert run.result.value.message == (
        "connect() failed (111: Connection refused) while connecting to upstream")


def test_peer_closing_before_answering_is_an_errback():
    run = Run().accept()
    run.protocol.connectionLost(Failure(ierror.ConnectionDone()))
    assert run.result.check(UpstreamError)
    assert run.result.value.message.startswith("upstream prematurely closed connection")


def test_cancel_while_connecting_stops_connecting():
    run = Run()
    run.deferred.cancel()
    assert run.reactor.connectors[0].stoppedConnecting
    assert run.result.check(CancelledError)


def test_cancel_after_the_request_was_sent_aborts_the_connection():
    run = Run().accept()
    run.deferred.cancel()
    assert run.result.check(CancelledError)
    assert run.transport.disconnecting
    run.feed(response(200))             # too late: nothing changes
    assert len(run.results) == 1


# -- tcp ---------------------------------------------------------------------------------------


def test_tcp_probe_passes_on_connect_and_closes_at_once():
    run = Run(type="tcp").accept()
    assert run.result == ProbeResult(True, "connected")
    assert run.transport.value() == b""
    assert run.transport.disconnecting


def test_tcp_probe_refused_is_an_errback():
    run = Run(type="tcp").refuse()
    assert run.result.check(UpstreamError)


def test_tcp_probe_to_a_unix_socket_connects_to_its_path():
    run = Run(Address("unix:/run/app.sock", path="/run/app.sock"), type="tcp", timeout=3)
    assert run.reactor.unixClients[0][0] == "/run/app.sock"
    assert run.reactor.unixClients[0][2] == 3


def test_grpc_has_no_probe_here():
    with pytest.raises(ValueError, match="grpc"):
        make_probe(HealthCheckSettings(type="grpc"), None)
