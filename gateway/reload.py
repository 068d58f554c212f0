"""Reload: a new configuration applied to the running service tree, by diff.

This module owns what a reload (SIGHUP, ``POST /api/reload``) changes and in which
order. The pieces it uses are built by ``gateway.service.GatewayService`` (the same
building blocks its constructor uses); the upstream state moves with
``UpstreamManager.reconfigure``. The rules, from the operator's side:

1. The file is read and validated completely (``gateway.config.load_config``). An
   invalid file changes nothing: every error is logged with its TOML path and the
   result carries them (the admin API answers 422 with the list).
2. Upstream groups are matched by name, peers by ``address`` (``UpstreamGroup.
   reconfigure``): a kept peer keeps its state — connections, failures and the
   failure window, health, counters, pooled connections — and takes the file's
   parameters. Runtime API changes (``down``, ``drain``, ``weight``) are replaced by
   the file's values, as NGINX Plus does without a ``state`` file. New groups and
   peers start fresh; a removed group's idle connections close; requests in flight on
   a removed group or peer finish on it.
3. Health checks follow their group: kept when the ``health_check`` table is the same
   (new peers get a probe loop, removed ones lose theirs), started again when it
   changed or the group talks TLS (its probe uses the new TLS context), stopped with
   every peer marked healthy when the table is gone. ``resolve = true`` loops restart
   (each entry asks DNS again at once; its peers stay until the answer differs).
4. Every listen description is diffed by its text. A kept one keeps its socket and new
   connections get the new routing, limits and TLS certificates (the files are read
   again, so a renewed certificate is picked up with the same paths); connections
   accepted before are *retired*: they keep the configuration they were accepted with,
   finish the request under way and close, as nginx's old workers do (an idle
   keepalive connection closes at once, HTTP/2 gets GOAWAY, tunnels run to their end,
   with no time limit). A description that disappeared stops accepting and its
   connections are retired the same way. A new description (a changed one is a removed
   one plus a new one) is opened after the removed ones closed, so a port can move
   between descriptions. A listener that cannot be opened (port in use) is logged and
   reported; the rest of the reload stands (the admin API answers 500).
5. The access log takes the new path and format (or is reopened: a reload after log
   rotation writes to the new file), the error log is reopened, the metrics follow the
   new locations (``Metrics.configure``) and count the reload
   (``gateway_reloads_total``), the admin listener moves if ``[admin] listen`` changed.
   ``workers`` and ``[[grpc_servers]]`` take effect at the next start.

Reloads run one at a time: one asked for while another runs waits for it. Signals are
wired by :class:`ProcessSignals`, which only ``gateway.tap`` installs.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gateway.accesslog import AccessLog
from gateway.config import ConfigError, load_config

__all__ = ["ProcessSignals", "ReloadResult", "Reloader"]

log = Logger()


@dataclass
class ReloadResult:
    """How a reload went.

    ``applied``: the new configuration is in force (False: nothing changed, see
    ``errors``). ``invalid``: the file did not validate (``errors`` holds each problem
    with its TOML path). ``refused``: no reload now (the gateway is stopping).
    ``errors`` after an applied reload are the parts that failed (a listener that could
    not be opened). ``changes`` says what changed, one line each.
    """

    applied: bool
    errors: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    invalid: bool = False
    refused: bool = False

    @property
    def ok(self) -> bool:
        """Everything in the new file took effect."""
        return self.applied and not self.errors

    @property
    def status(self) -> int:
        """The admin API's answer: 200 done, 422 invalid file, 500 partly failed,
        503 not possible now (the gateway is stopping)."""
        if self.ok:
            return 200
        if self.invalid:
            return 422
        return 503 if self.refused else 500

    def document(self) -> dict:
        """The JSON the admin API returns."""
        return {"reloaded": self.applied, "ok": self.ok, "errors": list(self.errors),
                "changes": list(self.changes)}


class Reloader:
    """Applies new configurations to one ``GatewayService``; ``load`` reads the file
    (``load_config``, replaced by tests)."""

    def __init__(self, service, load: Callable = load_config):
        self.service = service
        self.load = load
        self._lock = defer.DeferredLock()

    def reload(self, config=None) -> defer.Deferred:
        """Reload from ``config``, or from the service's file read again: a Deferred
        firing with a :class:`ReloadResult` (never failing)."""
        d = self._lock.run(self._reload, config)

        def broken(failure):
            log.failure("reload failed", failure)
            self.service.metrics.reloaded(False)
            # a bug half-way: what was applied stays, the rest did not happen
            return ReloadResult(False, [f"reload failed while applying the new"
                                        f" configuration: {failure.getErrorMessage()}"])

        return d.addErrback(broken)

    # -- one reload ----------------------------------------------------------------------

    def _reload(self, config) -> defer.Deferred | ReloadResult:
        service = self.service
        if service.stopping:
            return ReloadResult(False, ["the gateway is stopping"], refused=True)
        path = service.config.path
        if config is None:
            log.info("reloading the configuration from {path}", path=path)
            try:
                config = self.load(path)
            except ConfigError as e:
                for error in e.errors:
                    log.error("reload: {path}: {error}", path=path, error=error)
                log.error("reload refused: {count} error(s) in {path}; the running"
                          " configuration stays", count=len(e.errors), path=path)
                service.metrics.reloaded(False)
                return ReloadResult(False, list(e.errors), invalid=True)
        old = service.config
        changes: list[str] = []
        # the building blocks read the service's configuration: the new one from now
        service.config = config
        self._upstreams(old, config, changes)
        self._logs(old, config, changes)
        service.metrics.configure(config)
        if old.servers != config.servers:
            changes.append("servers and locations: the new ones serve new requests")
        closing, opening = self._routing(old, config, changes)
        closing += self._admin(old, config, changes, opening)
        if old.grpc_servers != config.grpc_servers:
            changes.append("grpc_servers: changes take effect at the next start")
        if old.gateway.workers != config.gateway.workers:
            changes.append(f"workers {old.gateway.workers} -> {config.gateway.workers}:"
                           " takes effect at the next start")
        for line in changes:
            log.info("reload: {change}", change=line)
        d = defer.DeferredList(closing, consumeErrors=True)
        d.addCallback(lambda _: self._open(opening, changes))
        return d

    # -- upstreams ------------------------------------------------------------------------

    def _upstreams(self, old, new, changes: list[str]) -> None:
        service = self.service
        result = service.manager.reconfigure(new.upstreams)
        # TLS towards peers: contexts built again, so changed files are read
        service.upstream_tls = service.build_upstream_tls(new)
        for name, group in result.removed.items():
            pool = service.pools.pop(name, None)
            if pool is not None:
                pool.close_all()
                pool.keepalive = 0          # a request still in flight closes its own
            checker = service.health_checkers.pop(name, None)
            if checker is not None:
                service.removeService(checker)
            relay = service.__dict__.get("_grpc_relay")
            if relay is not None:       # gRPC channels, as for peers that leave a group
                for peer in list(group.peers) + list(group.backups):
                    relay.channels.close_peer(name, peer.name)
            changes.append(f"upstream {name} removed")
        for name in result.added:
            service.pools[name] = service.new_pool(new.upstreams[name])
            service.watch(service.manager.group(name))
            changes.append(f"upstream {name} added")
        for name, (added, removed) in result.kept.items():
            settings = new.upstreams[name]
            service.pools[name].reconfigure(
                keepalive=settings.keepalive, keepalive_requests=settings.keepalive_requests,
                keepalive_timeout=settings.keepalive_timeout,
                keepalive_time=settings.keepalive_time)
            if added or removed:
                changes.append(
                    f"upstream {name}: "
                    + ", ".join([f"added {p.name}" for p in added]
                                + [f"removed {p.name}" for p in removed]))
        self._health_checks(new)
        for name, (added, removed) in result.kept.items():
            # idle connections and TLS sessions of peers that left; health loops
            service._peers_changed(name, removed)
        if _resolving(old) or _resolving(new):
            service.removeService(service.resolvers)
            service.resolvers = service.add_resolvers(new)

    def _health_checks(self, new) -> None:
        service = self.service
        for name, settings in new.upstreams.items():
            checker = service.health_checkers.get(name)
            if checker is None:
                service.add_health_checker(name, settings)
                continue
            if settings.health_check is None:
                del service.health_checkers[name]
                service.removeService(checker)
                checker.forget()        # its verdicts no longer hold
            elif settings.health_check != checker.settings or name in service.upstream_tls:
                del service.health_checkers[name]
                service.removeService(checker)
                service.add_health_checker(name, settings)
            else:
                checker.peers_changed()

    # -- logs -----------------------------------------------------------------------------

    def _logs(self, old, new, changes: list[str]) -> None:
        service = self.service
        if (old.gateway.access_log, old.gateway.access_log_format) == (
                new.gateway.access_log, new.gateway.access_log_format):
            service.access_log.reopen()
        else:
            previous = service.access_log
            service.access_log = AccessLog(new.gateway, service.reactor)
            previous.close()
            changes.append("access log: %s (%s)" % (
                new.gateway.access_log if new.gateway.access_log is not None else "off",
                new.gateway.access_log_format))
        if service.running:
            service.open_error_log(new.gateway.error_log)
        if old.gateway.error_log != new.gateway.error_log:
            changes.append(f"error log: {new.gateway.error_log}")

    # -- listeners ------------------------------------------------------------------------

    def _routing(self, old, new, changes: list[str]):
        """New routing for every listener; returns the Deferreds of the listeners
        being closed and the new listeners to open once they have."""
        service = self.service
        service.set_exchange_hook()
        site, chains = service.build_routing(new)
        service.site = site
        closing, opening = [], []
        for description, factory in list(service.listener_factories.items()):
            if description in chains:
                service.retire(factory.swap(*chains[description]))
                continue
            listener = service.getServiceNamed(description)
            del service.listener_factories[description]
            listener.drain = None       # retired below: no time limit on a reload
            closing.append(defer.maybeDeferred(service.removeService, listener))
            service.retire(factory.protocols)
            changes.append(f"listener {description} removed")
        for description, (serving, protocols) in chains.items():
            if description not in service.listener_factories:
                opening.append(service.new_listener(description, serving, protocols))
        for listener in service:
            if hasattr(listener, "drain_timeout"):
                listener.drain_timeout = new.gateway.shutdown_timeout
        return closing, opening

    def _admin(self, old, new, changes: list[str], opening: list) -> list:
        service = self.service
        if old.admin.listen == new.admin.listen and (
                new.admin.listen is None or service.admin_listener is not None):
            return []       # unchanged (one that could not be opened is tried again)
        closing = []
        if service.admin_listener is not None:
            closing.append(defer.maybeDeferred(service.removeService,
                                               service.admin_listener))
            service.admin_listener = None
        if new.admin.listen is not None:
            service.admin_listener = service.new_admin_listener(new.admin.listen)
            opening.append(service.admin_listener)
        service.set_exchange_hook()     # metrics are recorded while an admin listens
        changes.append("admin listener: %s" % (new.admin.listen or "off"))
        return closing

    def _open(self, opening: list, changes: list[str]) -> ReloadResult:
        service = self.service
        errors = []
        if service.stopping:
            # a stop began while the removed listeners closed: open nothing more
            opening = []
            errors.append("the gateway is stopping: new listeners were not opened")
        for listener in opening:
            failures = []
            listener.listen().addErrback(failures.append)
            if not failures:
                listener.setServiceParent(service)     # listening already
                changes.append(f"listener {listener.name} added")
                log.info("reload: listener {listener} added", listener=listener.name)
                continue
            reason = failures[0].value
            text = str(reason.socketError) if isinstance(reason, CannotListenError) else (
                failures[0].getErrorMessage())
            error = f"cannot listen on {listener.name}: {text}"
            errors.append(error)
            log.error("reload: {error}; serving the rest", error=error)
            service.listener_factories.pop(listener.name, None)
            listener.stopService()
            if listener is service.admin_listener:
                service.admin_listener = None
        service.metrics.reloaded(not errors)
        if errors:
            log.error("reload partly failed: {count} listener(s) could not be opened",
                      count=len(errors))
        else:
            log.info("reload done: {count} change(s)", count=len(changes))
        return ReloadResult(True, errors, changes)


def _resolving(config) -> bool:
    return any(peer.resolve for group in config.upstreams.values() for peer in group.servers)


class ProcessSignals(Service):
    """The signals of the process twistd runs.

    - SIGHUP reloads: the handler only schedules ``reload()`` on the reactor
      (``callFromThread``, as Twisted's own SIGTERM handler does), where it runs.
    - SIGTERM is twistd's: it stops the reactor, which waits for
      ``GatewayService.stopService`` (the graceful stop). Twisted then ends the process
      by raising the signal again (status -15); a graceful stop is a clean exit, as
      nginx's, so this service makes it exit 0 by clearing the reactor's
      ``_exitSignal`` (its ``_ISupportsExitSignalCapturing`` record) when the stop
      began with SIGTERM. SIGINT keeps Twisted's behaviour.

    Installed by ``gateway.tap`` only; tests and embedders that do not add this
    service get no signal handler.
    """

    def __init__(self, reload: Callable[[], defer.Deferred], reactor,
                 signum: int = signal.SIGHUP):
        self.reload = reload
        self.reactor = reactor
        self.signum = signum
        self._previous: Optional[object] = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.signum, self._received)

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            self.reactor._exitSignal = None

    def _received(self, signum, frame) -> None:
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        log.info("{signal} received: reloading", signal=signal.Signals(self.signum).name)
        self.reload()
