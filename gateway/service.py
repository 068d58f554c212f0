"""Configuration → the running service tree.

``GatewayService`` is a ``MultiService`` built from one validated :class:`Config`: one
listener per listen description (its servers chosen by Host), one
shared :class:`UpstreamManager`, one keepalive pool per upstream group, the access log
and the error log. It owns the wiring only; each piece does its own work. The reactor is
passed in (only ``gateway.tap`` touches the global one).

The building blocks (``build_routing``, ``new_listener``, ``new_pool``,
``add_health_checker``…) are used again by a reload, whose diff is
``gateway.reload``'s: each listening port keeps one :class:`ListenerFactory` whose
current configuration a reload swaps, while the connections accepted before finish on
the one they started with. ``stopService`` is the graceful stop: it waits for requests
in flight and tunnels up to ``shutdown_timeout``.
"""
from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ILoggingContext
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver
from zope.interface import implementer

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
from gateway.reload import Reloader
from gateway.tls.client import UpstreamTLS
from gateway.tls.server import client_certificate_check, tls_factory
from gateway.upstream import UpstreamManager
from gateway.upstream.health import HealthChecker, show_seconds
from gateway.upstream.resolve import ResolveService

log = Logger()


@implementer(ILoggingContext)
class ListenerFactory:
    """The factory a listening port keeps for its whole life.

    Each new connection is built by the current configuration's factory: ``serving``
    (the TLS wrapper on a TLS listener, else ``protocols``) in front of ``protocols``,
    the listener's :class:`NegotiatingFactory`. A reload puts the next configuration's
    pair in with :meth:`swap`; connections accepted before keep the factories (routing,
    certificates, limits) they were built with.
    """

    def __init__(self, serving, protocols: NegotiatingFactory):
        self.serving = serving
        self.protocols = protocols

    def buildProtocol(self, addr):
        return self.serving.buildProtocol(addr)

    def swap(self, serving, protocols: NegotiatingFactory) -> NegotiatingFactory:
        """New connections get ``serving``/``protocols`` from now on; returns the
        negotiating factory they replace."""
        old_serving, old = self.serving, self.protocols
        serving.doStart()
        self.serving, self.protocols = serving, protocols
        old_serving.doStop()
        return old

    def graceful_shutdown(self, timeout: float):
        """``NegotiatingFactory.graceful_shutdown`` of the current configuration."""
        return self.protocols.graceful_shutdown(timeout)

    @property
    def http11(self):
        """The current configuration's ``HTTP11Factory``."""
        return self.protocols.http11

    @property
    def http2(self):
        """The current configuration's ``H2Factory`` (None without HTTP/2)."""
        return self.protocols.http2

    def doStart(self):
        self.serving.doStart()

    def doStop(self):
        self.serving.doStop()

    def logPrefix(self):
        serving = self.serving
        if ILoggingContext.providedBy(serving):
            return serving.logPrefix()
        return serving.__class__.__name__


class ListenerService(Service):
    """One listen description: listens on start, stops listening on stop.

    Unlike ``StreamServerEndpointService`` it exposes the bound ``port`` (tests listen on
    port 0) and a listen failure propagates out of ``startService``, so a port that
    cannot be bound stops startup with the error, as nginx does. A reload opens new
    listeners with :meth:`listen`, which reports the failure instead.
    """

    def __init__(self, endpoint, factory, drain=None, drain_timeout: float = 30.0):
        self.endpoint = endpoint
        self.factory = factory
        #: ``drain(timeout)`` → Deferred: after listening stops, the listener's
        #: connections finish what they are doing (HTTP/2 ones get GOAWAY, idle
        #: keepalive ones close) for up to ``drain_timeout``; None: not waited for
        self.drain = drain
        self.drain_timeout = drain_timeout
        self.port = None
        self.listening = None

    def startService(self):
        if self.running:
            return          # listening already (a reload opened it with listen())
        failures = []
        self.listen().addErrback(failures.append)
        if failures:
            reason = failures[0].value
            if isinstance(reason, CannotListenError):
                # one line for the operator, as nginx's "bind() ... failed", not a traceback
                raise SystemExit(
                    f"gateway: cannot listen on {self.name}: {reason.socketError}"
                )
            failures[0].raiseException()

    def listen(self) -> defer.Deferred:
        """Start listening: a Deferred firing with the port, or failing with why not
        (``CannotListenError`` for a port in use)."""
        super().startService()
        self.listening = self.endpoint.listen(self.factory)
        return self.listening.addCallback(self._listened)

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

    def __init__(self, config, reactor, log_publisher=globalLogPublisher, endpoints=None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: listen description → endpoint of a socket inherited from the master process
        #: (``workers > 1``, :mod:`gateway.master`); other descriptions are bound here
        self.inherited_endpoints = dict(endpoints or {})
        self._log_publisher = log_publisher
        self._error_log = None
        self.deadlines = Deadlines(reactor)
        self.manager = UpstreamManager(config.upstreams, reactor)
        #: TCP transports that send without waiting (``gateway.eagerwrite``)
        self.network = eager_reactor(reactor)
        self.connector = UpstreamConnector(self.network, self.deadlines)
        #: TLS towards the peers of each group some location uses with https://, one
        #: per group (its context, trust store and sessions), built again by a reload
        self.upstream_tls = self.build_upstream_tls(config)
        self.pools = {name: self.new_pool(settings)
                      for name, settings in config.upstreams.items()}
        self.access_log = AccessLog(config.gateway, reactor)
        #: the counters behind the admin listener's /metrics (tunnels and gRPC calls
        #: are counted here too: ``metrics.tunnel_opened()``, ``metrics.grpc_call()``)
        self.metrics = Metrics(config, reactor)
        #: what every listener's factory calls when an exchange ends
        self.on_exchange_done = self._exchange_done_hook()
        #: each listen description's ``ListenerFactory``: what new connections get
        self.listener_factories: dict[str, ListenerFactory] = {}
        #: negotiating factories a reload replaced, while their connections finish
        self.retired: list[NegotiatingFactory] = []
        #: set by ``stopService``: reloads are refused from then on
        self.stopping = False
        self.site, chains = self.build_routing(config)
        for description, (serving, protocols) in chains.items():
            self.new_listener(description, serving, protocols).setServiceParent(self)
        #: ``[[grpc_servers]]``: grpcio front doors relaying to their grpc_pass group
        self.front_doors = [self.new_front_door(s) for s in config.grpc_servers]
        #: active health checks, one per group with ``health_check``; a group whose
        #: peers change at run time calls ``health_checkers[name].peers_changed()``
        self.health_checkers = {}
        for name, settings in config.upstreams.items():
            self.add_health_checker(name, settings)
        # resolve = true: peers that follow DNS. Added after the health checks, so the
        # first answer's peers find them running.
        self.resolvers = self.add_resolvers(config)
        for group in self.manager:
            self.watch(group)
        #: ``[admin] listen``: the status page, /status, /metrics and the runtime API
        #: (None when ``listen = false``); last, so the proxy listeners come first
        self.admin = None
        self.admin_listener = None
        if config.admin.listen is not None:
            self.admin_listener = self.new_admin_listener(config.admin.listen)
            self.admin_listener.setServiceParent(self)
        #: SIGHUP and ``POST /api/reload`` (``gateway.reload``)
        self.reloader = Reloader(self)

    # -- building blocks, used again by a reload (gateway.reload) --------------------------

    def build_routing(self, config):
        """The routing ``config`` gives new requests: its ``Site`` and, by listen
        description, ``(serving, protocols)``: the factory that takes a new connection
        (TLS-wrapped on a TLS listener, with this configuration's certificates) and
        the ``NegotiatingFactory`` behind it."""
        reactor = self.reactor
        site = Site(config.servers, self._proxy_handler, reactor)
        chains = {}
        for description, servers in config.listeners().items():
            selector = ServerSelector(servers)
            scheme = "https" if any(server.tls is not None for server in servers) else "http"
            protocols = dict(scheme=scheme, listener=description,
                             on_exchange_done=self.on_exchange_done)
            # verify_client: nginx's per-request client certificate checks first
            handler = client_certificate_check(site, servers)
            # HTTP/1.1 always; HTTP/2 (ALPN h2, or the h2c preface on cleartext) when
            # a server of the listener has http2
            factory = NegotiatingFactory(
                HTTP11Factory(reactor, self.deadlines, selector, handler, **protocols),
                H2Factory(reactor, self.deadlines, selector, handler, **protocols)
                if any(server.http2 for server in servers) else None,
            )
            # TLS wraps the listener's factory; SNI picks each server's certificate
            serving = tls_factory(servers, factory, reactor) if scheme == "https" else factory
            chains[description] = (serving, factory)
        return site, chains

    def new_listener(self, description, serving, protocols) -> ListenerService:
        """A listener for ``description`` serving new connections with ``serving``
        (not started, not in the tree yet)."""
        factory = ListenerFactory(serving, protocols)
        self.listener_factories[description] = factory
        listener = ListenerService(self.listen_endpoint(self.network, description),
                                   self.metrics.count_connections(factory),
                                   drain=factory.graceful_shutdown,
                                   drain_timeout=self.config.gateway.shutdown_timeout)
        listener.setName(description)
        return listener

    def new_admin_listener(self, description) -> ListenerService:
        """The admin listener on ``description`` (not started, not in the tree)."""
        if self.admin is None:
            self.admin = Admin(self.manager, self.metrics,
                               ProcessInfo(self.reactor.seconds(), self.config.path),
                               reload=self.reload)
        listener = ListenerService(serverFromString(self.reactor, description),
                                   AdminSite(self.admin, self.reactor))
        listener.setName(f"admin.listen {description}")
        return listener

    def build_upstream_tls(self, config) -> dict:
        """``UpstreamTLS`` for each group some location of ``config`` uses with
        https:// (reading its files now)."""
        return {
            name: UpstreamTLS(config.upstreams[name].tls)
            for name in sorted({
                location.proxy_pass.upstream
                for server in config.servers for location in server.locations
                if location.proxy_pass is not None and location.proxy_pass.scheme == "https"
            })
        }

    def new_pool(self, settings) -> ConnectionPool:
        """The keepalive pool of one group."""
        return ConnectionPool(
            self.reactor, self.deadlines,
            keepalive=settings.keepalive,
            keepalive_requests=settings.keepalive_requests,
            keepalive_timeout=settings.keepalive_timeout,
            keepalive_time=settings.keepalive_time,
        )

    def add_health_checker(self, name, settings):
        """Start (or, before start, add) the active checks of group ``name`` when it
        has a ``health_check``; the checker, or None."""
        if settings.health_check is None:
            return None
        checker = HealthChecker(
            self.manager.group(name), settings.health_check,
            self.health_probe(name, settings.health_check), self.reactor,
        )
        checker.setName(f"health_check {name}")
        checker.setServiceParent(self)
        self.health_checkers[name] = checker
        return checker

    def health_probe(self, name, check):
        """What one active check of group ``name`` does: a gRPC ``Check`` on the
        peer's channel for ``type = "grpc"`` (TLS when a front door or location uses
        the group with grpcs://), else an HTTP or TCP probe."""
        if check.type == "grpc":
            from gateway.grpc_pass.health import GrpcProbe
            tls = any(s.scheme == "grpcs" and s.upstream == name
                      for s in self.config.grpc_servers) or any(
                getattr(location.grpc_pass, "scheme", None) == "grpcs"
                and location.grpc_pass.upstream == name
                for server in self.config.servers for location in server.locations)
            return GrpcProbe(check, self.grpc_relay.channels, self.manager.group(name),
                             tls=tls)
        return make_probe(check, self.connector, tls=self.upstream_tls.get(name))

    def new_front_door(self, settings):
        """A ``[[grpc_servers]]`` front door, in the tree (it binds when started; a
        port in use stops startup with one line)."""
        from gateway.grpc_pass.front_door import FrontDoor
        relay = self.grpc_relay
        door = FrontDoor(settings, relay, relay.loop,
                         grace=self.config.gateway.shutdown_timeout)
        door.setName(f"grpc_servers {settings.listen}")
        door.setServiceParent(self)
        return door

    def add_resolvers(self, config) -> ResolveService:
        """The ``resolve = true`` loops of the current groups, in the tree."""
        resolvers = ResolveService(self.manager, config.gateway, self.reactor)
        resolvers.setName("resolve")
        resolvers.setServiceParent(self)
        return resolvers

    def watch(self, group) -> None:
        """Follow ``group``'s membership changes (``resolve = true``)."""
        group.membership_observers.append(
            lambda added, removed, name=group.name: self._peers_changed(name, removed))

    def reload(self, config=None) -> defer.Deferred:
        """Apply a new configuration (by default the file this one came from, read
        again) by diff: a Deferred firing with a ``gateway.reload.ReloadResult``."""
        return self.reloader.reload(config)

    def listen_endpoint(self, network, description):
        """Where a listener for ``description`` listens: the socket the master passed
        (adopted once), or a new one bound on ``network``."""
        inherited = self.inherited_endpoints.pop(description, None)
        return inherited if inherited is not None else serverFromString(network, description)

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
        if location.grpc_pass is not None:
            return self._grpc_handler(location)
        name = location.proxy_pass.upstream
        return ProxyHandler(
            location, self.manager.group(name), self.pools[name], self.connector,
            self.reactor, response_plan,
            tls=self.upstream_tls.get(name) if location.proxy_pass.scheme == "https" else None,
            metrics=self.metrics,
        )

    def _grpc_handler(self, location):
        """A ``grpc_pass`` location's handler, relaying through the service's one
        gRPC relay. Imported here: a configuration without gRPC never loads grpcio."""
        from gateway.grpc_pass.location import GrpcPassHandler
        from gateway.grpc_pass.relay import GrpcTarget
        return GrpcPassHandler(location, self.grpc_relay, self.reactor, GrpcTarget,
                               metrics=self.metrics)

    @property
    def grpc_relay(self):
        """The service's one gRPC relay (``gateway.grpc_pass.relay``) and its per-peer
        channels, made on first use: a configuration without gRPC never loads grpcio.
        grpc.aio runs on the reactor's own asyncio loop."""
        relay = self.__dict__.get("_grpc_relay")
        if relay is None:
            from gateway.grpc_pass.channels import Channels
            from gateway.grpc_pass.relay import Relay
            loop = getattr(self.reactor, "_asyncioEventloop", None)
            if loop is None:
                raise RuntimeError("gRPC needs the asyncio reactor (the default); "
                                   "this configuration cannot run on "
                                   + type(self.reactor).__name__)
            channels = Channels(loop)    # a peer that leaves: _peers_changed
            relay = self._grpc_relay = Relay(self.manager, channels, self.reactor,
                                             metrics=self.metrics)
        return relay

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
                relay = self.__dict__.get("_grpc_relay")
                if relay is not None:
                    relay.channels.close_peer(name, peer.name)
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.peers_changed()

    def open_error_log(self, path) -> None:
        """Send the log to ``path`` too (``error_log``; ``"-"``: twistd's log only),
        replacing the file opened before (a reload reopens it, after rotation)."""
        if self._error_log is not None:
            self._log_publisher.removeObserver(self._error_log)
            self._error_log = None
        if path and path != "-":
            self._error_log = textFileLogObserver(open(path, "a", encoding="utf-8"))
            self._log_publisher.addObserver(self._error_log)

    def set_exchange_hook(self) -> None:
        """Rebuild ``on_exchange_done`` (after the access log or the admin listener
        changed) and give it to every live protocol factory, retired ones included:
        a request that finishes after a reload is logged by the new access log."""
        hook = self.on_exchange_done = self._exchange_done_hook()
        for factory in list(self.retired) + [f.protocols for f in
                                             self.listener_factories.values()]:
            factory.http11.on_exchange_done = hook
            if factory.http2 is not None:
                factory.http2.on_exchange_done = hook

    def retire(self, protocols: NegotiatingFactory) -> None:
        """A reload replaced ``protocols``: its connections finish what they are doing
        and close (``NegotiatingFactory.retire``); a stop still waits for them."""
        self.retired = [f for f in self.retired if f.open_connections()]
        protocols.retire()
        if protocols.open_connections():
            self.retired.append(protocols)

    def startService(self):
        if self.admin is not None:
            self.admin.process.start_time = self.reactor.seconds()
        self.open_error_log(self.config.gateway.error_log)
        super().startService()
        log.info(
            "gateway started: {listeners} listener(s), {groups} upstream group(s)",
            listeners=len(self.config.listeners()), groups=len(self.config.upstreams),
        )

    def stopService(self):
        """Graceful stop (SIGTERM under twistd): stop accepting; idle keepalive
        connections close at once, HTTP/2 ones get GOAWAY; requests in flight and
        tunnels finish, up to ``shutdown_timeout`` (the rest are then closed); then
        the pools, the access log and the error log close."""
        self.stopping = True
        timeout = self.config.gateway.shutdown_timeout
        open_connections = sum(f.open_connections() for f in self.retired) + sum(
            f.protocols.open_connections() for f in self.listener_factories.values())
        if open_connections:
            log.info("gateway stopping: {count} client connection(s) open, waiting up to"
                     " {wait} (shutdown_timeout) for requests and tunnels to finish",
                     count=open_connections, wait=show_seconds(timeout), timeout=timeout)
        retired, self.retired = self.retired, []
        d = super().stopService()
        if retired:
            d = defer.DeferredList(
                [d] + [f.graceful_shutdown(timeout) for f in retired])

        def closed(result):
            for pool in self.pools.values():
                pool.close_all()
            relay = self.__dict__.get("_grpc_relay")
            channels_closed = relay.channels.close_all() if relay is not None else None
            self.deadlines.stop()
            self.access_log.close()
            if self._error_log is not None:
                self._log_publisher.removeObserver(self._error_log)
                self._error_log = None
            if channels_closed is not None:
                return channels_closed.addCallback(lambda _: result)
            return result

        return d.addBoth(closed)
