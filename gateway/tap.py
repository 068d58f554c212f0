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


def makeService(options):
    """Load and validate the configuration, then build the service tree."""
    from gateway.config import ConfigError, load_config

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

    reactor = _install_reactor()
    from gateway.service import GatewayService

    return GatewayService(config, reactor)
