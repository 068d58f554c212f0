"""The graceful stop (``GatewayService.stopService``, what twistd runs on SIGTERM) on
real sockets, in process: what closes at once, what may finish, and the time limit.
The SIGTERM path through a real twistd process is ``test_signals.py``'s."""
from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from tests.integration.harness import WAIT, connect, request, start_backends, start_gateway
from tests.integration.test_reload import held
from tests.integration.test_websocket import (
    close_ws_clients, start_ws_backends, wait_for, ws_connect,
)

CONFIG = """
[gateway]
access_log = false
shutdown_timeout = "%s"
[upstreams.app]
servers = [ { address = "{b0}" } ]
[upstreams.ws]
servers = [ { address = "{ws}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app" },
              { path = "/ws", proxy_pass = "http://ws" } ]
"""


class GracefulStop(unittest.TestCase):
    async def gateway(self, shutdown_timeout: str = "30s"):
        (self.backend,) = start_backends(self, ("a", held("a")))
        (self.ws,) = start_ws_backends(self, "ws")
        self.addCleanup(close_ws_clients)
        self.service, port = await start_gateway(
            self, CONFIG % shutdown_timeout, [self.backend], ws=self.ws.address)
        return port

    async def test_idle_connections_close_at_once_and_a_request_in_flight_finishes(self):
        port = await self.gateway()
        idle, (first,) = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(first.body, b"a")
        busy = await connect(port)
        busy.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: self.backend.held)

        stopped = self.service.stopService()
        await idle.wait_closed()
        with self.assertRaises(ConnectionRefusedError):
            await connect(port)
        self.assertFalse(stopped.called)
        self.backend.held[0].callback(None)
        (response,) = await busy.wait_responses(1)
        # its response had not started: it says so
        self.assertEqual((response.body, response.header("Connection")), (b"held by a", "close"))
        await busy.wait_closed()
        await stopped.addTimeout(WAIT, reactor)

    async def test_a_tunnel_runs_during_the_stop_and_is_closed_at_shutdown_timeout(self):
        port = await self.gateway(shutdown_timeout="500ms")
        tunnel = await ws_connect(port, "/ws")
        await tunnel.accepted
        stopped = self.service.stopService()
        tunnel.send("still here")
        self.assertEqual(await tunnel.next_message(), "still here")
        self.assertFalse(stopped.called)
        await stopped.addTimeout(WAIT, reactor)
        await tunnel.wait_closed()
        await wait_for(lambda: self.ws.closed == 1)      # its upstream side too

