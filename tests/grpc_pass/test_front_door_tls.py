"""The front door's own listener: TLS (with client certificates), ``grpcs://`` towards
peers with the group's ``tls`` table, and a port already in use stopping startup."""
from __future__ import annotations

import tomllib

import grpc
from twisted.internet import reactor
from twisted.trial import unittest

from gateway.config import parse_config
from gateway.service import GatewayService
from tests.grpc_pass.servers import client, run, start_gateway, start_peers
from tests.tls.pki import PKI


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class FrontDoorTLS(unittest.TestCase):
    async def test_tls_both_ways_with_client_certificates(self):
        """The client speaks TLS to the door (presenting its certificate, as
        ``verify_client = "on"`` requires), the gateway grpcs:// to a peer that
        requires the gateway's client certificate and is verified by ``server_name``
        against the group's ``ca``."""
        pki = PKI(self)
        door_cert, door_key = pki.server_files("door", "gateway.test")
        peer_cert, peer_key = pki.server_files("peer", "peer.test")
        gw_cert, gw_key = pki.client_files("gateway")
        app_cert, app_key = pki.client_files("app")
        peer_credentials = grpc.ssl_server_credentials(
            [(read(peer_key), read(peer_cert))], root_certificates=read(pki.ca_path),
            require_client_auth=True)
        (peer,) = await start_peers(self, "a", credentials=peer_credentials)
        _, port = await start_gateway(self, f"""
[upstreams.app]
servers = [{{ address = "{{p0}}" }}]
[upstreams.app.tls]
ca = "{pki.ca_path}"
server_name = "peer.test"
certificate = "{gw_cert}"
key = "{gw_key}"
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpcs://app"
[grpc_servers.tls]
certificate = "{door_cert}"
key = "{door_key}"
client_ca = "{pki.ca_path}"
verify_client = "on"
""", [peer])
        credentials = grpc.ssl_channel_credentials(
            read(pki.ca_path), private_key=read(app_key), certificate_chain=read(app_cert))
        c = client(self, port, credentials=credentials,
                   options=(("grpc.ssl_target_name_override", "gateway.test"),))
        self.assertEqual(await run(c.unary("/test.Echo/Who")(b"")), b"a")

        # without a client certificate the door's handshake fails
        anonymous = client(self, port,
                           credentials=grpc.ssl_channel_credentials(read(pki.ca_path)),
                           options=(("grpc.ssl_target_name_override", "gateway.test"),))
        refused = await run(_error(anonymous.unary("/test.Echo/Who")(b"", timeout=5)))
        self.assertEqual(refused, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(len(peer.calls), 1)

    async def test_a_peer_whose_certificate_does_not_match_is_a_failed_attempt(self):
        pki = PKI(self)
        peer_cert, peer_key = pki.server_files("peer", "other.test")
        (peer,) = await start_peers(self, "a", credentials=grpc.ssl_server_credentials(
            [(read(peer_key), read(peer_cert))]))
        service, port = await start_gateway(self, f"""
[upstreams.app]
servers = [{{ address = "{{p0}}" }}]
tls = {{ ca = "{pki.ca_path}", server_name = "peer.test" }}
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpcs://app"
""", [peer])
        code = await run(_error(client(self, port).unary("/test.Echo/Who")(b"")))
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(peer.calls, [])
        self.assertEqual(service.manager.group("app").peers[0].failures, 1)


async def _error(call):
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return None


class FrontDoorListen(unittest.TestCase):
    async def test_a_port_in_use_stops_startup_with_one_line(self):
        (peer,) = await start_peers(self, "a")
        text = f"""
[upstreams.app]
servers = [{{ address = "{peer.address}" }}]
[[grpc_servers]]
listen = "{peer.address}"
grpc_pass = "grpc://app"
[admin]
listen = false
"""
        service = GatewayService(parse_config(tomllib.loads(text), "/tmp/gw.toml"), reactor)
        self.addCleanup(service.stopService)
        with self.assertRaises(SystemExit) as caught:
            service.startService()
        self.assertEqual(str(caught.exception),
                         f"gateway: cannot listen on grpc_servers {peer.address}: "
                         "[Errno 98] Address already in use")
