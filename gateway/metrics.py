"""Process metrics: plain counters updated on the request path, Prometheus text at scrape.

This module owns the counters and their rendering in the Prometheus text exposition
format (version 0.0.4), served by the admin listener's ``/metrics``
(:mod:`gateway.admin`). What is counted, and who counts it:

- ``gateway_http_requests_total{server, location, status}``: :meth:`Metrics.record`,
  the ``on_exchange_done`` hook of every listener (chained with the access log), once
  per finished exchange. The location is the one routing chose
  (``exchange.variables["location"]``, set by :class:`gateway.http.site.Site`); requests
  that matched none (404, protocol errors) have ``location=""``;
- ``gateway_upstream_response_seconds{upstream, peer}``: a histogram of
  ``$upstream_response_time`` per tried peer, from the same hook;
- ``gateway_upstream_requests_total`` / ``…_failures_total`` / ``…_active`` / weights and
  states by peer: read from the upstream manager's peers at scrape time (the group
  already counts them; nothing is added to the request path);
- ``gateway_client_connections``: open client connections, counted at scrape time
  over the protocols the listeners built (:meth:`Metrics.count_connections`);
- ``gateway_tunnels`` / ``gateway_tunnels_total``: :meth:`Metrics.tunnel_opened` and
  :meth:`Metrics.tunnel_closed`, called by the Upgrade tunnel;
- ``gateway_grpc_calls_total{status}``: :meth:`Metrics.grpc_call`, called by the gRPC
  relay with the call's final status code name (``"OK"``, ``"UNAVAILABLE"``…);
- ``gateway_reloads_total{result}``: :meth:`Metrics.reloaded`, called by reload.

Why not ``prometheus_client``: its metric objects take a lock per update, and the
gateway is measured against nginx per microsecond. Here the request path touches two
dicts and, for proxied requests, one histogram list; everything else (cumulative
buckets, label escaping, per-peer state) is computed when ``/metrics`` is scraped.
Counters live as long as the process, keyed by label values, so :meth:`configure`
with a new configuration (reload) keeps them.
"""
from __future__ import annotations

import os
import weakref
from bisect import bisect_left
from typing import Optional

from zope.interface import implementer
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory

__all__ = ["Metrics", "Histogram", "LATENCY_BUCKETS", "escape_label", "format_value"]

#: ``le`` bounds of the upstream response time histogram, in seconds (Prometheus's
#: default buckets)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts by bucket (not cumulative: that is done at render) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as exposed, ``+Inf`` last."""
        out = []
        total = 0
        for bound, count in zip(self.bounds, self.counts):
            total += count
            out.append((format_value(bound), total))
        total += self.counts[-1]
        out.append(("+Inf", total))
        return out


class _LocationStats:
    """Where one location's requests are counted (shared by every exchange routed
    there): its status counts and its upstream group's histograms, by peer."""

    __slots__ = ("statuses", "upstream", "latency")

    def __init__(self, statuses: dict, upstream: Optional[str], latency: Optional[dict]):
        self.statuses = statuses
        self.upstream = upstream
        self.latency = latency


@implementer(IProtocolFactory, ILoggingContext)
class _CountingFactory:
    """Wraps a listener's factory: every protocol it builds is remembered (weakly), so
    open connections are counted at scrape time without a per-connection hook in the
    protocols themselves (and without a wrapping protocol on the data path)."""

    def __init__(self, wrapped, protocols: weakref.WeakSet):
        self.wrapped = wrapped
        self._protocols = protocols

    def buildProtocol(self, addr):
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is not None:
            self._protocols.add(protocol)
        return protocol

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()

    def logPrefix(self):
        # "NegotiatingFactory starting on 8080", as without the wrapper
        if ILoggingContext.providedBy(self.wrapped):
            return self.wrapped.logPrefix()
        return self.wrapped.__class__.__name__

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


class Metrics:
    """The counters of one process. ``record`` is the per-request hook."""

    def __init__(self, config=None, clock=None):
        self.clock = clock
        #: (server, location) → {status: count}
        self._requests: dict[tuple[str, str], dict[int, int]] = {}
        #: upstream group → {peer: Histogram}
        self._latency: dict[str, dict[str, Histogram]] = {}
        self._by_location: dict[int, _LocationStats] = {}
        self._by_server: dict[int, _LocationStats] = {}
        self._config = None
        self._fallback = self._stats("", "", None)
        self._connections: weakref.WeakSet = weakref.WeakSet()
        self.tunnels = 0
        self.tunnels_total = 0
        self.grpc_calls: dict[str, int] = {}
        self.reloads: dict[str, int] = {}
        if config is not None:
            self.configure(config)

    # -- configuration -----------------------------------------------------------------

    def configure(self, config) -> None:
        """Precompute where each location's requests are counted (by the location
        object's identity, the cheapest key there is). Counters already kept for the
        same labels continue."""
        by_location: dict[int, _LocationStats] = {}
        by_server: dict[int, _LocationStats] = {}
        self._config = config      # keeps the location objects (and so their ids) alive
        for server in config.servers:
            label = server_label(server)
            by_server[server.index] = self._stats(label, "", None)
            for location in server.locations:
                target = location.proxy_pass or location.grpc_pass
                upstream = target.upstream if target is not None else None
                by_location[id(location)] = self._stats(label, location.path, upstream)
        self._by_location = by_location
        self._by_server = by_server

    def _stats(self, server: str, location: str, upstream: Optional[str]) -> _LocationStats:
        statuses = self._requests.setdefault((server, location), {})
        latency = self._latency.setdefault(upstream, {}) if upstream is not None else None
        return _LocationStats(statuses, upstream, latency)

    # -- the request path ----------------------------------------------------------------

    def record(self, exchange) -> None:
        """Count one finished exchange (its status, and each upstream try's response
        time). Called for every request: keep it to a few dict operations."""
        variables = exchange.variables
        stats = self._by_location.get(id(variables.get("location")))
        if stats is None:
            server = exchange.server
            stats = (self._by_server.get(server.index, self._fallback)
                     if server is not None else self._fallback)
        statuses = stats.statuses
        status = exchange.status
        statuses[status] = statuses.get(status, 0) + 1
        state = variables.get("upstream")
        if state is None or stats.latency is None:
            return
        latency = stats.latency
        addrs = state.addrs
        times = state.response_times
        # an index loop: cheaper than zip/enumerate for the usual single try
        count = min(len(addrs), len(times))
        i = 0
        while i < count:
            entry = times[i]
            if entry != "-":
                addr = addrs[i]
                histogram = latency.get(addr)
                if histogram is None and addr != stats.upstream:
                    # (the group's own name is "no live upstreams" or a request that
                    # left the queue: not a peer)
                    histogram = latency[addr] = Histogram()
                if histogram is not None:
                    # the proxy records float seconds; other handlers may write text
                    value = entry if entry.__class__ is float else float(entry)
                    histogram.counts[bisect_left(histogram.bounds, value)] += 1
                    histogram.sum += value
            i += 1

    def count_connections(self, factory):
        """The factory to listen with so that ``factory``'s connections are counted
        in ``gateway_client_connections``."""
        return _CountingFactory(factory, self._connections)

    def client_connections(self) -> int:
        """Client connections open now."""
        count = 0
        for protocol in list(self._connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None and getattr(transport, "connected", False):
                count += 1
        return count

    def tunnel_opened(self) -> None:
        """A tunnel (WebSocket or other Upgrade) started relaying."""
        self.tunnels += 1
        self.tunnels_total += 1

    def tunnel_closed(self) -> None:
        """A tunnel ended (call once per :meth:`tunnel_opened`)."""
        self.tunnels -= 1

    def grpc_call(self, status: str) -> None:
        """A proxied gRPC call ended with ``status`` (a ``grpc.StatusCode`` name)."""
        self.grpc_calls[status] = self.grpc_calls.get(status, 0) + 1

    def reloaded(self, ok: bool = True) -> None:
        """A reload was attempted: ``ok`` when the new configuration took effect."""
        result = "ok" if ok else "failed"
        self.reloads[result] = self.reloads.get(result, 0) + 1

    # -- totals for the status page ---------------------------------------------------------

    def requests_total(self) -> int:
        return sum(sum(statuses.values()) for statuses in self._requests.values())

    # -- rendering ----------------------------------------------------------------------------

    def render(self, manager=None, process: Optional[dict] = None) -> str:
        """Everything in the Prometheus text format. ``manager`` (the
        ``UpstreamManager``) adds the per-peer series; ``process`` (``start_time``,
        ``version``) the process ones."""
        out = _Writer()
        if process is not None:
            out.family("gateway_info", "gauge", "Build and process information.")
            out.sample("gateway_info", {"version": process.get("version", ""),
                                        "pid": str(process.get("pid", os.getpid()))}, 1)
            out.family("gateway_start_time_seconds", "gauge",
                       "When the process started, in seconds since the epoch.")
            out.sample("gateway_start_time_seconds", {}, process.get("start_time", 0.0))

        out.family("gateway_http_requests_total", "counter",
                   "Client requests finished, by server, location and status.")
        for (server, location), statuses in sorted(self._requests.items()):
            for status, count in sorted(statuses.items()):
                out.sample("gateway_http_requests_total",
                           {"server": server, "location": location, "status": str(status)},
                           count)

        out.family("gateway_client_connections", "gauge", "Client connections open now.")
        out.sample("gateway_client_connections", {}, self.client_connections())
        out.family("gateway_tunnels", "gauge", "Tunnels (WebSocket, Upgrade) open now.")
        out.sample("gateway_tunnels", {}, self.tunnels)
        out.family("gateway_tunnels_total", "counter", "Tunnels opened.")
        out.sample("gateway_tunnels_total", {}, self.tunnels_total)
        out.family("gateway_grpc_calls_total", "counter", "Proxied gRPC calls, by status.")
        for status, count in sorted(self.grpc_calls.items()):
            out.sample("gateway_grpc_calls_total", {"status": status}, count)
        out.family("gateway_reloads_total", "counter",
                   "Configuration reloads, by result (ok, failed).")
        for result, count in sorted(self.reloads.items()):
            out.sample("gateway_reloads_total", {"result": result}, count)

        if manager is not None:
            self._render_peers(out, manager)
        self._render_latency(out)
        return out.text()

    def _render_peers(self, out: "_Writer", manager) -> None:
        now = manager.clock.seconds()
        peers = [(group.name, peer) for group in manager
                 for peer in list(group.peers) + list(group.backups)]
        series = (
            ("gateway_upstream_requests_total", "counter",
             "Attempts sent to the peer.", lambda p: p.requests),
            ("gateway_upstream_failures_total", "counter",
             "Attempts to the peer that failed (nginx's fails, never reset).",
             lambda p: p.failures),
            ("gateway_upstream_active", "gauge",
             "Attempts (connections, tunnels) in progress on the peer.", lambda p: p.conns),
            ("gateway_upstream_weight", "gauge", "The peer's configured weight.",
             lambda p: p.weight),
            ("gateway_upstream_effective_weight", "gauge",
             "The weight the balancer uses now (lowered after failures, slow_start).",
             lambda p: min(p.effective_weight, p.weight_now(now))),
        )
        for name, kind, help_text, value in series:
            out.family(name, kind, help_text)
            for group, peer in peers:
                out.sample(name, {"upstream": group, "peer": peer.name}, value(peer))
        out.family("gateway_upstream_state", "gauge",
                   "1 for the peer's state (up, draining, failed, unhealthy, down).")
        for group, peer in peers:
            current = peer.state(now)
            for state in PEER_STATES:
                out.sample("gateway_upstream_state",
                           {"upstream": group, "peer": peer.name, "state": state},
                           1 if state == current else 0)

    def _render_latency(self, out: "_Writer") -> None:
        name = "gateway_upstream_response_seconds"
        out.family(name, "histogram",
                   "Upstream response time by peer ($upstream_response_time).")
        for group in sorted(self._latency):
            for peer, histogram in sorted(self._latency[group].items()):
                labels = {"upstream": group, "peer": peer}
                for le, count in histogram.cumulative():
                    out.sample(name + "_bucket", {**labels, "le": le}, count)
                out.sample(name + "_sum", labels, histogram.sum)
                out.sample(name + "_count", labels, sum(histogram.counts))


#: every state a peer can be in (``Peer.state``), as the ``state`` label
PEER_STATES = ("up", "draining", "failed", "unhealthy", "down")


def server_label(server) -> str:
    """A server's ``server`` label: its first ``server_name``, or its TOML path when it
    has none (``servers[0]``)."""
    for name in server.server_name:
        if name:
            return name
    return f"servers[{server.index}]"


def escape_label(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value) -> str:
    """A sample value as the text format writes it (``+Inf``, ``NaN``, ints plain)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return "%d.0" % value
    return repr(float(value))


class _Writer:
    """Builds the exposition text: ``# HELP``/``# TYPE`` then samples."""

    def __init__(self):
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict, value) -> None:
        if labels:
            text = ",".join(f'{key}="{escape_label(str(v))}"' for key, v in labels.items())
            self._lines.append(f"{name}{{{text}}} {format_value(value)}")
        else:
            self._lines.append(f"{name} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"

