"""``gateway.reload`` without sockets: the result a reload reports, and the signal
service's handling of SIGHUP and of twistd's SIGTERM exit status."""
from __future__ import annotations

import signal

from twisted.internet import defer

from gateway.reload import ProcessSignals, ReloadResult


def test_the_admin_api_status_of_each_kind_of_result():
    assert ReloadResult(True, changes=["x"]).status == 200
    assert ReloadResult(False, ["a: bad"], invalid=True).status == 422
    assert ReloadResult(True, ["cannot listen on tcp:80: in use"]).status == 500
    assert ReloadResult(False, ["the gateway is stopping"], refused=True).status == 503
    assert ReloadResult(True, ["cannot listen"], ["listener x added"]).document() == {
        "reloaded": True, "ok": False, "errors": ["cannot listen"],
        "changes": ["listener x added"]}


class FakeReactor:
    def __init__(self):
        self.from_thread = []
        self._exitSignal = None

    def callFromThread(self, f, *args):
        self.from_thread.append((f, args))


def test_sighup_schedules_a_reload_on_the_reactor_thread():
    reloads = []
    reactor = FakeReactor()
    signals = ProcessSignals(lambda: reloads.append(1) or defer.succeed(None), reactor)
    signals._received(signal.SIGHUP, None)
    assert reloads == []                   # nothing runs inside the signal handler
    f, args = reactor.from_thread.pop()
    f(*args)
    assert reloads == [1]


def test_a_graceful_stop_begun_by_sigterm_exits_0_and_sigint_keeps_twisteds_status():
    reactor = FakeReactor()
    reactor._exitSignal = signal.SIGTERM
    ProcessSignals(lambda: None, reactor).stopService()
    assert reactor._exitSignal is None
    reactor._exitSignal = signal.SIGINT
    ProcessSignals(lambda: None, reactor).stopService()
    assert reactor._exitSignal == signal.SIGINT
