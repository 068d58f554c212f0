"""gateway.master: restart back-off, signal forwarding, reload, fd passing, aggregation.

Everything here runs on ``task.Clock`` / ``MemoryReactorClock`` with fake worker
processes (``FakeProcess`` records the signals it is sent; a test ends a process by
calling ``processEnded``). Real processes and sockets are in
tests/integration/test_workers.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import tempfile

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import AdminSettings
from gateway.master import MasterService, read_config, worker_count
from gateway.master.admin import MasterAdmin
from gateway.master.aggregate import merge_metrics, merge_status
from gateway.master.sockets import AdoptedEndpoint, BindError
from gateway.master.supervisor import Backoff, Supervisor, describe_exit
from gateway.master.worker import (
    ParentWatch,
    WorkerSpec,
    admin_description,
    inherited_endpoints,
    stop_once_on_signals,
    worker_config,
)


# -- fakes --------------------------------------------------------------------------


class FakeProcess:
    """A worker process's transport: a pid and the signals it was sent."""

    def __init__(self, pid: int):
        self.pid = pid
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name):
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class Spawner:
    """``spawn(worker)`` for a Supervisor: fake processes with pids 101, 102, …"""

    def __init__(self):
        self.started = []
        self.failures = 0
        self.next_pid = 101
        #: whether new workers report ready at once
        self.ready = True

    def __call__(self, worker):
        if self.failures:
            self.failures -= 1
            raise OSError("cannot fork")
        transport = FakeProcess(self.next_pid)
        self.next_pid += 1
        worker.makeConnection(transport)
        if self.ready:
            worker.childDataReceived(3, b"ready\n")
        self.started.append(worker)

    def pids(self, workers):
        return [w.pid for w in workers]


def end(worker, code=None, signal_=None):
    """The worker's process exits (by ``signal_`` or with ``code``)."""
    worker.transport.ended = True
    if signal_ is None and not code:
        reason = ProcessDone(0)
    else:
        reason = ProcessTerminated(exitCode=code, signal=signal_)
    worker.processEnded(Failure(reason))


# -- back-off -------------------------------------------------------------------------


class BackoffTests(SynchronousTestCase):
    def test_quick_exits_in_a_row_double_the_wait_up_to_the_maximum(self):
        backoff = Backoff(initial=0.25, maximum=2.0, stable=10.0)
        self.assertEqual([backoff.delay(1.0) for _ in range(6)],
                         [0.25, 0.5, 1.0, 2.0, 2.0, 2.0])

    def test_a_worker_that_ran_long_enough_is_replaced_at_once_and_resets_the_count(self):
        backoff = Backoff(initial=0.25, maximum=30.0, stable=10.0)
        backoff.delay(0.1)
        backoff.delay(0.1)
        self.assertEqual(backoff.delay(10.0), 0.0)
        self.assertEqual(backoff.delay(0.1), 0.25)

    def test_exit_descriptions_use_nginx_words(self):
        self.assertEqual(describe_exit(ProcessTerminated(signal=9)), "exited on signal 9")
        self.assertEqual(describe_exit(ProcessTerminated(exitCode=2)), "exited with code 2")
        self.assertEqual(describe_exit(ProcessDone(0)), "exited with code 0")


# -- the supervisor -----------------------------------------------------------------------


class SupervisorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.spawn = Spawner()
        self.supervisor = Supervisor(self.clock, self.spawn, 2)
        self.supervisor.start()

    def current(self):
        return [self.supervisor.workers[s] for s in sorted(self.supervisor.workers)]

    def test_start_runs_one_worker_per_slot(self):
        self.assertEqual([(w.slot, w.pid, w.state) for w in self.current()],
                         [(0, 101, "running"), (1, 102, "running")])

    def test_a_worker_that_dies_is_started_again_after_the_back_off(self):
        """Killed 1 s after it started (a quick exit): the slot waits 0.25 s, then a
        new process takes it; the other worker is untouched."""
        self.clock.advance(1.0)
        end(self.current()[0], signal_=9)
        self.assertEqual(sorted(self.supervisor.workers), [1])
        self.assertEqual(self.supervisor.snapshot()[-1],
                         {"slot": 0, "pid": None, "state": "restarting", "started": None,
                          "restarts": 0})
        self.clock.advance(0.24)
        self.assertEqual(len(self.spawn.started), 2)
        self.clock.advance(0.01)
        self.assertEqual([(w.slot, w.pid) for w in self.current()], [(0, 103), (1, 102)])
        self.assertEqual((self.supervisor.restarts, self.supervisor.restarts_total),
                         ({0: 1}, 1))

    def test_a_crash_loop_backs_off_instead_of_spinning(self):
        """Every new worker of slot 0 exits at once: the waits double (0.25, 0.5, 1,
        2 s), so 4 restarts take 3.75 s, not a busy loop."""
        waits = []
        for _ in range(4):
            worker = self.supervisor.workers[0]
            end(worker, code=1)
            waits.append(self.supervisor.pending[0].getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
        self.assertEqual(waits, [0.25, 0.5, 1.0, 2.0])
        self.assertEqual(self.supervisor.restarts_total, 4)
        self.assertEqual(self.clock.seconds(), 3.75)

    def test_a_worker_that_ran_for_long_is_replaced_at_once(self):
        self.clock.advance(60.0)
        end(self.current()[1], signal_=11)
        self.clock.advance(0)
        self.assertEqual([(w.slot, w.pid) for w in self.current()], [(0, 101), (1, 103)])

    def test_a_worker_that_cannot_be_started_is_retried_with_back_off(self):
        self.spawn.failures = 2
        end(self.current()[0], code=1)
        self.clock.advance(0.25)       # the restart fails to fork
        self.assertNotIn(0, self.supervisor.workers)
        self.clock.advance(0.49)
        self.assertNotIn(0, self.supervisor.workers)
        self.clock.advance(0.01)       # fails again: now 1 s
        self.clock.advance(1.0)
        self.assertEqual(self.supervisor.workers[0].pid, 103)

    def test_signal_is_forwarded_to_every_running_worker(self):
        self.supervisor.signal("HUP")
        self.assertEqual([w.transport.signals for w in self.current()], [["HUP"], ["HUP"]])

    def test_a_reload_reaches_a_starting_worker_once_it_is_ready(self):
        """Before it reports ready a worker has no SIGHUP handler (the signal would
        end it): its reload waits until it says ready."""
        self.spawn.ready = False
        self.supervisor.resize(3)
        starting = self.supervisor.workers[2]
        self.assertEqual(starting.state, "starting")
        self.supervisor.reload()
        self.assertEqual([w.transport.signals for w in self.current()],
                         [["HUP"], ["HUP"], []])
        starting.childDataReceived(3, b"ready\n")
        self.assertEqual((starting.state, starting.transport.signals), ("running", ["HUP"]))

    def test_stop_terms_every_worker_and_fires_when_all_have_exited(self):
        first, second = self.current()
        stopped = self.supervisor.stop(timeout=10.0)
        self.assertEqual([first.transport.signals, second.transport.signals],
                         [["TERM"], ["TERM"]])
        end(first)
        self.assertNoResult(stopped)
        end(second, signal_=15)
        self.successResultOf(stopped)
        self.clock.advance(100)
        self.assertEqual(len(self.spawn.started), 2)      # nothing restarted
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_workers_still_running_after_the_timeout_are_killed(self):
        first, second = self.current()
        stopped = self.supervisor.stop(timeout=10.0)
        end(first)
        self.clock.advance(9.9)
        self.assertEqual(second.transport.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(second.transport.signals, ["TERM", "KILL"])
        end(second, signal_=9)
        self.successResultOf(stopped)

    def test_stop_cancels_a_pending_restart(self):
        end(self.current()[0], signal_=9)
        stopped = self.supervisor.stop(timeout=10.0)
        end(self.current()[0])
        self.successResultOf(stopped)
        self.clock.advance(60)
        self.assertEqual(len(self.spawn.started), 2)

    def test_resize_down_retires_the_highest_slots_and_does_not_restart_them(self):
        second = self.current()[1]
        self.supervisor.resize(1)
        self.assertEqual((second.state, second.transport.signals), ("stopping", ["TERM"]))
        end(second)
        self.clock.advance(60)
        self.assertEqual([w.pid for w in self.current()], [101])
        self.assertEqual(self.supervisor.retiring, [])

    def test_resize_up_starts_the_new_slots(self):
        self.supervisor.resize(3)
        self.assertEqual([(w.slot, w.pid) for w in self.current()],
                         [(0, 101), (1, 102), (2, 103)])

    def test_replace_starts_a_new_generation_then_terms_the_old_one(self):
        old = self.current()
        self.supervisor.replace(3)
        self.assertEqual([w.pid for w in self.current()], [103, 104, 105])
        self.assertEqual([w.transport.signals for w in old], [["TERM"], ["TERM"]])
        self.assertEqual([w.pid for w in self.supervisor.retiring], [101, 102])
        self.supervisor.signal("HUP")        # only the current generation
        self.assertEqual([w.transport.signals for w in old], [["TERM"], ["TERM"]])
        for worker in old:
            end(worker)
        self.clock.advance(60)
        self.assertEqual(len(self.spawn.started), 5)


# -- the master service -------------------------------------------------------------------


class ProcessReactor(MemoryReactorClock):
    """A MemoryReactorClock that records ``spawnProcess`` (fake processes)."""

    def __init__(self):
        super().__init__()
        self.spawned = []
        self.running = True
        self.stopped = 0

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=0, childFDs=None):
        transport = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((protocol, executable, list(args), childFDs))
        protocol.makeConnection(transport)
        protocol.childDataReceived(3, b"ready\n")
        return transport

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def stop(self):
        self.stopped += 1


class FakeSocket:
    def __init__(self, fileno: int):
        self._fileno = fileno

    def fileno(self):
        return self._fileno


class FakeShared:
    """A SharedSocket stand-in: a descriptor number, closed or not."""

    def __init__(self, description, fileno):
        self.description = description
        self.socket = FakeSocket(fileno)
        self.closed = False

    def address(self):
        return f"fake:{self.socket.fileno()}"

    def close(self):
        self.closed = True


CONFIG = """
[gateway]
workers = {workers}
shutdown_timeout = "2s"
access_log = false
[admin]
listen = false
{servers}
"""
SERVER = """
[[servers]]
listen = "{listen}"
locations = [{{ path = "/", return = {{ status = 200, body = "ok" }} }}]
"""


class MasterTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = ProcessReactor()
        # a short path under the system temp dir (unix socket paths are limited to
        # 108 bytes), removed after the test
        self.dir = tempfile.mkdtemp(prefix="gw-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "site.toml")
        self.bound = {}
        self.fds = iter(range(50, 100))
        self.handlers = {}

    def write(self, workers=2, listens=("tcp:8080",)):
        servers = "".join(SERVER.format(listen=listen) for listen in listens)
        with open(self.path, "w") as f:
            f.write(CONFIG.format(workers=workers, servers=servers))

    def bind(self, description):
        if description == "tcp:9":
            raise BindError(f"{description}: Address already in use")
        shared = self.bound[description] = FakeShared(description, next(self.fds))
        return shared

    def start(self, **kwargs):
        config, raw = read_config(self.path)
        master = MasterService(config, raw, self.reactor, bind=self.bind,
                               install_signal=lambda signum, handler:
                               self.handlers.__setitem__(signum, handler),
                               executable="/usr/bin/python3", **kwargs)
        master.privilegedStartService()
        master.startService()
        self.addCleanup(lambda: os.path.isdir(master.rundir or "") and
                        __import__("shutil").rmtree(master.rundir))
        for hook in self.reactor.whenRunningHooks:
            hook[0](*hook[1], **hook[2])
        return master

    def test_workers_inherit_every_listening_socket_and_their_spec(self):
        """Each worker is ``twistd -n gateway -c FILE --worker SPEC`` with the master's
        sockets mapped to descriptors 4, 5…, stdin a pipe from the master and
        descriptor 3 a pipe back to it (for "ready")."""
        self.write(listens=("tcp:8080", "unix:/run/gw.sock"))
        master = self.start(twistd_args=["--reactor=epoll"])
        self.assertEqual(len(self.reactor.spawned), 2)
        protocol, executable, args, child_fds = self.reactor.spawned[1]
        self.assertEqual(executable, "/usr/bin/python3")
        self.assertEqual(args[:9], ["/usr/bin/python3", "-c",
                                    "from twisted.scripts.twistd import run; run()",
                                    "-n", "--pidfile=", "--reactor=epoll", "gateway", "-c",
                                    self.path])
        self.assertEqual(args[9], "--worker")
        spec = WorkerSpec.from_json(args[10])
        # the private admin socket is named even with [admin] listen off: a reload
        # that turns it on makes the worker open it there
        admin = os.path.join(master.rundir, "worker-2.sock")
        self.assertEqual(spec, WorkerSpec(
            slot=1, config_copy=os.path.join(master.rundir, "config.toml"), admin=admin,
            listeners={"tcp:8080": 4, "unix:/run/gw.sock": 5}))
        self.assertEqual(child_fds, {0: "w", 1: 1, 2: 2, 3: "r", 4: 50, 5: 51})
        with open(spec.config_copy, "rb") as f:
            self.assertEqual(f.read(), master.raw)
        self.assertEqual(worker_config(master.config, spec).admin.listen, None)
        on = dataclasses.replace(master.config, admin=AdminSettings(listen="tcp:9901"))
        self.assertEqual(worker_config(on, spec).admin.listen, admin_description(admin))

    def test_workers_zero_is_one_per_core(self):
        self.assertEqual(worker_count(0), os.cpu_count())
        self.assertEqual(worker_count(3), 3)

    def test_sighup_with_an_invalid_file_changes_nothing(self):
        self.write()
        master = self.start()
        with open(self.path, "a") as f:
            f.write("[upstreams.app]\nservers = []\n")
        self.handlers[signal.SIGHUP](signal.SIGHUP, None)
        workers = [p for p, *_ in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [[], []])
        result = master.reload()
        self.assertEqual((result.applied, result.status, result.errors), (False, 422, [
            "upstreams.app.servers: at least one server is required"]))
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_sighup_with_a_valid_file_is_forwarded_and_the_copy_updated(self):
        self.write()
        master = self.start()
        self.write(workers=2)
        with open(self.path, "a") as f:
            f.write("# edited\n")
        self.handlers[signal.SIGHUP](signal.SIGHUP, None)
        workers = [p for p, *_ in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [["HUP"], ["HUP"]])
        with open(os.path.join(master.rundir, "config.toml")) as f:
            self.assertTrue(f.read().endswith("# edited\n"))

    def test_a_reload_that_adds_a_listener_starts_a_new_generation(self):
        """nginx's reload: the new socket is bound, new workers get every socket, the
        old ones are told to stop and drain."""
        self.write(listens=("tcp:8080",))
        master = self.start()
        self.write(listens=("tcp:8080", "tcp:8081"))
        result = master.reload()
        self.assertEqual((result.status, result.changes), (200, [
            "listener tcp:8081 added",
            "new listeners: 2 new worker process(es) started, the old ones drain"]))
        old = [p for p, *_ in self.reactor.spawned[:2]]
        self.assertEqual([w.transport.signals for w in old], [["TERM"], ["TERM"]])
        new = self.reactor.spawned[2:]
        self.assertEqual([WorkerSpec.from_json(args[-1]).listeners for _, _, args, _ in new],
                         [{"tcp:8080": 4, "tcp:8081": 5}] * 2)

    def test_a_reload_that_removes_a_listener_closes_the_masters_socket(self):
        self.write(listens=("tcp:8080", "tcp:8081"))
        master = self.start()
        self.write(listens=("tcp:8080",))
        master.reload()
        self.assertEqual((self.bound["tcp:8080"].closed, self.bound["tcp:8081"].closed),
                         (False, True))
        workers = [p for p, *_ in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [["HUP"], ["HUP"]])
        self.assertEqual(list(master.sockets), ["tcp:8080"])

    def test_a_reload_whose_new_listener_cannot_be_bound_changes_nothing(self):
        self.write(listens=("tcp:8080",))
        master = self.start()
        self.write(listens=("tcp:8080", "tcp:9"))
        result = master.reload()
        self.assertEqual((result.applied, result.errors), (False, [
            "cannot listen on tcp:9: Address already in use"]))
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(list(master.sockets), ["tcp:8080"])

    def test_a_reload_changing_the_worker_count_starts_or_retires_workers(self):
        self.write(workers=2)
        master = self.start()
        self.write(workers=3)
        master.reload()
        self.assertEqual(sorted(master.supervisor.workers), [0, 1, 2])
        self.write(workers=1)
        master.reload()
        self.assertEqual(sorted(master.supervisor.workers), [0])
        self.assertEqual([w.state for w in master.supervisor.retiring],
                         ["stopping", "stopping"])

    def test_an_admin_listener_that_cannot_listen_is_reported_and_tried_again(self):
        from twisted.internet.error import CannotListenError

        refused = {9}
        listen_tcp = self.reactor.listenTCP

        def listenTCP(port, factory, backlog=50, interface=""):
            if port in refused:
                raise CannotListenError(interface, port, OSError("Address already in use"))
            return listen_tcp(port, factory, backlog, interface)

        self.reactor.listenTCP = listenTCP
        self.write()
        master = self.start()
        with open(self.path) as f:
            text = f.read()
        text = text.replace(
            "[admin]\nlisten = false", '[admin]\nlisten = "tcp:9:interface=127.0.0.1"')
        with open(self.path, "w") as f:
            f.write(text)
        result = master.reload()
        self.assertEqual((result.applied, result.status, result.errors), (True, 500, [
            "cannot listen on admin.listen tcp:9:interface=127.0.0.1: Address already"
            " in use"]))
        self.assertIsNone(master.admin_listener)

        refused.clear()         # the same file again, once the port is free
        result = master.reload()
        self.assertEqual((result.ok, result.changes[-1]), (
            True, "admin listener: tcp:9:interface=127.0.0.1"))
        self.assertEqual(self.reactor.tcpServers[-1][0], 9)
        self.assertIs(master.getServiceNamed("admin.listen tcp:9:interface=127.0.0.1"),
                      master.admin_listener)

    def test_sigterm_stops_the_reactor_and_the_stop_waits_for_the_workers(self):
        self.write()
        master = self.start()
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.reactor.stopped, 1)
        stopped = master.stopService()
        workers = [p for p, *_ in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [["TERM"], ["TERM"]])
        self.assertNoResult(stopped)
        for worker in workers:
            end(worker)
        self.successResultOf(stopped)
        self.assertTrue(self.bound["tcp:8080"].closed)
        self.assertFalse(os.path.exists(master.rundir))
        self.assertEqual(master.reload().status, 503)

    def test_workers_are_killed_shutdown_timeout_plus_grace_after_a_stop(self):
        self.write()
        master = self.start()
        stopped = master.stopService()
        workers = [p for p, *_ in self.reactor.spawned]
        self.reactor.advance(2.0 + 5.0)
        self.assertEqual([w.transport.signals for w in workers],
                         [["TERM", "KILL"], ["TERM", "KILL"]])
        for worker in workers:
            end(worker, signal_=9)
        self.successResultOf(stopped)


# -- the worker's side --------------------------------------------------------------------


class AdoptingReactor(MemoryReactor):
    """Records ``adoptStreamPort`` for every family (MemoryReactor refuses AF_UNIX)."""

    def adoptStreamPort(self, fileno, addressFamily, factory):
        self.adoptedPorts.append((fileno, addressFamily, factory))
        return object()


class WorkerSideTests(SynchronousTestCase):
    def test_spec_round_trips_through_json(self):
        spec = WorkerSpec(slot=3, config_copy="/tmp/g/config.toml", admin="/tmp/g/w.sock",
                          listeners={"tcp:8080:interface=127.0.0.1": 3})
        self.assertEqual(WorkerSpec.from_json(spec.to_json()), spec)

    def test_a_worker_serves_its_admin_on_the_private_socket_only(self):
        from gateway.config.model import Config, GatewaySettings

        config = Config(path="/x.toml", gateway=GatewaySettings(workers=2),
                        admin=AdminSettings(), upstreams={}, servers=())
        spec = WorkerSpec(slot=0, config_copy="c", admin="/tmp/a:b/worker-1.sock")
        self.assertEqual(worker_config(config, spec).admin,
                         AdminSettings(listen="unix:/tmp/a\\:b/worker-1.sock:mode=600"))
        off = Config(path="/x.toml", gateway=GatewaySettings(workers=2),
                     admin=AdminSettings(listen=None), upstreams={}, servers=())
        self.assertEqual(worker_config(off, spec).admin, AdminSettings(listen=None))
        self.assertEqual(admin_description("/run/w.sock"), "unix:/run/w.sock:mode=600")

    def test_an_inherited_socket_is_adopted_with_its_family_once(self):
        reactor = AdoptingReactor()
        spec = WorkerSpec(slot=0, config_copy="c", listeners={
            "tcp:8080": 3, "tcp6:8080": 4, "unix:/run/gw.sock": 5})
        endpoints = inherited_endpoints(spec, reactor)
        factory = Factory()
        for endpoint in endpoints.values():
            self.successResultOf(endpoint.listen(factory))
        self.assertEqual(reactor.adoptedPorts, [
            (3, socket.AF_INET, factory), (4, socket.AF_INET6, factory),
            (5, socket.AF_UNIX, factory)])
        self.failureResultOf(endpoints["tcp:8080"].listen(factory), RuntimeError)

    def test_a_repeated_stop_signal_stops_the_worker_once(self):
        """SIGTERM from systemd's control group and then from the master: one stop."""
        reactor = ProcessReactor()
        handlers = {}
        stop_once_on_signals(reactor, install=handlers.__setitem__)
        self.assertEqual(sorted(handlers), sorted([signal.SIGTERM, signal.SIGINT]))
        handlers[signal.SIGINT](signal.SIGINT, None)
        handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(reactor.stopped, 1)

    def test_a_worker_notices_its_master_is_gone_by_end_of_file(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        reactor = MemoryReactor()
        gone = []
        watch = ParentWatch(reactor, read, lambda: gone.append(True))
        watch.start()
        self.assertIn(watch, reactor.getReaders())
        watch.doRead()            # nothing to read yet: still watching
        self.assertEqual(gone, [])
        os.close(write)
        watch.doRead()
        self.assertEqual(gone, [True])
        self.assertNotIn(watch, reactor.getReaders())


# -- aggregation ------------------------------------------------------------------------------


def peer(name, **fields):
    base = {"name": name, "address": name, "backup": False, "state": "up", "weight": 2,
            "effective_weight": 2, "active": 0, "max_conns": 0, "fails": 0,
            "requests": 0, "failures": 0, "healthy": True, "health_check": None,
            "last_error": None}
    base.update(fields)
    return base


def worker_status(connections, requests, peers):
    return {"gateway": {"pid": 1, "connections": connections, "tunnels": 0,
                        "requests": requests},
            "upstreams": {"app": {"name": "app", "balance": "round_robin", "queue": None,
                                  "peers": peers}}}


class AggregateTests(SynchronousTestCase):
    def test_status_sums_counters_and_keeps_the_most_serious_peer_state(self):
        master = {"pid": 10, "version": "1", "config": "/x", "start_time": 0.0,
                  "now": 5.0, "uptime": 5.0}
        first = worker_status(2, 10, [
            peer("a", active=1, requests=6, failures=1, fails=1, state="failed",
                 effective_weight=1, last_error={"text": "refused", "time": 3.0}),
            peer("b", requests=4)])
        second = worker_status(1, 7, [
            peer("a", active=2, requests=5, health_check={"passed": True, "reason": None,
                                                            "latency": 0.01},
                 last_error={"text": "timed out", "time": 4.0}),
            peer("b", requests=2, state="down")])
        entries = [({"slot": 0, "pid": 11, "state": "running", "started": 1.0,
                     "restarts": 0}, first),
                   ({"slot": 1, "pid": 12, "state": "running", "started": 1.0,
                     "restarts": 2}, second),
                   ({"slot": 2, "pid": None, "state": "restarting", "started": None,
                     "restarts": 1}, None)]
        document = merge_status(master, entries)
        gateway = document["gateway"]
        self.assertEqual((gateway["pid"], gateway["connections"], gateway["requests"]),
                         (10, 3, 17))
        self.assertEqual([(w["pid"], w["answered"], w.get("requests")) for w in
                          gateway["workers"]], [(11, True, 10), (12, True, 7),
                                                (None, False, None)])
        a, b = document["upstreams"]["app"]["peers"]
        self.assertEqual(
            {k: a[k] for k in ("state", "active", "requests", "failures", "fails",
                               "effective_weight", "weight", "last_error", "health_check")},
            {"state": "failed", "active": 3, "requests": 11, "failures": 1, "fails": 1,
             "effective_weight": 1, "weight": 2,
             "last_error": {"text": "timed out", "time": 4.0},
             "health_check": {"passed": True, "reason": None, "latency": 0.01}})
        self.assertEqual(a["workers"], [
            {"worker": 0, "state": "failed", "active": 1, "requests": 6, "failures": 1,
             "effective_weight": 1},
            {"worker": 1, "state": "up", "active": 2, "requests": 5, "failures": 0,
             "effective_weight": 2}])
        self.assertEqual((b["state"], b["requests"]), ("down", 6))

    def test_metrics_sum_samples_and_keep_the_masters_process_series(self):
        def text(pid, requests, weight, up):
            return (
                "# HELP gateway_info Build and process information.\n"
                "# TYPE gateway_info gauge\n"
                f'gateway_info{{version="1",pid="{pid}"}} 1\n'
                "# HELP gateway_http_requests_total Client requests.\n"
                "# TYPE gateway_http_requests_total counter\n"
                f'gateway_http_requests_total{{server="s",location="/",status="200"}} '
                f"{requests}\n"
                "# HELP gateway_upstream_effective_weight W.\n"
                "# TYPE gateway_upstream_effective_weight gauge\n"
                f'gateway_upstream_effective_weight{{upstream="app",peer="a"}} {weight}\n'
                "# HELP gateway_upstream_state S.\n"
                "# TYPE gateway_upstream_state gauge\n"
                f'gateway_upstream_state{{upstream="app",peer="a",state="up"}} {up}\n'
                "# HELP gateway_upstream_response_seconds R.\n"
                "# TYPE gateway_upstream_response_seconds histogram\n"
                f'gateway_upstream_response_seconds_bucket{{upstream="app",peer="a",'
                f'le="+Inf"}} {requests}\n'
                f'gateway_upstream_response_seconds_sum{{upstream="app",peer="a"}} 0.5\n'
            )
        master = ("# HELP gateway_info Build and process information.\n"
                  "# TYPE gateway_info gauge\n"
                  'gateway_info{version="1",pid="10"} 1\n')
        merged = merge_metrics([text(11, 3, 2.0, 1), text(12, 4, 1.5, 0)], master,
                               workers=2, restarts=1)
        self.assertEqual(merged, (
            "# HELP gateway_info Build and process information.\n"
            "# TYPE gateway_info gauge\n"
            'gateway_info{version="1",pid="10"} 1\n'
            "# HELP gateway_http_requests_total Client requests.\n"
            "# TYPE gateway_http_requests_total counter\n"
            'gateway_http_requests_total{server="s",location="/",status="200"} 7\n'
            "# HELP gateway_upstream_effective_weight W.\n"
            "# TYPE gateway_upstream_effective_weight gauge\n"
            'gateway_upstream_effective_weight{upstream="app",peer="a"} 1.5\n'
            "# HELP gateway_upstream_state S.\n"
            "# TYPE gateway_upstream_state gauge\n"
            'gateway_upstream_state{upstream="app",peer="a",state="up"} 1\n'
            "# HELP gateway_upstream_response_seconds R.\n"
            "# TYPE gateway_upstream_response_seconds histogram\n"
            'gateway_upstream_response_seconds_bucket{upstream="app",peer="a",le="+Inf"} 7\n'
            'gateway_upstream_response_seconds_sum{upstream="app",peer="a"} 1.0\n'
            "# HELP gateway_workers Worker processes running now.\n"
            "# TYPE gateway_workers gauge\n"
            "gateway_workers 2\n"
            "# HELP gateway_worker_restarts_total Worker processes started again after "
            "one exited unexpectedly.\n"
            "# TYPE gateway_worker_restarts_total counter\n"
            "gateway_worker_restarts_total 1\n"))


class FakeClient:
    """WorkerClient stand-in: canned answers by socket path, and the requests seen."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []

    def request(self, path, method, uri, body=None, content_type=None):
        self.requests.append((path, method, uri, body))
        answer = self.answers.get((path, uri))
        if answer is None:
            return defer.fail(ConnectionRefusedError())
        return defer.succeed(answer)


class MasterAdminTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.spawn = Spawner()
        self.supervisor = Supervisor(self.clock, self.spawn, 2)
        self.supervisor.start()
        for worker in self.supervisor.workers.values():
            worker.admin = f"/run/w{worker.slot}.sock"

    def admin(self, answers):
        from gateway.admin.status import ProcessInfo

        client = FakeClient(answers)
        return MasterAdmin(self.clock, self.supervisor,
                           ProcessInfo(0.0, "/x.toml", pid=10, version="1"),
                           reload=lambda: {}, client=client), client

    def test_status_lists_a_worker_that_does_not_answer(self):
        doc = json.dumps(worker_status(1, 5, [peer("a", requests=5)])).encode()
        admin, _ = self.admin({("/run/w0.sock", "/status"): (200, doc)})
        document = self.successResultOf(admin.status())
        self.assertEqual([(w["slot"], w["answered"]) for w in
                          document["gateway"]["workers"]], [(0, True), (1, False)])
        self.assertEqual(document["upstreams"]["app"]["peers"][0]["requests"], 5)

    def test_a_change_goes_to_every_worker_and_a_read_to_the_first(self):
        uri = "/api/upstreams/app/servers/a"
        ok = (200, b'{"name": "a", "down": true}')
        admin, client = self.admin({("/run/w0.sock", uri): ok, ("/run/w1.sock", uri): ok})
        self.assertEqual(self.successResultOf(
            admin.api("PATCH", uri, b'{"down": true}', b"application/json")),
            (200, {"name": "a", "down": True}))
        self.assertEqual(self.successResultOf(admin.api("GET", uri, b"", None)),
                         (200, {"name": "a", "down": True}))
        self.assertEqual([(path, method, body) for path, method, _, body in client.requests],
                         [("/run/w0.sock", "PATCH", b'{"down": true}'),
                          ("/run/w1.sock", "PATCH", b'{"down": true}'),
                          ("/run/w0.sock", "GET", None)])

    def test_workers_answering_differently_is_a_502_listing_each(self):
        uri = "/api/upstreams/app/servers/a"
        admin, _ = self.admin({("/run/w0.sock", uri): (200, b'{"name": "a"}')})
        status, document = self.successResultOf(
            admin.api("PATCH", uri, b'{"down": true}', b"application/json"))
        self.assertEqual(status, 502)
        self.assertEqual([(w["worker"], w["status"]) for w in document["error"]["workers"]],
                         [(0, 200), (1, None)])
