"""From an exchange to the handler of its location.

The server protocol has already chosen the virtual server (``exchange.server``, by Host).
This module owns what happens next, precompiled once per configuration: the server's
real client address (``set_real_ip_from``, :mod:`gateway.http.realip`), the location
match (nginx precedence, the auto-redirect 301 of a ``proxy_pass`` prefix location
ending in ``/``), the ``access`` rules (403), and the handler of the location:
``proxy_pass`` (:mod:`gateway.http.proxy`), ``grpc_pass``
(:mod:`gateway.grpc_pass.location`) or ``return`` (here). A request that matches no
location gets 404.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from gateway.http.access import AccessList
from gateway.http.headers import ResponseHeaderPlan
from gateway.http.realip import RealIP, server_realip
from gateway.http.routing import LocationMatcher
from gateway.http.variables import VariableContext, compile_template

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class Route:
    """A location ready to serve: its access list, header plan and handler."""

    location: object
    access: Optional[AccessList]
    response_plan: ResponseHeaderPlan
    handler: Callable


class ReturnHandler:
    """``return = { status, url }`` or ``{ status, body }``, with variables."""

    def __init__(self, location, response_plan: ResponseHeaderPlan, clock):
        action = location.return_
        self.status = action.status
        self.url = compile_template(action.url) if action.url is not None else None
        self.body = compile_template(action.body) if action.body is not None else None
        self.response_plan = response_plan
        self.clock = clock

    def __call__(self, exchange) -> None:
        ctx = VariableContext(exchange, self.clock)
        headers: list = []
        if self.status == 444:
            # nginx's "close the connection without a response"
            exchange.abort()
            return
        if self.url is not None and self.status in _REDIRECTS:
            headers.append((b"Location", absolute_url(exchange, self.url.render(ctx)).encode()))
            self.response_plan.add(headers, ctx)
            exchange.send_error(self.status, headers)
            return
        text = self.body if self.body is not None else self.url
        if text is None:
            self.response_plan.add(headers, ctx)
            exchange.send_error(self.status, headers)
            return
        body = text.render(ctx).encode()
        headers.append((b"Content-Type", b"text/plain"))
        headers.append((b"Content-Length", str(len(body)).encode()))
        self.response_plan.add(headers, ctx)
        exchange.send_head(self.status, headers)
        if exchange.request.method != "HEAD":
            exchange.send_body(body)
        exchange.finish()


def absolute_url(exchange, url: str) -> str:
    """nginx's ``absolute_redirect on``: a relative redirect gets scheme, host, port."""
    if not url.startswith("/"):
        return url
    conn = exchange.connection
    host = exchange.request.host or (exchange.server.server_name[:1] or [conn.server_addr])[0]
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    default_port = 443 if conn.scheme == "https" else 80
    port = "" if conn.server_port in (default_port, 0) else ":%d" % conn.server_port
    return "%s://%s%s%s" % (conn.scheme, host, port, url)


class Site:
    """The handler given to every listener's protocol factory."""

    def __init__(self, servers, make_proxy_handler: Callable, clock):
        self.clock = clock
        self._routes: dict[int, tuple[LocationMatcher, dict[int, Route],
                                      Optional[RealIP]]] = {}
        for server in servers:
            routes = {}
            for location in server.locations:
                response_plan = ResponseHeaderPlan(location)
                if location.proxy_pass is not None or location.grpc_pass is not None:
                    # the factory builds the proxy_pass or the grpc_pass handler
                    handler = make_proxy_handler(location, response_plan)
                else:
                    handler = ReturnHandler(location, response_plan, clock)
                access = AccessList(location.access) if location.access else None
                routes[id(location)] = Route(location, access, response_plan, handler)
            self._routes[server.index] = (LocationMatcher(server.locations), routes,
                                          server_realip(server))

    def __call__(self, exchange) -> None:
        matcher, routes, realip = self._routes[exchange.server.index]
        if realip is not None:
            # first, as nginx's post-read phase: everything after sees the real client
            realip(exchange)
        match = matcher.match(exchange.request.path)
        if match.location is not None:
            # the location's metrics are counted by its identity (gateway.metrics)
            exchange.variables["location"] = match.location
        if match.redirect is not None:
            target = match.redirect
            if exchange.request.args:
                target += "?" + exchange.request.args
            route = routes[id(match.location)] if match.location is not None else None
            headers = [(b"Location", absolute_url(exchange, target).encode())]
            if route is not None:
                route.response_plan.add(headers, VariableContext(exchange, self.clock))
            exchange.send_error(301, headers)
            return
        if match.location is None:
            exchange.send_error(404)
            return
        route = routes[id(match.location)]
        if route.access is not None and not route.access.allows(
            exchange.connection.remote_addr
        ):
            headers: list = []
            route.response_plan.add(headers, VariableContext(exchange, self.clock))
            exchange.send_error(403, headers)
            return
        route.handler(exchange)
