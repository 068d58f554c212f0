"""twistd entry point: ``twistd -n gateway -c conf/site.toml [--check]``.

Holds the command-line ``Options`` and a ``makeService`` that loads the configuration
and makes one call into ``gateway.service``. This is the only module that touches the
global reactor: it installs the asyncio reactor when twistd has not installed one
(``--reactor=epoll`` stays possible for configurations without gRPC).
"""
from __future__ import annotations

import sys

from twisted.python import usage


class Options(usage.Options):
    synopsis = "[-c FILE] [--check]"
    longdesc = (
        "Run the gateway from a TOML configuration. With --check, load and validate "
        "the file, print 'configuration ok' or every error, and exit 0 or 1."
    )
    optParameters = [
        ["config", "c", "conf/site.toml", "Path to the TOML configuration file."],
        ["worker", None, None,
         "Internal: set by the master process on the workers it starts (workers > 1)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration and exit (serves nothing)."],
    ]


def _install_reactor():
    if "twisted.internet.reactor" not in sys.modules:
        from gateway.reactor import install

        install()
    from twisted.internet import reactor

    return reactor


def _refuse_grpc_without_asyncio(config, reactor) -> None:
    """gRPC (grpc.aio) shares the reactor's asyncio loop: with ``--reactor=epoll`` (or
    any non-asyncio reactor) a configuration using gRPC stops startup with one line."""
    if config.uses_grpc() and getattr(reactor, "_asyncioEventloop", None) is None:
        raise SystemExit(
            f"gateway: {config.path} uses gRPC (grpc_pass, grpc_servers or a grpc health"
            f" check), which needs the asyncio reactor; run without --reactor"
            f" (this one is {type(reactor).__name__})")


def makeService(options):
    """Load and validate the configuration, then build the service tree (with
    ``workers > 1``, the master process's: :mod:`gateway.master`)."""
    from gateway.config import ConfigError, load_config

    if options["worker"] and not options["check"]:
        from gateway.master.worker import make_worker_service

        return make_worker_service(options["config"], options["worker"], _install_reactor())

    try:
        config = load_config(options["config"])
    except ConfigError as e:
        for error in e.errors:
            print(f"{options['config']}: {error}", file=sys.stderr)
        if options["check"]:
            raise SystemExit(1)
        print("gateway: configuration invalid, not starting", file=sys.stderr)
        raise SystemExit(1)
    if options["check"]:
        from gateway.check import unresolvable_hosts

        problems = unresolvable_hosts(config)
        for problem in problems:
            print(f"{options['config']}: {problem}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print("configuration ok")
        raise SystemExit(0)

    from gateway.master import worker_count

    if worker_count(config.gateway.workers) > 1:
        return _master_service(options)
    reactor = _install_reactor()
    _refuse_grpc_without_asyncio(config, reactor)
    from gateway.reload import ProcessSignals
    from gateway.service import GatewayService

    service = GatewayService(config, reactor)
    # kill -HUP reloads the file in place; kill -TERM stops gracefully and exits 0
    ProcessSignals(service.reload, reactor).setServiceParent(service)
    return service


def _master_service(options):
    """The master of ``workers > 1``: it runs the workers with the same reactor."""
    from gateway.config import ConfigError
    from gateway.master import MasterService, read_config

    try:
        config, raw = read_config(options["config"])   # the bytes the workers will run
    except ConfigError as e:
        for error in e.errors:
            print(f"{options['config']}: {error}", file=sys.stderr)
        raise SystemExit(1)
    parent = getattr(options, "parent", None)
    chosen = parent.get("reactor") if parent is not None else None
    reactor = _install_reactor()
    _refuse_grpc_without_asyncio(config, reactor)   # the workers run the same reactor
    return MasterService(config, raw, reactor,
                         twistd_args=[f"--reactor={chosen}"] if chosen else [])
