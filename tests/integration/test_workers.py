"""``workers = 2`` with real processes: ``twistd -n gateway`` as the master, two workers.

Each test starts the master with ``reactor.spawnProcess`` on a configuration in its
temporary directory (every listener on 127.0.0.1 port 0: the master binds them and logs
the ports it got), reads the log lines it writes, and kills whatever is left in its
cleanup. Every wait is bounded. The ``return`` location answers ``$pid``, so a
response says which worker served it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from gateway.master.sockets import AdoptedEndpoint, BindError, bind
from tests.integration.harness import (
    WAIT, Backend, RawClient, get, request, sleep, start_backends,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = "from twisted.scripts.twistd import run; run()"

CONFIG = """
[gateway]
workers = 2
access_log = false
shutdown_timeout = "5s"
[admin]
listen = "tcp:0:interface=127.0.0.1"
[upstreams.app]
servers = [ {{ address = "{backend}" }} ]
[[servers]]
listen = [{listen}]
locations = [ {{ path = "/", proxy_pass = "http://app" }},
              {{ path = "= /pid", return = {{ status = 200, body = "$pid" }} }} ]
"""


class Master(protocol.ProcessProtocol):
    """The master process: its log lines, and a Deferred for its exit status."""

    def __init__(self):
        self.output = ""
        self.status = None
        self._waiting = []
        self._ended = []

    def outReceived(self, data):
        self.output += data.decode("utf-8", "replace")
        for item in list(self._waiting):
            pattern, d = item
            match = re.search(pattern, self.output)
            if match:
                self._waiting.remove(item)
                d.callback(match)

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value
        waiting, self._ended = self._ended, []
        for d in waiting:
            d.callback(reason.value)

    def wait_ended(self, timeout: float = WAIT) -> defer.Deferred:
        """Fires with the exit reason (``exitCode``, ``signal``)."""
        if self.status is not None:
            return defer.succeed(self.status)
        d = defer.Deferred()
        self._ended.append(d)
        return d.addTimeout(timeout, reactor)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> defer.Deferred:
        """The first match of ``pattern`` in the output, now or when it is written."""
        match = re.search(pattern, self.output)
        if match:
            return defer.succeed(match)
        d = defer.Deferred()
        self._waiting.append((pattern, d))
        return d.addTimeout(timeout, reactor)


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def until(predicate, timeout: float = WAIT, step: float = 0.05):
    deadline = reactor.seconds() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s")
        await sleep(step)


async def admin(port: int, method: str, path: str, data=None):
    body = json.dumps(data).encode() if data is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    client, responses = await request(port, head.encode() + body)
    await client.wait_closed()
    response = responses[0]
    if (response.header("Content-Type") or "").startswith("application/json"):
        return response.status, json.loads(response.body)
    return response.status, response.body.decode()


def unix_get(path: str, target: str = "/pid") -> bytes:
    """One request over a unix socket (blocking, bounded: the gateway is another
    process); the response body."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


class Workers(unittest.TestCase):
    timeout = 30

    def setUp(self):
        # a short path under the system temp dir (unix socket paths are limited to
        # 108 bytes), removed after the test
        self.dir = tempfile.mkdtemp(prefix="gw-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "site.toml")
        self.backend = start_backends(self, "b0")[0]
        self.requests_made = 0

    def write(self, *listens: str):
        listen = ", ".join(f'"{d}"' for d in listens or ("tcp:0:interface=127.0.0.1",))
        with open(self.path, "w") as f:
            f.write(CONFIG.format(backend=self.backend.address, listen=listen))

    async def start(self, *listens: str):
        """Start the master; wait for its ports and both workers' answers."""
        self.write(*listens)
        master = Master()
        args = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "gateway", "-c", self.path]
        self.process = reactor.spawnProcess(master, sys.executable, args,
                                            env=dict(os.environ), path=ROOT)
        self.addCleanup(self.kill_everything, master)
        self.master = master
        port = await master.wait_for(r"listening on tcp:0:interface=127\.0\.0\.1 at "
                                     r"127\.0\.0\.1:(\d+)")
        admin_port = await master.wait_for(r"admin listener \S+ at 127\.0\.0\.1:(\d+)")
        self.port, self.admin_port = int(port.group(1)), int(admin_port.group(1))
        await self.workers_answering()
        return master

    async def workers_answering(self, count: int = 2) -> list[dict]:
        """The workers, once ``count`` of them answer the master's admin listener."""

        async def answering():
            status, document = await admin(self.admin_port, "GET", "/status")
            workers = document["gateway"]["workers"]
            if status == 200 and len(workers) == count and all(
                    w["answered"] and w["state"] == "running" for w in workers):
                return workers
            return None

        return await until(answering)

    async def kill_everything(self, master):
        """Stop the master (gracefully, so it removes its runtime directory; killed if
        it takes too long) and kill any worker left."""
        pids = re.findall(r"started worker process (\d+)", master.output)
        if master.status is None:
            self.process.signalProcess("TERM")
            try:
                await master.wait_ended()
            except defer.TimeoutError:
                self.process.signalProcess("KILL")
                await master.wait_ended()
        for pid in map(int, pids):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)

    async def pids_serving(self, wanted: set, rounds: int = 30) -> set:
        """Worker pids seen answering /pid, in rounds of 10 concurrent requests, until
        ``wanted`` were all seen (or the rounds run out)."""
        seen = set()
        for _ in range(rounds):
            responses = await defer.gatherResults(
                [defer.ensureDeferred(get(self.port, "/pid")) for _ in range(10)])
            self.requests_made += len(responses)
            seen |= {int(r.body) for r in responses}
            if wanted <= seen:
                break
        return seen

    async def test_both_workers_serve_and_the_admin_listener_aggregates_them(self):
        """Requests are answered by both worker processes (not the master), over TCP
        and over a shared unix socket; /status lists both workers and sums their
        counters; /metrics sums them too; a runtime API change reaches every worker;
        SIGTERM stops all three processes and the master exits 0."""
        unix = os.path.join(self.dir, "gw.sock")
        master = await self.start("tcp:0:interface=127.0.0.1", f"unix:{unix}")
        workers = await self.workers_answering()
        pids = {w["pid"] for w in workers}
        self.assertEqual(len(pids), 2)
        self.assertNotIn(self.process.pid, pids)
        self.assertEqual(await self.pids_serving(pids), pids)
        self.assertIn(int(unix_get(unix)), pids)

        proxied = [await get(self.port, "/") for _ in range(6)]
        self.assertEqual([(r.status, r.body) for r in proxied], [(200, b"b0")] * 6)
        _, document = await admin(self.admin_port, "GET", "/status")
        peer = document["upstreams"]["app"]["peers"][0]
        self.assertEqual((peer["name"], peer["requests"], peer["state"]),
                         (self.backend.address, 6, "up"))
        self.assertEqual(sum(view["requests"] for view in peer["workers"]), 6)
        gateway = document["gateway"]
        self.assertEqual(gateway["pid"], self.process.pid)
        self.assertEqual(gateway["requests"], self.requests_made + 1 + 6)
        self.assertEqual(gateway["requests"],
                         sum(w["requests"] for w in gateway["workers"]))

        status, page = await admin(self.admin_port, "GET", "/")
        self.assertEqual(status, 200)
        self.assertIn('"workers": [{"slot": 0, "pid": %d' % workers[0]["pid"], page)

        _, text = await admin(self.admin_port, "GET", "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertEqual(families["gateway_workers"].samples[0].value, 2)
        upstream = [s for s in families["gateway_upstream_requests"].samples
                    if s.name == "gateway_upstream_requests_total"]
        self.assertEqual([(s.labels["peer"], s.value) for s in upstream],
                         [(self.backend.address, 6)])
        self.assertEqual(sum(s.value for s in families["gateway_http_requests"].samples
                             if s.name == "gateway_http_requests_total"),
                         gateway["requests"])

        path = "/api/upstreams/app/servers/" + quote(self.backend.address, safe="")
        status, answer = await admin(self.admin_port, "PATCH", path, {"down": True})
        self.assertEqual((status, answer["down"]), (200, True))
        _, document = await admin(self.admin_port, "GET", "/status")
        peer = document["upstreams"]["app"]["peers"][0]
        self.assertEqual([view["state"] for view in peer["workers"]], ["down", "down"])
        self.assertEqual((await get(self.port, "/")).status, 502)

        self.process.signalProcess("TERM")
        reason = await master.wait_ended()
        self.assertEqual(reason.exitCode, 0)
        for pid in pids:
            self.assertTrue(gone(pid), f"worker {pid} still running")
            self.assertIn(f"worker process {pid} exited with code 0", master.output)
        self.assertFalse(os.path.exists(unix))

    async def test_a_killed_worker_is_restarted_and_traffic_continues(self):
        """SIGKILL to worker 0: the master logs it, starts a new process in its slot
        (the other worker untouched), and both serve again."""
        master = await self.start()
        workers = await self.workers_answering()
        victim, survivor = workers[0]["pid"], workers[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        await master.wait_for(rf"worker process {victim} exited on signal 9")
        workers = await self.workers_answering()
        self.assertEqual([(w["slot"], w["restarts"]) for w in workers], [(0, 1), (1, 0)])
        replacement = workers[0]["pid"]
        self.assertNotIn(replacement, (victim, survivor))
        self.assertEqual(workers[1]["pid"], survivor)
        self.assertEqual(await self.pids_serving({replacement, survivor}),
                         {replacement, survivor})
        self.assertEqual((await get(self.port, "/")).body, b"b0")

    async def test_a_broken_file_changes_nothing_and_a_new_listener_starts_new_workers(self):
        """SIGHUP (and POST /api/reload) with an invalid file: logged and refused, the
        same workers keep serving. A file adding a listener: the master binds it and a
        new generation of workers serves both; the old workers exit."""
        master = await self.start()
        before = {w["pid"] for w in await self.workers_answering()}
        with open(self.path, "a") as f:
            f.write("[upstreams.broken]\nservers = []\n")
        self.process.signalProcess("HUP")
        await master.wait_for(r"reload refused: 1 error\(s\)")
        status, answer = await admin(self.admin_port, "POST", "/api/reload")
        self.assertEqual((status, answer["reloaded"], answer["errors"]), (422, False, [
            "upstreams.broken.servers: at least one server is required"]))
        self.assertEqual({w["pid"] for w in await self.workers_answering()}, before)
        self.assertEqual((await get(self.port, "/")).body, b"b0")

        # a second listener: bound by the master, served by a new generation
        self.write("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=64")
        self.process.signalProcess("HUP")
        second = await master.wait_for(r"listening on tcp:0:interface=127\.0\.0\.1:backlog=64"
                                       r" at 127\.0\.0\.1:(\d+)")

        async def new_generation():
            workers = await self.workers_answering()
            return workers if not {w["pid"] for w in workers} & before else None

        after = {w["pid"] for w in await until(new_generation)}
        response = await get(int(second.group(1)), "/pid")
        self.assertIn(int(response.body), after)
        for pid in before:
            await until(lambda pid=pid: defer.succeed(gone(pid)))

    async def test_sigterm_lets_a_request_in_flight_finish_before_all_exit(self):
        """The master forwards the stop: the worker holding a request stops accepting,
        finishes it once the backend answers, and everyone exits; the master 0."""
        def behaviour(req, conn):
            if req.path == "/hold":
                conn.hold().addCallback(lambda _: conn.respond(200, b"late"))
            else:
                conn.respond(200, b"b0")

        self.backend.behaviour = behaviour
        master = await self.start()
        pids = {w["pid"] for w in await self.workers_answering()}
        pending = defer.ensureDeferred(get(self.port, "/hold"))
        await until(lambda: defer.succeed(bool(self.backend.held)))
        self.process.signalProcess("TERM")
        await master.wait_for(r"gateway master stopping")
        await sleep(0.3)
        self.assertIsNone(master.status)            # waiting for the worker
        self.backend.held[0].callback(None)
        response = await pending
        self.assertEqual((response.status, response.body), (200, b"late"))
        reason = await master.wait_ended()
        self.assertEqual(reason.exitCode, 0)
        for pid in pids:
            self.assertTrue(gone(pid), f"worker {pid} still running")


class SharedSockets(unittest.TestCase):
    """gateway.master.sockets in one process: bound as the master does, adopted on the
    test's reactor as a worker does (a copy of the descriptor, as a child inherits)."""

    async def adopt_and_ask(self, shared, connect):
        """Adopt a copy of ``shared``, answer one request on it, stop listening."""
        backend = Backend("adopted")
        endpoint = AdoptedEndpoint(reactor, os.dup(shared.socket.fileno()),
                                   shared.description)
        port = await endpoint.listen(backend)
        client = RawClient()
        await connect(client)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        responses = await client.wait_responses(1)
        client.transport.loseConnection()
        await client.wait_closed()
        await port.stopListening()
        return responses[0].body

    async def test_stopping_an_adopted_tcp_port_leaves_the_masters_socket_accepting(self):
        """A worker that stops (or reloads the listener away) must not shut the shared
        socket down: the next worker adopting it still accepts. IPv4 and IPv6."""
        for description, host in (("tcp:0:interface=127.0.0.1", "127.0.0.1"),
                                  ("tcp6:0:interface=\\:\\:1", "::1")):
            shared = bind(description)
            self.addCleanup(shared.close)
            port = shared.socket.getsockname()[1]

            def connect(client, host=host, port=port):
                return protocol.ClientCreator(reactor, lambda: client).connectTCP(
                    host, port, timeout=WAIT)

            self.assertEqual(await self.adopt_and_ask(shared, connect), b"adopted")
            self.assertEqual(await self.adopt_and_ask(shared, connect), b"adopted")

    async def test_stopping_an_adopted_unix_port_keeps_the_masters_socket_file(self):
        directory = tempfile.mkdtemp(prefix="gw-")     # short: unix paths are limited
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "gw.sock")
        shared = bind(f"unix:{path}:mode=600")

        def connect(client):
            return protocol.ClientCreator(reactor, lambda: client).connectUNIX(
                path, timeout=WAIT)

        self.assertEqual(await self.adopt_and_ask(shared, connect), b"adopted")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(await self.adopt_and_ask(shared, connect), b"adopted")
        shared.close()
        self.assertFalse(os.path.exists(path))
        self.assertFalse(os.path.lexists(path + ".lock"))

    def test_a_port_in_use_is_one_line_for_the_operator(self):
        shared = bind("tcp:0:interface=127.0.0.1")
        self.addCleanup(shared.close)
        taken = f"tcp:{shared.socket.getsockname()[1]}:interface=127.0.0.1"
        with self.assertRaises(BindError) as caught:
            bind(taken)
        self.assertEqual(str(caught.exception), f"{taken}: Address already in use")
