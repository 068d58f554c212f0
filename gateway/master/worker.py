"""The worker's side of ``workers > 1``: what the master tells a worker, and how it obeys.

The master starts each worker as ``twistd -n gateway -c FILE --worker SPEC``, where
``SPEC`` is :class:`WorkerSpec` as JSON: its slot, the configuration the master validated
(a copy of the file's bytes, so a restarted worker runs what its siblings run even if
the file was edited since), the private admin socket it serves its own ``/status``,
``/metrics`` and API on (the master's admin listener aggregates them), and the
descriptor number of each inherited listening socket. Everything else about a worker is
a normal single-process gateway: its own reactor, upstream manager, pools, health
checks, reload on ``SIGHUP`` and graceful stop on ``SIGTERM``.

This module owns reading the spec, the configuration a worker runs
(:func:`worker_config`: the admin listener moved to the private socket, for reloads
too), the endpoints for the inherited sockets, telling the master the worker is ready
(``ready`` written on descriptor ``READY_FD`` once the reactor runs: it listens and
handles ``SIGHUP``), and :class:`ParentWatch`: a worker whose master is gone (even
killed with ``SIGKILL``) sees end-of-file on its standard input, a pipe from the
master, and stops gracefully instead of running on unsupervised.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from typing import Callable, Optional

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config.model import AdminSettings
from gateway.master.sockets import AdoptedEndpoint
from gateway.master.supervisor import READY_FD

__all__ = ["ParentWatch", "WorkerSpec", "load_worker_config", "worker_config"]

log = Logger()


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What the master tells one worker process (``--worker`` JSON)."""

    slot: int
    #: a file holding the configuration's bytes as the master validated them
    config_copy: str
    #: the private admin socket's path, served while ``[admin] listen`` is on (None:
    #: never)
    admin: Optional[str] = None
    #: listen description → inherited descriptor number
    listeners: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        data = json.loads(text)
        return cls(slot=int(data["slot"]), config_copy=data["config_copy"],
                   admin=data.get("admin"),
                   listeners={str(k): int(v) for k, v in data.get("listeners", {}).items()})


def admin_description(path: str) -> str:
    """The unix endpoint description of a private admin socket (owner only)."""
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600"


def worker_config(config, spec: WorkerSpec):
    """``config`` as a worker runs it: the admin listener on the private socket (or
    off); everything else unchanged. Applied to every configuration a worker loads,
    reloads included."""
    listen = (admin_description(spec.admin)
              if spec.admin is not None and config.admin.listen is not None else None)
    return dataclasses.replace(config, admin=AdminSettings(listen=listen))


def load_worker_config(spec: WorkerSpec, path: str):
    """The configuration the master validated (``spec.config_copy``), read as if it were
    the file at ``path`` (relative paths resolve against ``path``'s directory).
    Raises ``ConfigError``."""
    from gateway.config import ConfigError, parse_config

    try:
        with open(spec.config_copy, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError([f"{spec.config_copy}: cannot read the master's copy: {e}"]
                          ) from None
    return worker_config(parse_config(data, path), spec)


def inherited_endpoints(spec: WorkerSpec, reactor) -> dict[str, AdoptedEndpoint]:
    """An endpoint per inherited listening socket, by listen description."""
    return {description: AdoptedEndpoint(reactor, fd, description)
            for description, fd in spec.listeners.items()}


@implementer(IReadDescriptor)
class ParentWatch:
    """Calls ``on_gone`` once when the pipe on ``fd`` (the master's end held open for
    the master's lifetime) reaches end-of-file."""

    def __init__(self, reactor, fd: int, on_gone: Callable[[], None]):
        self.reactor = reactor
        self.fd = fd
        self.on_gone = on_gone

    def start(self) -> None:
        os.set_blocking(self.fd, False)
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            log.warn("the master process is gone; stopping")
            self.on_gone()
        return None

    def connectionLost(self, reason) -> None:
        pass

    def logPrefix(self) -> str:
        return "master"


def make_worker_service(path: str, spec_json: str, reactor):
    """The service tree of one worker: a ``GatewayService`` on the master's copy of
    the configuration, listening on the inherited sockets, that stops when the
    master is gone. ``path`` is the configuration file (for reloads and relative
    paths)."""
    import sys

    from gateway.config import ConfigError, load_config
    from gateway.reload import ProcessSignals
    from gateway.service import GatewayService

    spec = WorkerSpec.from_json(spec_json)
    try:
        config = load_worker_config(spec, path)
    except ConfigError as e:
        for error in e.errors:
            print(f"{path}: {error}", file=sys.stderr)
        raise SystemExit(1)
    service = GatewayService(config, reactor, endpoints=inherited_endpoints(spec, reactor))
    # a reload (SIGHUP forwarded by the master) reads the file again: as this worker's
    service.reloader.load = lambda path: worker_config(load_config(path), spec)
    # SIGHUP (forwarded by the master) reloads, as in one process
    ProcessSignals(service.reload, reactor).setServiceParent(service)

    def master_gone():
        if reactor.running:
            reactor.stop()

    watch = ParentWatch(reactor, 0, master_gone)
    reactor.callWhenRunning(watch.start)
    reactor.callWhenRunning(stop_once_on_signals, reactor)
    # running (listening, signal handlers installed): tell the master
    reactor.callWhenRunning(report_ready, READY_FD)
    return service


def stop_once_on_signals(reactor, install=None) -> None:
    """``SIGTERM`` and ``SIGINT`` stop the worker gracefully, once, and it exits 0.

    A worker often gets the same stop twice: Ctrl-C, or systemd's default
    ``KillMode=control-group``, signals every process of the group, and the master then
    sends ``SIGTERM`` as well. Twisted's own handlers would stop the reactor a second
    time (a ``ReactorNotRunning`` traceback) and end the process by the signal.
    Installed once the reactor runs, after Twisted's."""
    import signal

    install = install or signal.signal
    stopping = []

    def stop():
        if stopping or not reactor.running:
            return
        stopping.append(True)
        reactor.stop()

    def received(signum, frame):
        reactor.callFromThread(stop)

    install(signal.SIGTERM, received)
    install(signal.SIGINT, received)


def report_ready(fd: int) -> None:
    """Write ``ready`` on the master's pipe and close it."""
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError as e:
        log.warn("could not tell the master this worker is ready: {error}", error=e)
