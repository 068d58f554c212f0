"""The master process of ``workers > 1``: listening sockets, workers, signals, admin.

``twistd -n gateway -c FILE`` with ``workers > 1`` (or ``0``, one per core) runs
:class:`MasterService` instead of the gateway itself, as nginx's master process:

- it binds every listen description before privileges are dropped
  (``privilegedStartService``), once, and passes the sockets to each worker as
  inherited descriptors (``spawnProcess``'s ``childFDs``);
- it starts the workers, each ``twistd -n gateway -c FILE --worker SPEC`` with its own
  reactor, upstream state and pools (:mod:`gateway.master.worker`), and starts again
  one that exits (:mod:`gateway.master.supervisor`);
- ``SIGHUP`` (and ``POST /api/reload``): the master validates the file first. Invalid:
  the errors are logged (and returned) and nothing changes. Valid: when the listen
  descriptions are the same it forwards ``SIGHUP`` and each worker reloads in place,
  keeping its peer state; removed listeners are closed in the master too. When the
  file adds a listener, the master binds it and starts a new generation of workers
  with every socket, then stops the old ones gracefully (what nginx does on every
  reload; peer state starts afresh). A changed ``workers`` count starts or stops
  workers; a changed ``[admin] listen`` moves the admin listener;
- ``SIGTERM``: every worker is sent ``SIGTERM`` and drains (up to
  ``shutdown_timeout``); the master waits for them (killing any still running a few
  seconds later), closes the sockets and exits 0;
- the admin listener (``[admin] listen``) is the master's, and shows every worker's
  state aggregated (:mod:`gateway.master.admin`).

A worker's standard input is a pipe from the master: if the master dies, the workers
see end-of-file and stop. The master's own log and the workers' share the master's
standard output and error (and ``gateway.error_log`` when it is a file).
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import tempfile
import tomllib
from typing import Callable, Optional

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver

from gateway.admin.status import ProcessInfo
from gateway.master.admin import MasterAdmin, MasterAdminSite
from gateway.master.sockets import BindError, SharedSocket, bind
from gateway.master.supervisor import READY_FD, Supervisor, WorkerProcess
from gateway.master.worker import WorkerSpec

__all__ = ["MasterService", "TWISTD", "read_config", "worker_count"]

log = Logger()

#: how a worker is started: twistd, as the master, from this interpreter
TWISTD = "from twisted.scripts.twistd import run; run()"
#: added to ``shutdown_timeout`` before workers still running are killed
KILL_GRACE = 5.0
#: the first inherited listening socket's descriptor number in a worker
FIRST_FD = READY_FD + 1


def worker_count(workers: int) -> int:
    """``gateway.workers`` as a number of processes: ``0`` is one per CPU core."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def read_config(path: str):
    """``(Config, bytes)``: the file's bytes as read once, and their validation (the
    bytes are what workers run). Raises ``ConfigError`` with ``load_config``'s words."""
    from gateway.config import ConfigError, parse_config

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    try:
        data = tomllib.load(io.BytesIO(raw))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: invalid TOML: {e}"]) from None
    return parse_config(data, path), raw


class MasterService(MultiService):
    """Binds the listeners and supervises the worker processes."""

    def __init__(self, config, raw: bytes, reactor, *, twistd_args=(),
                 executable: str = sys.executable,
                 bind: Callable[[str], SharedSocket] = bind,
                 install_signal: Optional[Callable] = signal.signal,
                 log_publisher=globalLogPublisher):
        super().__init__()
        self.config = config
        self.raw = raw
        self.reactor = reactor
        #: twistd options the workers are started with (``--reactor=…``)
        self.twistd_args = list(twistd_args)
        self.executable = executable
        self._bind = bind
        self._install_signal = install_signal
        self._log_publisher = log_publisher
        self._error_log = None
        #: listen description → the master's socket
        self.sockets: dict[str, SharedSocket] = {}
        #: private directory: the configuration copy and the workers' admin sockets
        self.rundir: Optional[str] = None
        self.supervisor = Supervisor(reactor, self._spawn, worker_count(config.gateway.workers))
        self.process = ProcessInfo(reactor.seconds(), config.path)
        self.admin = MasterAdmin(reactor, self.supervisor, self.process, self.reload)
        self.admin_listener = None
        self.stopping = False
        self._terminating = False
        self._admin_listen(config.admin.listen)

    # -- start --------------------------------------------------------------------------

    def privilegedStartService(self):
        # before twistd drops privileges: ports below 1024 stay possible, as in nginx
        if not self.sockets:
            try:
                self.sockets = self._bind_all(self.config.listeners())
            except BindError as e:
                raise SystemExit(f"gateway: cannot listen on {e}") from None
        super().privilegedStartService()

    def _bind_all(self, descriptions) -> dict[str, SharedSocket]:
        bound: dict[str, SharedSocket] = {}
        try:
            for description in descriptions:
                shared = bound[description] = self._bind(description)
                log.info("listening on {description} at {address}",
                         description=description, address=shared.address())
        except BindError:
            for shared in bound.values():
                shared.close()
            raise
        return bound

    def startService(self):
        self._open_error_log(self.config.gateway.error_log)
        if not self.sockets:
            self.privilegedStartService()
        self.rundir = tempfile.mkdtemp(prefix="gateway-")
        self._write_copy()
        self.process.start_time = self.reactor.seconds()
        super().startService()
        if self.admin_listener is not None:
            self.admin_listener.listening.addCallback(self._admin_started)
        log.info("gateway master started: {workers} worker process(es), {listeners} "
                 "listener(s)", workers=self.supervisor.count, listeners=len(self.sockets))
        self.supervisor.start()
        self.reactor.callWhenRunning(self._install_signals)

    def _admin_listen(self, listen: Optional[str]) -> None:
        from gateway.service import ListenerService

        if listen is None:
            self.admin_listener = None
            return
        listener = ListenerService(serverFromString(self.reactor, listen),
                                   MasterAdminSite(self.admin, self.reactor))
        listener.setName(f"admin.listen {listen}")
        self.admin_listener = listener
        listener.setServiceParent(self)       # listens now when the master runs

    def _admin_started(self, port):
        host = port.getHost()
        address = getattr(host, "name", None) or f"{host.host}:{host.port}"
        log.info("admin listener {listen} at {address}",
                 listen=self.config.admin.listen, address=address)
        return port

    def _open_error_log(self, path: str) -> None:
        """``gateway.error_log``: the master's log lines go to the file as well (the
        workers open it themselves)."""
        if self._error_log is not None:
            self._log_publisher.removeObserver(self._error_log)
            self._error_log = None
        if path and path != "-":
            self._error_log = textFileLogObserver(open(path, "a", encoding="utf-8"))
            self._log_publisher.addObserver(self._error_log)

    def _install_signals(self) -> None:
        # after the reactor installed its own: SIGTERM must not be twistd's, which
        # ends the process by the signal; a graceful stop exits 0
        if self._install_signal is None:
            return
        call = self.reactor.callFromThread
        self._install_signal(signal.SIGHUP, lambda *_: call(self.reload))
        self._install_signal(signal.SIGTERM, lambda *_: call(self.terminate))

    # -- workers ---------------------------------------------------------------------------

    def _write_copy(self) -> None:
        copy = os.path.join(self.rundir, "config.toml")
        with open(copy + ".new", "wb") as f:
            f.write(self.raw)
        os.replace(copy + ".new", copy)

    def _spawn(self, worker: WorkerProcess) -> None:
        """Start ``worker``'s process with the current sockets."""
        # stdin: a pipe the worker watches for the master's end; READY_FD: a pipe the
        # worker says "ready" on
        child_fds: dict = {0: "w", 1: 1, 2: 2, READY_FD: "r"}
        listeners = {}
        for number, (description, shared) in enumerate(self.sockets.items(), FIRST_FD):
            child_fds[number] = shared.socket.fileno()
            listeners[description] = number
        # always named: a reload that turns the admin listener on makes the workers
        # open it (``worker_config``), and the master asks them there
        admin = os.path.join(self.rundir, f"worker-{worker.serial}.sock")
        worker.admin = admin
        spec = WorkerSpec(slot=worker.slot, config_copy=os.path.join(self.rundir, "config.toml"),
                          admin=admin, listeners=listeners)
        args = [self.executable, "-c", TWISTD, "-n", "--pidfile=", *self.twistd_args,
                "gateway", "-c", self.config.path, "--worker", spec.to_json()]
        self.reactor.spawnProcess(worker, self.executable, args, env=dict(os.environ),
                                  childFDs=child_fds)

    # -- reload ----------------------------------------------------------------------------

    def reload(self):
        """Validate the file; if valid, apply it to the workers. Returns a
        ``gateway.reload.ReloadResult`` (the admin API's answer, as a worker's)."""
        from gateway.config import ConfigError
        from gateway.reload import ReloadResult

        if self.stopping:
            return ReloadResult(False, ["the gateway is stopping"], refused=True)
        path = self.config.path
        log.info("reloading the configuration from {path}", path=path)
        try:
            config, raw = read_config(path)
        except ConfigError as e:
            for error in e.errors:
                log.error("reload: {path}: {error}", path=path, error=error)
            log.error("reload refused: {count} error(s) in {path}; the running"
                      " configuration stays", count=len(e.errors), path=path)
            return ReloadResult(False, list(e.errors), invalid=True)
        wanted = config.listeners()
        added = [d for d in wanted if d not in self.sockets]
        removed = [d for d in self.sockets if d not in wanted]
        try:
            bound = self._bind_all(added)
        except BindError as e:
            log.error("reload refused: cannot listen on {error}; the running"
                      " configuration stays", error=e)
            return ReloadResult(False, [f"cannot listen on {e}"])
        old = self.config
        self.config, self.raw = config, raw
        self._write_copy()
        closing = [self.sockets.pop(d) for d in removed]
        self.sockets.update(bound)
        count = worker_count(config.gateway.workers)
        changes = [f"listener {d} removed" for d in removed]
        changes += [f"listener {d} added" for d in added]
        if count != self.supervisor.count:
            changes.append(f"workers {self.supervisor.count} -> {count}")
        if added:
            # a worker cannot take a new socket: a new generation gets them all
            changes.append(f"new listeners: {count} new worker process(es) started, "
                           "the old ones drain")
            self.supervisor.replace(count)
        else:
            changes.append("worker processes told to reload")
            self.supervisor.reload()
            self.supervisor.resize(count)
        for shared in closing:
            shared.close()
        errors = []
        if config.admin.listen != old.admin.listen or (
                config.admin.listen is not None and self.admin_listener is None):
            # moved, or one that could not be opened before is tried again
            changes.append("admin listener: %s" % (config.admin.listen or "off"))
            error = self._move_admin(config.admin.listen)
            if error is not None:
                errors.append(error)
        if self.running:
            self._open_error_log(config.gateway.error_log)   # reopened: log rotation
        for line in changes:
            log.info("reload: {change}", change=line)
        return ReloadResult(True, errors, changes)

    def _move_admin(self, listen: Optional[str]) -> Optional[str]:
        """The admin listener on ``listen`` now; the error when it cannot listen."""
        old = self.admin_listener
        if old is not None:
            old.disownServiceParent()
        try:
            self._admin_listen(listen)
        except SystemExit as e:    # ListenerService's one-line bind failure
            log.error("reload: {error}", error=e)
            if self.admin_listener is not None:
                self.admin_listener.disownServiceParent()   # it never listened
            self.admin_listener = None
            return str(e).removeprefix("gateway: ")
        if self.admin_listener is not None:
            self.admin_listener.listening.addCallback(self._admin_started)
        return None

    # -- stop ------------------------------------------------------------------------------

    def terminate(self) -> None:
        """``SIGTERM``: stop the reactor (and so this service) once."""
        if not self._terminating and not self.stopping and self.reactor.running:
            self._terminating = True
            log.info("SIGTERM received: stopping the workers gracefully")
            self.reactor.stop()

    def stopService(self):
        self.stopping = True
        log.info("gateway master stopping: waiting for {count} worker process(es)",
                 count=len(self.supervisor.alive()))
        stopped = [defer.maybeDeferred(super().stopService),
                   self.supervisor.stop(self.config.gateway.shutdown_timeout + KILL_GRACE)]

        def closed(result):
            for shared in self.sockets.values():
                shared.close()
            self.sockets = {}
            if self.rundir is not None:
                shutil.rmtree(self.rundir, ignore_errors=True)
            log.info("gateway master stopped")
            if self._error_log is not None:
                self._log_publisher.removeObserver(self._error_log)
            return None

        return defer.DeferredList(stopped, consumeErrors=True).addCallback(closed)
