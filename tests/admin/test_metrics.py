"""gateway.metrics: counting on the request path and the Prometheus text at scrape."""
from __future__ import annotations

import tomllib

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial import unittest

from gateway.config import parse_config
from gateway.http.exchange import UpstreamState
from gateway.metrics import Histogram, Metrics, escape_label, format_value
from gateway.upstream import Outcome, UpstreamManager

CONFIG = r"""
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "127.0.0.1:8081", weight = 2 }, { address = "127.0.0.1:8082" },
            { address = "127.0.0.1:8083", backup = true } ]
[[servers]]
listen = ["tcp:0"]
server_name = ["example.test", "www.example.test"]
locations = [ { path = "/", proxy_pass = "http://app" },
              { path = '~ "\.php$', return = { status = 403 } } ]
[[servers]]
listen = ["tcp:1"]
locations = [ { path = "= /ok", return = { status = 200, body = "ok" } } ]
"""


def load():
    return parse_config(tomllib.loads(CONFIG), "/srv/gw/site.toml")


class FakeExchange:
    def __init__(self, server, status, location=None, tries=()):
        self.server = server
        self.status = status
        self.variables = {}
        if location is not None:
            self.variables["location"] = location
        if tries:
            state = UpstreamState()
            for addr, response_time in tries:
                state.addrs.append(addr)
                state.response_times.append(response_time)
            self.variables["upstream"] = state


def families(text: str) -> dict:
    """{sample name: {frozenset(labels.items()): value}} of a scrape, parsed by
    prometheus_client (which also checks the format)."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def labels(**items):
    return frozenset(items.items())


class Recording(unittest.TestCase):
    def setUp(self):
        self.config = load()
        self.metrics = Metrics(self.config, Clock())
        self.main, self.other = self.config.servers
        self.proxied, self.php = self.main.locations

    def test_requests_are_counted_by_server_location_and_status(self):
        """The server label is the first server_name, or the TOML path without one;
        the location label is its path as written; a request routed nowhere counts
        under location ""."""
        m = self.metrics
        for status in (200, 200, 502):
            m.record(FakeExchange(self.main, status, self.proxied))
        m.record(FakeExchange(self.main, 403, self.php))
        m.record(FakeExchange(self.other, 200, self.other.locations[0]))
        m.record(FakeExchange(self.other, 404))
        m.record(FakeExchange(self.main, 400))
        samples = families(m.render())["gateway_http_requests_total"]
        self.assertEqual(samples, {
            labels(server="example.test", location="/", status="200"): 2.0,
            labels(server="example.test", location="/", status="502"): 1.0,
            labels(server="example.test", location='~ "\\.php$', status="403"): 1.0,
            labels(server="example.test", location="", status="400"): 1.0,
            labels(server="servers[1]", location="= /ok", status="200"): 1.0,
            labels(server="servers[1]", location="", status="404"): 1.0,
        })
        self.assertEqual(m.requests_total(), 7)

    def test_each_upstream_try_feeds_its_peers_response_time_histogram(self):
        """Tries without a response time ("-") and the group-name entry of "no live
        upstreams" are not observations. Times come as float seconds (the proxy) or as
        text (other handlers)."""
        m = self.metrics
        m.record(FakeExchange(self.main, 200, self.proxied,
                              tries=[("127.0.0.1:8081", "-"), ("127.0.0.1:8082", 0.004)]))
        m.record(FakeExchange(self.main, 200, self.proxied,
                              tries=[("127.0.0.1:8082", "0.250")]))
        m.record(FakeExchange(self.main, 502, self.proxied, tries=[("app", 0.0)]))
        samples = families(m.render())
        peer = dict(upstream="app", peer="127.0.0.1:8082")
        buckets = samples["gateway_upstream_response_seconds_bucket"]
        self.assertEqual(buckets[labels(le="0.005", **peer)], 1.0)
        self.assertEqual(buckets[labels(le="0.1", **peer)], 1.0)
        self.assertEqual(buckets[labels(le="0.25", **peer)], 2.0)    # le: 0.25 <= 0.25
        self.assertEqual(buckets[labels(le="+Inf", **peer)], 2.0)
        self.assertEqual(samples["gateway_upstream_response_seconds_count"],
                         {labels(**peer): 2.0})
        self.assertAlmostEqual(
            samples["gateway_upstream_response_seconds_sum"][labels(**peer)], 0.254)

    def test_configure_with_a_new_configuration_keeps_the_counters(self):
        m = self.metrics
        m.record(FakeExchange(self.main, 200, self.proxied))
        reloaded = load()
        m.configure(reloaded)
        m.record(FakeExchange(reloaded.servers[0], 200, reloaded.servers[0].locations[0]))
        samples = families(m.render())["gateway_http_requests_total"]
        self.assertEqual(samples[labels(server="example.test", location="/", status="200")],
                         2.0)

    def test_tunnels_grpc_calls_and_reloads_are_counted(self):
        m = self.metrics
        m.tunnel_opened()
        m.tunnel_opened()
        m.tunnel_closed()
        m.grpc_call("OK")
        m.grpc_call("OK")
        m.grpc_call("UNAVAILABLE")
        m.reloaded()
        m.reloaded(ok=False)
        samples = families(m.render())
        self.assertEqual(samples["gateway_tunnels"], {labels(): 1.0})
        self.assertEqual(samples["gateway_tunnels_total"], {labels(): 2.0})
        self.assertEqual(samples["gateway_grpc_calls_total"],
                         {labels(status="OK"): 2.0, labels(status="UNAVAILABLE"): 1.0})
        self.assertEqual(samples["gateway_reloads_total"],
                         {labels(result="ok"): 1.0, labels(result="failed"): 1.0})


class Connections(unittest.TestCase):
    def test_open_client_connections_are_the_built_protocols_still_connected(self):
        class Transport:
            connected = True

        class Proto:
            transport = None

        class Factory:
            started = stopped = 0

            def buildProtocol(self, addr):
                return Proto()

            def doStart(self):
                self.started += 1

            def doStop(self):
                self.stopped += 1

        metrics = Metrics()
        inner = Factory()
        factory = metrics.count_connections(inner)
        factory.doStart()
        protocols = [factory.buildProtocol(None) for _ in range(3)]
        self.assertEqual(metrics.client_connections(), 0)     # not connected yet
        for p in protocols:
            p.transport = Transport()
        protocols[1].transport.connected = False
        self.assertEqual(metrics.client_connections(), 2)
        del protocols[0]           # gone with its last reference
        self.assertEqual(metrics.client_connections(), 1)
        self.assertEqual(families(metrics.render())["gateway_client_connections"],
                         {labels(): 1.0})
        factory.doStop()
        self.assertEqual((inner.started, inner.stopped), (1, 1))


class PeerSeries(unittest.TestCase):
    def test_peer_counters_weights_and_state_come_from_the_manager_at_scrape(self):
        config = load()
        clock = Clock()
        manager = UpstreamManager(config.upstreams, clock)
        group = manager.group("app")
        held = group.acquire(group.attempts())          # 8081 (weight 2)
        failed = group.acquire(group.attempts())        # 8082
        failed.release(Outcome.FAILED, "refused")
        group.backups[0].set_down(True, clock.seconds())
        samples = families(Metrics(config, clock).render(manager))
        a = dict(upstream="app", peer="127.0.0.1:8081")
        b = dict(upstream="app", peer="127.0.0.1:8082")
        c = dict(upstream="app", peer="127.0.0.1:8083")
        self.assertEqual(samples["gateway_upstream_requests_total"],
                         {labels(**a): 1.0, labels(**b): 1.0, labels(**c): 0.0})
        self.assertEqual(samples["gateway_upstream_failures_total"],
                         {labels(**a): 0.0, labels(**b): 1.0, labels(**c): 0.0})
        self.assertEqual(samples["gateway_upstream_active"],
                         {labels(**a): 1.0, labels(**b): 0.0, labels(**c): 0.0})
        self.assertEqual(samples["gateway_upstream_weight"],
                         {labels(**a): 2.0, labels(**b): 1.0, labels(**c): 1.0})
        states = {dict(k)["peer"]: dict(k)["state"]
                  for k, v in samples["gateway_upstream_state"].items() if v == 1.0}
        # max_fails = 1: one failure takes 8082 out for fail_timeout
        self.assertEqual(states, {"127.0.0.1:8081": "up", "127.0.0.1:8082": "failed",
                                  "127.0.0.1:8083": "down"})
        self.assertEqual(samples["gateway_upstream_effective_weight"],
                         {labels(**a): 2.0, labels(**b): 0.0, labels(**c): 1.0})
        held.release(Outcome.OK)


class TextFormat(unittest.TestCase):
    def test_label_values_escape_backslash_quote_and_newline(self):
        self.assertEqual(escape_label('a\\b"c\nd'), 'a\\\\b\\"c\\nd')

    def test_values_are_written_as_the_format_expects(self):
        self.assertEqual([format_value(v) for v in (3, 2.0, 0.25, float("inf"), True)],
                         ["3", "2.0", "0.25", "+Inf", "1"])

    def test_a_histogram_counts_a_value_equal_to_a_bound_in_that_bucket(self):
        h = Histogram((0.1, 1.0))
        for value in (0.1, 0.5, 1.0, 3.0):
            h.observe(value)
        self.assertEqual(h.cumulative(), [("0.1", 1), ("1.0", 3), ("+Inf", 4)])

    def test_every_family_has_help_and_type_before_its_samples(self):
        text = Metrics(load()).render()
        lines = text.splitlines()
        self.assertTrue(text.endswith("\n"))
        declared = set()
        for line in lines:
            if line.startswith("# TYPE "):
                declared.add(line.split()[2])
            elif not line.startswith("#"):
                name = line.split("{")[0].split(" ")[0]
                base = name
                for suffix in ("_bucket", "_sum", "_count"):
                    if name.endswith(suffix) and name[: -len(suffix)] in declared:
                        base = name[: -len(suffix)]
                self.assertIn(base, declared, line)
