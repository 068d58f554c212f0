"""Listening sockets shared by worker processes: bound by the master, adopted by workers.

With ``workers > 1`` the master process binds every listen description once, as nginx's
master does, and each worker process inherits the sockets (file descriptors passed at
``spawnProcess``) and accepts on them. This module owns both halves:

- :func:`bind` turns a description (``tcp:PORT:interface=…``, ``tcp6:…``,
  ``unix:PATH``) into a bound, listening, non-blocking socket. The description is parsed
  by Twisted (``serverFromString`` on a ``MemoryReactor``, as the configuration loader
  validates it), so ports, interfaces, backlogs, modes and quoting mean exactly what they
  mean to a single process. :func:`shareable` says whether a description can be shared
  (other endpoint kinds, such as ``ssl:`` or ``systemd:``, cannot: the configuration
  loader refuses them with ``workers > 1``).
- :class:`AdoptedEndpoint` is the worker's endpoint for an inherited socket: its
  ``listen(factory)`` adopts the descriptor, with the same eager-write TCP transports
  the gateway's own ``listenTCP`` builds (:mod:`gateway.eagerwrite`). Stopping an
  adopted port closes only the worker's copy of the socket: it neither shuts the socket
  down (which would stop every process's accepts) nor removes a unix socket's file,
  which the master keeps until it exits.
"""
from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer, tcp, unix
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.testing import MemoryReactor

from gateway.eagerwrite import EagerPort

__all__ = ["AdoptedEndpoint", "BindError", "SharedSocket", "bind", "shareable"]

_KINDS = {TCP4ServerEndpoint: socket.AF_INET, TCP6ServerEndpoint: socket.AF_INET6,
          UNIXServerEndpoint: socket.AF_UNIX}


class BindError(Exception):
    """A description that cannot be bound; the message is the operator's."""


def _parse(description: str):
    return serverFromString(MemoryReactor(), description)


def shareable(description: str) -> bool:
    """Whether the master can bind ``description`` and hand it to workers."""
    try:
        return type(_parse(description)) in _KINDS
    except Exception:
        return False


@dataclass
class SharedSocket:
    """One bound listen description, owned by the master."""

    description: str
    socket: socket.socket
    #: for a unix socket: the file the master removes when it closes the socket
    path: Optional[str] = None
    #: ``lockfile=1`` (Twisted's default for unix:): ``PATH.lock``, held while open
    lock: Optional[object] = None

    @property
    def family(self) -> int:
        return self.socket.family

    def address(self) -> str:
        """Where it listens, for the log (``127.0.0.1:8080``, ``[::1]:8080``, a path)."""
        name = self.socket.getsockname()
        if self.family == socket.AF_UNIX:
            return name if isinstance(name, str) else name.decode("utf-8", "replace")
        if self.family == socket.AF_INET6:
            return f"[{name[0]}]:{name[1]}"
        return f"{name[0]}:{name[1]}"

    def close(self) -> None:
        self.socket.close()
        if self.path is not None:
            try:
                if stat.S_ISSOCK(os.stat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
        if self.lock is not None:
            self.lock.unlock()
            self.lock = None


def bind(description: str) -> SharedSocket:
    """Bind and listen on ``description`` (non-blocking, close-on-exec: it reaches
    workers only through ``spawnProcess``'s descriptor map). ``BindError`` names the
    reason, as nginx's ``bind() to … failed``."""
    endpoint = _parse(description)
    family = _KINDS.get(type(endpoint))
    if family is None:
        raise BindError(f"{description}: only tcp:, tcp6: and unix: listeners can be "
                        "shared by worker processes")
    sock = socket.socket(family, socket.SOCK_STREAM)
    path = lock = None
    try:
        if family == socket.AF_UNIX:
            path = endpoint._address
            if endpoint._wantPID:
                lock = _lock_unix_socket(path)
            sock.bind(path)
            os.chmod(path, endpoint._mode)
        else:
            # as Twisted's own ports: reuse a port left in TIME_WAIT by a previous run
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(_tcp_address(family, endpoint._interface, endpoint._port))
        sock.listen(endpoint._backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if lock is not None:
            lock.unlock()
        raise BindError(f"{description}: {e.strerror or e}") from None
    return SharedSocket(description, sock, path, lock)


def _tcp_address(family: int, interface: str, port: int) -> tuple:
    if family == socket.AF_INET6:
        # numeric only, as Twisted's TCP6 ports (a name would block on DNS)
        info = socket.getaddrinfo(interface or "::", port, socket.AF_INET6,
                                  socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        return info[0][4]
    return (interface, port)


def _lock_unix_socket(path: str):
    """``lockfile=1``: as Twisted's unix ports, take ``PATH.lock`` and remove a socket
    file left by a process that is gone; returns the lock."""
    from twisted.python.lockfile import FilesystemLock

    lock = FilesystemLock(path + ".lock")
    if not lock.lock():
        raise OSError(0, "Cannot acquire lock")
    if not lock.clean:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.remove(path)
        except OSError:
            pass
    return lock


# -- the worker's side ------------------------------------------------------------------


class SharedUNIXPort(unix.Port):
    """A unix listening port on a socket the master owns."""

    _shouldShutdown = False

    def connectionLost(self, reason):
        # the socket file is the master's: skip unix.Port's unlink
        tcp.Port.connectionLost(self, reason)


def _adopt(reactor, fd: int, description: str, factory):
    """An ``IListeningPort`` accepting on the inherited ``fd``, bound from
    ``description``. On a real reactor the port holds a copy of the descriptor and
    ``fd`` itself is closed."""
    from twisted.internet.posixbase import PosixReactorBase

    endpoint = _parse(description)
    family = _KINDS[type(endpoint)]
    if not isinstance(reactor, PosixReactorBase):
        # test fakes (MemoryReactor) record the adoption
        return reactor.adoptStreamPort(fd, family, factory)
    if family == socket.AF_UNIX:
        port = SharedUNIXPort._fromListeningDescriptor(reactor, fd, factory)
        # startListening listens and chmods again: with the description's values
        port.backlog = endpoint._backlog
        port.mode = endpoint._mode
    else:
        # tcp.Port leaves a pre-existing socket un-shutdown when it stops; EagerPort
        # gives the connections the same eager writes as the gateway's listenTCP
        port = EagerPort._fromListeningDescriptor(reactor, fd, family, factory)
    port.startListening()
    os.close(fd)
    return port


class AdoptedEndpoint:
    """A server endpoint for the socket the master bound for ``description`` and
    passed as ``fd`` (``IStreamServerEndpoint``: ``listen(factory)`` → Deferred
    ``IListeningPort``). One ``listen`` per endpoint."""

    def __init__(self, reactor, fd: int, description: str):
        self.reactor = reactor
        self.fd = fd
        self.description = description

    def listen(self, factory) -> defer.Deferred:
        if self.fd is None:
            return defer.fail(RuntimeError("the inherited socket was already adopted"))
        try:
            port = _adopt(self.reactor, self.fd, self.description, factory)
        except Exception:
            return defer.fail()
        self.fd = None
        return defer.succeed(port)
