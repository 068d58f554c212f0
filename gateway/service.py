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
from gateway.admin import Admin, AdminSite, ProcessInfo
from gateway.deadlines import Deadlines
from gateway.eagerwrite import eager_reactor
from gateway.http.client import UpstreamConnector
from gateway.http.h1 import HTTP11Factory
from gateway.http.h2 import H2Factory
from gateway.http.negotiate import NegotiatingFactory
from gateway.http.pool import ConnectionPool
from gateway.http.probes import make_probe
from gateway.http.proxy import TLS_POOL_PREFIX, ProxyHandler
from gateway.http.routing import ServerSelector
from gateway.http.site import Site
from gateway.metrics import Metrics
from gateway.tls.client import UpstreamTLS
from gateway.tls.server import client_certificate_check, tls_factory
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

    def __init__(self, endpoint, factory, drain=None, drain_timeout: float = 30.0):
        self.endpoint = endpoint
        self.factory = factory
        #: ``drain(timeout)`` → Deferred: after listening stops, the listener's HTTP/2
        #: connections get GOAWAY and their running streams up to ``drain_timeout``
        self.drain = drain
        self.drain_timeout = drain_timeout
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
        stopped = defer.maybeDeferred(port.stopListening)
        if self.drain is not None:
            stopped.addCallback(lambda _: self.drain(self.drain_timeout))
        return stopped


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
        #: TLS towards the peers of each group some location uses with https://,
        #: built once per group (its context, trust store and sessions)
        self.upstream_tls = {
            name: UpstreamTLS(config.upstreams[name].tls)
            for name in sorted({
                location.proxy_pass.upstream
                for server in config.servers for location in server.locations
                if location.proxy_pass is not None and location.proxy_pass.scheme == "https"
            })
        }
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
        #: the counters behind the admin listener's /metrics (tunnels and gRPC calls
        #: are counted here too: ``metrics.tunnel_opened()``, ``metrics.grpc_call()``)
        self.metrics = Metrics(config, reactor)
        #: what every listener's factory calls when an exchange ends
        self.on_exchange_done = self._exchange_done_hook()
        self.site = Site(config.servers, self._proxy_handler, reactor)
        for description, servers in config.listeners().items():
            selector = ServerSelector(servers)
            scheme = "https" if any(server.tls is not None for server in servers) else "http"
            protocols = dict(scheme=scheme, listener=description,
                             on_exchange_done=self.on_exchange_done)
            # verify_client: nginx's per-request client certificate checks first
            handler = client_certificate_check(self.site, servers)
            # HTTP/1.1 always; HTTP/2 (ALPN h2, or the h2c preface on cleartext) when
            # a server of the listener has http2
            factory = NegotiatingFactory(
                HTTP11Factory(reactor, self.deadlines, selector, handler, **protocols),
                H2Factory(reactor, self.deadlines, selector, handler, **protocols)
                if any(server.http2 for server in servers) else None,
            )
            # TLS wraps the listener's factory; SNI picks each server's certificate
            serving = tls_factory(servers, factory, reactor) if scheme == "https" else factory
            listener = ListenerService(serverFromString(network, description),
                                       self.metrics.count_connections(serving),
                                       drain=factory.graceful_shutdown,
                                       drain_timeout=config.gateway.shutdown_timeout)
            listener.setName(description)
            listener.setServiceParent(self)
        #: active health checks, one per group with ``health_check``; a group whose
        #: peers change at run time calls ``health_checkers[name].peers_changed()``
        self.health_checkers = {}
        for name, settings in config.upstreams.items():
            if settings.health_check is not None:
                checker = HealthChecker(
                    self.manager.group(name), settings.health_check,
                    make_probe(settings.health_check, self.connector,
                               tls=self.upstream_tls.get(name)), reactor,
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
        #: ``[admin] listen``: the status page, /status, /metrics and the runtime API
        #: (None when ``listen = false``); last, so the proxy listeners come first
        self.admin = None
        self.admin_listener = None
        if config.admin.listen is not None:
            self.admin = Admin(self.manager, self.metrics,
                               ProcessInfo(reactor.seconds(), config.path))
            self.admin_listener = ListenerService(
                serverFromString(reactor, config.admin.listen),
                AdminSite(self.admin, reactor))
            self.admin_listener.setName(f"admin.listen {config.admin.listen}")
            self.admin_listener.setServiceParent(self)

    def listening(self):
        """A Deferred firing with ``{description: IListeningPort}`` once all listen."""
        listeners = [s for s in self
                     if isinstance(s, ListenerService) and s is not self.admin_listener]
        d = defer.gatherResults([s.listening for s in listeners], consumeErrors=True)
        return d.addCallback(lambda ports: {s.name: p for s, p in zip(listeners, ports)})

    def _exchange_done_hook(self):
        """The access log, chained with the metrics when the admin listener can show
        them (one call per request; nothing is counted when nobody can read it)."""
        log_exchange, record = self.access_log.log, self.metrics.record
        if self.config.admin.listen is None:
            return log_exchange
        if not self.access_log.enabled:
            return record

        def exchange_done(exchange):
            log_exchange(exchange)
            record(exchange)

        return exchange_done

    def _proxy_handler(self, location, response_plan):
        name = location.proxy_pass.upstream
        return ProxyHandler(
            location, self.manager.group(name), self.pools[name], self.connector,
            self.reactor, response_plan,
            tls=self.upstream_tls.get(name) if location.proxy_pass.scheme == "https" else None,
            metrics=self.metrics,
        )

    def _peers_changed(self, name, removed):
        """Group ``name`` gained or lost peers (``resolve = true``): close the idle
        connections to peers that left, and let its health checks follow."""
        group = self.manager.group(name)
        present = {p.name for p in group.peers} | {p.name for p in group.backups}
        for peer in removed:
            if peer.name not in present:
                self.pools[name].close_peer(peer.name)
                self.pools[name].close_peer(TLS_POOL_PREFIX + peer.name)
                if name in self.upstream_tls:
                    self.upstream_tls[name].forget(peer.name)
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.peers_changed()

    def startService(self):
        if self.admin is not None:
            self.admin.process.start_time = self.reactor.seconds()
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
