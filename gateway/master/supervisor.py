"""The master's worker processes: started, watched, restarted, signalled, stopped.

:class:`Supervisor` keeps one worker process per *slot* (``0 … workers-1``). How a
process is started is injected (``spawn(worker)``, which the master implements with
``reactor.spawnProcess`` and the shared sockets), and so is the clock: the rules here
run unchanged on ``task.Clock`` with fake processes.

- A worker that exits while it should be running is started again, as nginx's master
  respawns a worker that died. A worker that had run for ``Backoff.stable`` seconds is
  replaced at once; one that exits sooner waits ``initial``, then twice as long for
  each further quick exit in a row, up to ``maximum``: a worker that cannot start (a
  broken certificate file, a socket path taken) does not make the master spin.
- :meth:`Supervisor.reload` forwards ``SIGHUP`` to every worker (each reloads
  itself); a worker still starting, which would die of the signal, gets it once it
  reports ready.
- :meth:`Supervisor.resize` and :meth:`Supervisor.replace` follow a reload: more or
  fewer slots, or a new generation of workers (started first; the old ones are sent
  ``SIGTERM`` and drain as in a graceful stop).
- :meth:`Supervisor.stop` sends ``SIGTERM`` to every worker and fires when all have
  exited; those still running after ``timeout`` get ``SIGKILL``.

What a worker is told and how its exit is read is :class:`WorkerProcess`'s; the
sockets, the command line and the admin aggregation are the master's.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

__all__ = ["READY_FD", "Backoff", "Supervisor", "WorkerProcess", "describe_exit"]

log = Logger()

#: the descriptor a worker writes ``ready`` on once it listens (a pipe to the master)
READY_FD = 3


class Backoff:
    """How long a slot waits before its worker is started again."""

    def __init__(self, initial: float = 0.25, maximum: float = 30.0, stable: float = 10.0):
        self.initial = initial
        self.maximum = maximum
        self.stable = stable
        #: quick exits in a row
        self.failures = 0

    def delay(self, lived: float) -> float:
        """The wait after a worker that ran ``lived`` seconds exited."""
        if lived >= self.stable:
            self.failures = 0
            return 0.0
        self.failures += 1
        return min(self.maximum, self.initial * 2 ** (self.failures - 1))


def describe_exit(reason) -> str:
    """``exited with code 1`` / ``exited on signal 9`` (nginx's words), from a
    ``ProcessDone``/``ProcessTerminated``."""
    signal = getattr(reason, "signal", None)
    if signal is not None:
        return f"exited on signal {signal}"
    return f"exited with code {getattr(reason, 'exitCode', None) or 0}"


class WorkerProcess(protocol.ProcessProtocol):
    """One worker process. ``state`` is ``starting`` until the worker reports that it
    listens (it writes ``ready`` on descriptor :data:`READY_FD`), then ``running``,
    then ``stopping`` once it was told to stop (retired or shutdown)."""

    def __init__(self, slot: int, serial: int, started: float,
                 on_exit: Callable[["WorkerProcess", object], None]):
        self.slot = slot
        #: unique per process started by this master (names its admin socket)
        self.serial = serial
        self.started = started
        self.state = "starting"
        self.pid: Optional[int] = None
        #: the private admin socket, when the admin listener is on (set by the master)
        self.admin: Optional[str] = None
        #: a reload was asked for before the worker could take SIGHUP
        self.reload_pending = False
        self._on_exit = on_exit

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes):
        if childFD == READY_FD and b"ready" in data and self.state == "starting":
            self.ready()

    def ready(self) -> None:
        """The worker listens and handles its signals."""
        self.state = "running"
        if self.reload_pending:
            self.reload_pending = False
            self.signal("HUP")

    def reload(self) -> None:
        """Forward a reload: ``SIGHUP`` now, or once the worker is ready (until then
        the signal's default action would end it)."""
        if self.state == "running":
            self.signal("HUP")
        elif self.state == "starting":
            self.reload_pending = True

    def signal(self, name: str) -> None:
        """Send signal ``name`` (``"HUP"``, ``"TERM"``, ``"KILL"``), if still running."""
        if self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason):
        self._on_exit(self, reason.value)

    def snapshot(self) -> dict:
        return {"slot": self.slot, "pid": self.pid, "state": self.state,
                "started": self.started}


class Supervisor:
    """Worker processes by slot, restarted with back-off while the master runs."""

    def __init__(self, clock, spawn: Callable[[WorkerProcess], None], count: int,
                 backoff: Callable[[], Backoff] = Backoff):
        self.clock = clock
        self._spawn_process = spawn
        self.count = count
        self._backoff_factory = backoff
        #: the current generation, by slot
        self.workers: dict[int, WorkerProcess] = {}
        #: told to stop (after a resize, a new generation or shutdown), not exited yet
        self.retiring: list[WorkerProcess] = []
        #: slot → the delayed call that starts its worker again
        self.pending: dict = {}
        self.restarts: dict[int, int] = {}
        self.restarts_total = 0
        self.stopping = False
        self._backoffs: dict[int, Backoff] = {}
        self._serial = 0
        self._gone: list[defer.Deferred] = []
        self._kill = None

    # -- starting -----------------------------------------------------------------------

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self._serial += 1
        worker = WorkerProcess(slot, self._serial, self.clock.seconds(), self._exited)
        self.workers[slot] = worker
        try:
            self._spawn_process(worker)
        except Exception as e:
            del self.workers[slot]
            log.error("could not start worker {slot}: {error}", slot=slot, error=e)
            self._schedule(slot, 0.0)
            return
        log.info("started worker process {pid} (worker {slot})", pid=worker.pid, slot=slot)

    def _schedule(self, slot: int, lived: float) -> float:
        backoff = self._backoffs.get(slot)
        if backoff is None:
            backoff = self._backoffs[slot] = self._backoff_factory()
        delay = backoff.delay(lived)
        self.pending[slot] = self.clock.callLater(delay, self._restart, slot)
        return delay

    def _restart(self, slot: int) -> None:
        del self.pending[slot]
        self.restarts[slot] = self.restarts.get(slot, 0) + 1
        self.restarts_total += 1
        self._start(slot)

    # -- exits --------------------------------------------------------------------------

    def _exited(self, worker: WorkerProcess, reason) -> None:
        how = describe_exit(reason)
        worker.state = "exited"
        if worker in self.retiring:
            self.retiring.remove(worker)
            log.info("worker process {pid} {how}", pid=worker.pid, how=how)
        elif self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
            if self.stopping:
                log.info("worker process {pid} {how}", pid=worker.pid, how=how)
            else:
                delay = self._schedule(worker.slot, self.clock.seconds() - worker.started)
                log.warn("worker process {pid} {how}; starting another in {delay}s",
                         pid=worker.pid, how=how, delay=delay)
        self._check_gone()

    def alive(self) -> list[WorkerProcess]:
        """Every worker process not yet exited: the current ones, then retiring ones."""
        return [self.workers[slot] for slot in sorted(self.workers)] + list(self.retiring)

    # -- signals, reload and stop ----------------------------------------------------------

    def signal(self, name: str) -> None:
        """Send ``name`` to every worker of the current generation."""
        for worker in list(self.workers.values()):
            worker.signal(name)

    def reload(self) -> None:
        """Tell every worker of the current generation to reload (``SIGHUP``; a
        worker still starting gets it once ready)."""
        for worker in list(self.workers.values()):
            worker.reload()

    def _retire(self, worker: WorkerProcess) -> None:
        worker.state = "stopping"
        self.retiring.append(worker)
        worker.signal("TERM")

    def _cancel(self, slot: int) -> None:
        call = self.pending.pop(slot, None)
        if call is not None and call.active():
            call.cancel()

    def resize(self, count: int) -> None:
        """Keep ``count`` workers: retire the highest slots, or start new ones."""
        self.count = count
        for slot in list(self.pending):
            if slot >= count:
                self._cancel(slot)
        for slot in sorted(self.workers):
            if slot >= count:
                self._retire(self.workers.pop(slot))
        for slot in range(count):
            if slot not in self.workers and slot not in self.pending:
                self._start(slot)

    def replace(self, count: Optional[int] = None) -> None:
        """A new generation: ``count`` (or as many) new workers are started, then the
        current ones are told to stop (they drain)."""
        if count is not None:
            self.count = count
        old = list(self.workers.values())
        self.workers = {}
        for slot in list(self.pending):
            self._cancel(slot)
        for slot in range(self.count):
            self._start(slot)
        for worker in old:
            self._retire(worker)

    def stop(self, timeout: float) -> defer.Deferred:
        """Tell every worker to stop; the Deferred fires when all have exited. Those
        still running ``timeout`` seconds later are killed."""
        self.stopping = True
        for slot in list(self.pending):
            self._cancel(slot)
        for worker in list(self.workers.values()):
            if worker.state != "stopping":
                worker.state = "stopping"
                worker.signal("TERM")
        d = defer.Deferred()
        self._gone.append(d)
        if self._kill is None:
            self._kill = self.clock.callLater(timeout, self._kill_all)
        self._check_gone()
        return d

    def _kill_all(self) -> None:
        self._kill = None
        for worker in self.alive():
            log.warn("worker process {pid} still running after the shutdown timeout; "
                     "killing it", pid=worker.pid)
            worker.signal("KILL")

    def _check_gone(self) -> None:
        if not self.stopping or self.alive():
            return
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        waiting, self._gone = self._gone, []
        for d in waiting:
            d.callback(None)

    # -- status -------------------------------------------------------------------------------

    def describe(self, worker: WorkerProcess) -> dict:
        """One worker process for the status document."""
        item = worker.snapshot()
        item["restarts"] = self.restarts.get(worker.slot, 0)
        return item

    def waiting(self) -> list[dict]:
        """Every slot waiting for its worker to be started again."""
        return [{"slot": slot, "pid": None, "state": "restarting", "started": None,
                 "restarts": self.restarts.get(slot, 0)} for slot in sorted(self.pending)]

    def snapshot(self) -> list[dict]:
        """Every live worker process, then every slot waiting for a restart."""
        return [self.describe(worker) for worker in self.alive()] + self.waiting()
