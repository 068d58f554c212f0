"""What the admin listener's metrics add to each request, in nanoseconds.

    .venv/bin/python bench/metrics_cost.py

Measures, with ``timeit`` on this machine, the work the request path does for
``/metrics`` (gateway.metrics): ``Metrics.record`` for a proxied request (one upstream
try with a response time) and for a ``return`` location, the call that chains it with
the access log (``GatewayService._exchange_done_hook``) and the store of the matched
location in ``Site`` (``exchange.variables["location"]``). The cost of calling an empty
function is subtracted. Nothing here runs at scrape time, which is where the text is
built.
"""
from __future__ import annotations

import timeit
import tomllib

from gateway.config import parse_config
from gateway.http.exchange import UpstreamState
from gateway.metrics import Metrics

CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "127.0.0.1:8081" }, { address = "127.0.0.1:8082" } ]
[[servers]]
listen = ["tcp:0"]
locations = [ { path = "/", proxy_pass = "http://app" },
              { path = "= /ok", return = { status = 200 } } ]
"""


class Exchange:
    """The three attributes ``Metrics.record`` reads, as on ``H1Exchange``."""

    __slots__ = ("variables", "status", "server")


def exchange(config, location, proxied: bool) -> Exchange:
    e = Exchange()
    e.server = config.servers[0]
    e.status = 200
    e.variables = {"location": location}
    if proxied:
        state = UpstreamState()
        state.addrs.append("127.0.0.1:8081")
        state.response_times.append("0.003")
        e.variables["upstream"] = state
        e.variables["proxy_host"] = "app"
    return e


def nanoseconds(function, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e9


def main(number: int = 500_000) -> None:
    config = parse_config(tomllib.loads(CONFIG), "/tmp/bench.toml")
    metrics = Metrics(config)
    proxy, ret = config.servers[0].locations
    proxied, returned = exchange(config, proxy, True), exchange(config, ret, False)

    def nothing(exchange):
        pass

    def chained(exchange, record=metrics.record, log=nothing):
        record(exchange)
        log(exchange)

    empty = nanoseconds(lambda: nothing(proxied), number)
    variables = {}
    store = nanoseconds(lambda: variables.__setitem__("location", proxy), number)
    call = nanoseconds(lambda: None, number)
    rows = [
        ("record, proxied request", nanoseconds(lambda: metrics.record(proxied), number)
         - empty),
        ("record, return location", nanoseconds(lambda: metrics.record(returned), number)
         - empty),
        # the hook with metrics against the access log alone (``nothing`` stands in)
        ("hook: with metrics - without", nanoseconds(lambda: chained(proxied), number)
         - empty),
        ("Site stores the location", store - call),
    ]
    for name, value in rows:
        print(f"{name:30s} {max(0.0, value):6.0f} ns")
    print(f"{'added per proxied request':30s} {rows[2][1] + rows[3][1]:6.0f} ns")

if __name__ == "__main__":
    main()
