"""SIGTERM and SIGHUP on a real ``twistd -n gateway`` process.

The gateway runs as twistd runs it in production (its own process, the tap's reactor
and signal handling), listening on a unix socket in a temporary directory; backends
and clients run in the test's reactor. Every wait is bounded.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from tests.integration.harness import WAIT, RawClient, sleep, start_backends
from tests.integration.test_reload import held

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: how long the gateway process may take to start or to exit
PROCESS_WAIT = 30.0


class Twistd:
    """One ``twistd -n --pidfile= gateway -c FILE`` process and its log file."""

    def __init__(self, testcase, toml: str, **values):
        self.directory = tempfile.mkdtemp(prefix="gateway-twistd-")
        testcase.addCleanup(shutil.rmtree, self.directory)
        self.socket = os.path.join(self.directory, "gw.sock")
        self.config = os.path.join(self.directory, "site.toml")
        self.log = os.path.join(self.directory, "twistd.log")
        self.values = dict(values, socket=self.socket)
        self.write(toml)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "gateway", "-c", self.config],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        testcase.addCleanup(self._kill)

    def write(self, toml: str) -> None:
        text = textwrap.dedent(toml)
        for key, value in self.values.items():
            text = text.replace("{%s}" % key, value)
        with open(self.config, "w") as f:
            f.write(text)

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def connect(self) -> RawClient:
        client = RawClient()
        await protocol.ClientCreator(reactor, lambda: client).connectUNIX(
            self.socket, timeout=WAIT)
        return client

    async def get(self, path: str = "/"):
        client = await self.connect()
        client.transport.write(
            b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path.encode())
        (response,) = await client.wait_responses(1)
        await client.wait_closed()
        return response

    async def accepting(self) -> bool:
        try:
            client = await self.connect()
        except Exception:
            return False
        client.transport.loseConnection()
        await client.wait_closed()
        return True

    async def until(self, predicate, what: str, timeout: float = PROCESS_WAIT) -> None:
        waited = 0.0
        while not await predicate():
            if waited >= timeout or self.process.poll() is not None:
                raise AssertionError(f"{what} within {timeout}s; exit status "
                                     f"{self.process.poll()}; log:\n{self.output()}")
            await sleep(0.05)
            waited += 0.05

    async def started(self) -> None:
        await self.until(self.accepting, "not accepting")

    async def exit_status(self) -> int:
        async def exited():
            return self.process.poll() is not None
        waited = 0.0
        while not await exited():
            if waited >= PROCESS_WAIT:
                raise AssertionError(f"still running after {PROCESS_WAIT}s; log:\n"
                                     f"{self.output()}")
            await sleep(0.05)
            waited += 0.05
        return self.process.returncode


class Signals(unittest.TestCase):
    timeout = 120

    async def test_sigterm_stops_accepting_lets_the_request_in_flight_finish_and_exits_0(self):
        (backend,) = start_backends(self, ("a", held("a")))
        gateway = Twistd(self, """
            [gateway]
            access_log = false
            shutdown_timeout = "60s"
            [admin]
            listen = false
            [upstreams.app]
            servers = [ { address = "{b0}" } ]
            [[servers]]
            listen = ["unix:{socket}"]
            locations = [ { path = "/", proxy_pass = "http://app" } ]
            """, b0=backend.address)
        await gateway.started()
        client = await gateway.connect()
        client.transport.write(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await gateway.until(lambda: _true(bool(backend.held)), "the request never came")

        gateway.process.send_signal(signal.SIGTERM)

        async def refused():
            return not await gateway.accepting()
        await gateway.until(refused, "still accepting after SIGTERM")
        self.assertIsNone(gateway.process.poll())      # waiting for the request
        backend.held[0].callback(None)
        (response,) = await client.wait_responses(1)
        self.assertEqual((response.status, response.body), (200, b"held by a"))
        await client.wait_closed()
        self.assertEqual(await gateway.exit_status(), 0, gateway.output())
        self.assertIn("waiting up to 60s (shutdown_timeout)", gateway.output())

    async def test_sighup_reloads_the_file_in_place(self):
        config = """
            [gateway]
            access_log = false
            [admin]
            listen = false
            [[servers]]
            listen = ["unix:{socket}"]
            locations = [ { path = "/", return = { status = 200, body = "%s" } } ]
            """
        gateway = Twistd(self, config % "one")
        await gateway.started()
        self.assertEqual((await gateway.get()).body, b"one")

        gateway.write(config % "two")
        gateway.process.send_signal(signal.SIGHUP)
        # no traffic meanwhile: the signal alone wakes the reactor
        await gateway.until(lambda: _true("reload done" in gateway.output()),
                            "no reload after SIGHUP")
        self.assertEqual((await gateway.get()).body, b"two")
        self.assertIsNone(gateway.process.poll())

        gateway.process.send_signal(signal.SIGTERM)
        self.assertEqual(await gateway.exit_status(), 0, gateway.output())


async def _true(value) -> bool:
    return bool(value)
