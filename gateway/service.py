"""Configuration → the running service tree.

``GatewayService`` is a ``MultiService`` built from one validated :class:`Config`: one
listener per listen description (its servers chosen by Host), one
shared :class:`UpstreamManager`, one keepalive pool per upstream group, the access log
and the error log. It owns the wiring only; each piece does its own work. The reactor is
passed in (only ``gateway.tap`` touches the global one).
"""
from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver

from gateway.accesslog import AccessLog
from gateway.deadlines import Deadlines
from gateway.eagerwrite import eager_reactor
from gateway.http.client import UpstreamConnector
from gateway.http.h1 import HTTP11Factory
from gateway.http.pool import ConnectionPool
from gateway.http.probes import make_probe
from gateway.http.proxy import ProxyHandler
from gateway.http.routing import ServerSelector
from gateway.http.site import Site
from gateway.upstream import UpstreamManager
from gateway.upstream.health import HealthChecker
from gateway.upstream.resolve import ResolveService

log = Logger()


class ListenerService(Service):
    """One listen description: listens on start, stops listening on stop.

    Unlike ``StreamServerEndpointService`` it exposes the bound ``port`` (tests listen on
    port 0) and a listen failure propagates out of ``startService``, so a port that
    cannot be bound stops startup with the error, as nginx does.
    """

    def __init__(self, endpoint, factory):
        self.endpoint = endpoint
        self.factory = factory
        self.port = None
        self.listening = None

    def startService(self):
        super().startService()
        self.listening = self.endpoint.listen(self.factory)
        failures = []
        self.listening.addCallbacks(self._listened, failures.append)
        if failures:
            reason = failures[0].value
            if isinstance(reason, CannotListenError):
                # one line for the operator, as nginx's "bind() ... failed", not a traceback
                raise SystemExit(
                    f"gateway: cannot listen on {self.name}: {reason.socketError}"
                )
            failures[0].raiseException()

    def _listened(self, port):
        self.port = port
        return port

    def stopService(self):
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


class GatewayService(MultiService):
    """Every listener, upstream group and log of one configuration."""

    def __init__(self, config, reactor, log_publisher=globalLogPublisher):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._log_publisher = log_publisher
        self._error_log = None
        self.deadlines = Deadlines(reactor)
        self.manager = UpstreamManager(config.upstreams, reactor)
        network = eager_reactor(reactor)   # TCP transports that send without waiting
        self.connector = UpstreamConnector(network, self.deadlines)
        self.pools = {
            name: ConnectionPool(
                reactor, self.deadlines,
                keepalive=settings.keepalive,
                keepalive_requests=settings.keepalive_requests,
                keepalive_timeout=settings.keepalive_timeout,
                keepalive_time=settings.keepalive_time,
            )
            for name, settings in config.upstreams.items()
        }
        self.access_log = AccessLog(config.gateway, reactor)
        self.site = Site(config.servers, self._proxy_handler, reactor)
        for description, servers in config.listeners().items():
            factory = HTTP11Factory(
                reactor, self.deadlines, ServerSelector(servers), self.site,
                scheme="http", listener=description,
                on_exchange_done=self.access_log.log,
            )
            listener = ListenerService(serverFromString(network, description), factory)
            listener.setName(description)
            listener.setServiceParent(self)
        #: active health checks, one per group with ``health_check``; a group whose
        #: peers change at run time calls ``health_checkers[name].peers_changed()``
        self.health_checkers = {}
        for name, settings in config.upstreams.items():
            if settings.health_check is not None:
                checker = HealthChecker(
                    self.manager.group(name), settings.health_check,
                    make_probe(settings.health_check, self.connector), reactor,
                )
                checker.setName(f"health_check {name}")
                checker.setServiceParent(self)
                self.health_checkers[name] = checker
        # resolve = true: peers that follow DNS. Added after the health checks, so the
        # first answer's peers find them running.
        self.resolvers = ResolveService(self.manager, config.gateway, reactor)
        self.resolvers.setName("resolve")
        self.resolvers.setServiceParent(self)
        for group in self.manager:
            group.membership_observers.append(
                lambda added, removed, name=group.name: self._peers_changed(name, removed))

    def listening(self):
        """A Deferred firing with ``{description: IListeningPort}`` once all listen."""
        listeners = [s for s in self if isinstance(s, ListenerService)]
        d = defer.gatherResults([s.listening for s in listeners], consumeErrors=True)
        return d.addCallback(lambda ports: {s.name: p for s, p in zip(listeners, ports)})

    def _proxy_handler(self, location, response_plan):
        name = location.proxy_pass.upstream
        return ProxyHandler(
            location, self.manager.group(name), self.pools[name], self.connector,
            self.reactor, response_plan,
        )

    def _peers_changed(self, name, removed):
        """Group ``name`` gained or lost peers (``resolve = true``): close the idle
        connections to peers that left, and let its health checks follow."""
        group = self.manager.group(name)
        present = {p.name for p in group.peers} | {p.name for p in group.backups}
        for peer in removed:
            if peer.name not in present:
                self.pools[name].close_peer(peer.name)
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.peers_changed()

    def startService(self):
        path = self.config.gateway.error_log
        if path and path != "-":
            self._error_log = textFileLogObserver(open(path, "a", encoding="utf-8"))
            self._log_publisher.addObserver(self._error_log)
        super().startService()
        log.info(
            "gateway started: {listeners} listener(s), {groups} upstream group(s)",
            listeners=len(self.config.listeners()), groups=len(self.config.upstreams),
        )

    def stopService(self):
        d = super().stopService()

        def closed(result):
            for pool in self.pools.values():
                pool.close_all()
            self.deadlines.stop()
            self.access_log.close()
            if self._error_log is not None:
                self._log_publisher.removeObserver(self._error_log)
            return result

        return d.addBoth(closed)
