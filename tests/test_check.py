"""``--check``: upstream host names that do not resolve are reported with their paths."""
from __future__ import annotations

import socket
import tomllib

from twisted.trial import unittest

from gateway.check import unresolvable_hosts
from gateway.config import parse_config

CONFIG = """
[upstreams.app]
servers = [
  { address = "good.example:8080" },
  { address = "bad.example:8080" },
  { address = "127.0.0.1:8081" },
  { address = "[::1]:8082" },
  { address = "unix:/tmp/app.sock" },
  { address = "later.example:8080", resolve = true },
  { address = "bad.example:8080", backup = true },
]
[[servers]]
listen = ["tcp:0"]
locations = [
  { path = "/", proxy_pass = "http://app" },
  { path = "/lit/", proxy_pass = "http://missing.example:9000" },
  { path = "/lit2/", proxy_pass = "http://missing.example:9000/x/" },
]
"""


class FakeResolver:
    def __init__(self, known):
        self.known = set(known)
        self.asked = []

    def __call__(self, host, port):
        self.asked.append((host, port))
        if host not in self.known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]


class UnresolvableHosts(unittest.TestCase):
    def setUp(self):
        self.config = parse_config(tomllib.loads(CONFIG), "/tmp/site.toml")

    def test_each_unresolvable_name_is_reported_with_its_path(self):
        resolver = FakeResolver({"good.example"})
        errors = unresolvable_hosts(self.config, resolver)
        self.assertEqual(errors, [
            'upstreams.app.servers[1].address: host not found in upstream'
            ' "bad.example:8080" (Name or service not known)',
            'upstreams.app.servers[6].address: host not found in upstream'
            ' "bad.example:8080" (Name or service not known)',
            'servers[0].locations[1].proxy_pass: host not found in upstream'
            ' "missing.example:9000" (Name or service not known)',
        ])
        # IP literals, unix sockets and resolve = true entries are not looked up, and a
        # name used twice is asked once
        self.assertEqual(sorted(resolver.asked), [
            ("bad.example", 8080), ("good.example", 8080), ("missing.example", 9000)])

    def test_a_grpc_front_doors_literal_target_is_checked(self):
        config = parse_config(tomllib.loads("""
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpc://nohost.example:50051"
"""), "/tmp/site.toml")
        resolver = FakeResolver(set())
        self.assertEqual(unresolvable_hosts(config, resolver), [
            'grpc_servers[0].grpc_pass: host not found in upstream'
            ' "nohost.example:50051" (Name or service not known)'])
        self.assertEqual(resolver.asked, [("nohost.example", 50051)])

    def test_nothing_to_report_when_every_name_resolves(self):
        resolver = FakeResolver({"good.example", "bad.example", "missing.example"})
        self.assertEqual(unresolvable_hosts(self.config, resolver), [])


class CheckCommand(unittest.TestCase):
    """``gateway.tap.makeService`` with ``--check`` runs the resolution check."""

    def _check(self, text, known):
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from gateway import check, tap

        import os
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="gateway-check-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "site.toml")
        with open(path, "w") as f:
            f.write(text)
        self.patch(check, "_default_resolver", FakeResolver(known))
        options = tap.Options()
        options.parseOptions(["-c", path, "--check"])
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            with self.assertRaises(SystemExit) as exit_:
                tap.makeService(options)
        return exit_.exception.code, out.getvalue(), err.getvalue(), path

    def test_an_unresolvable_name_fails_the_check(self):
        code, out, err, path = self._check(CONFIG, {"good.example", "missing.example"})
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(err.splitlines(), [
            f'{path}: upstreams.app.servers[1].address: host not found in upstream'
            ' "bad.example:8080" (Name or service not known)',
            f'{path}: upstreams.app.servers[6].address: host not found in upstream'
            ' "bad.example:8080" (Name or service not known)',
        ])

    def test_resolvable_names_pass(self):
        code, out, err, _ = self._check(
            CONFIG, {"good.example", "bad.example", "missing.example"})
        self.assertEqual((code, out, err), (0, "configuration ok\n", ""))
