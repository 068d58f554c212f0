"""Build script: the metadata is in setup.cfg; this file only adds the compiled hot path.

The modules a proxied request runs through (HTTP/1.1 and HTTP/2 protocols, the proxy,
the upstream client and pool, upstream groups, peers and balancers, the reactor and
transports, the access log, metrics) are compiled with Cython from
their unchanged ``.py`` sources. Nothing in them is Cython-specific: with
``annotation_typing`` off, type annotations stay annotations, so the compiled modules
behave exactly as the Python ones (same classes, same exceptions, the test suite runs
against the compiled build) and cost about a quarter less CPU per request (docs/
architecture.md, "Compiled hot path", has the figures).

Each extension is optional: without a C compiler (or with ``GATEWAY_PURE_PYTHON=1`` in
the environment) the package installs and runs as plain Python.
"""
from __future__ import annotations

import os

from setuptools import setup

#: The compiled modules (paths relative to this file). tests/test_build.py checks that
#: every one exists and that none of the compiled files is older than its source.
HOT_PATH = (
    "gateway/accesslog.py",
    "gateway/deadlines.py",
    "gateway/eagerwrite.py",
    "gateway/metrics.py",
    "gateway/reactor.py",
    "gateway/http/_client_core.py",
    "gateway/http/_h1core.py",
    "gateway/http/_h2core.py",
    "gateway/http/_h2tunnel.py",
    "gateway/http/_serving.py",
    "gateway/http/access.py",
    "gateway/http/client.py",
    "gateway/http/errors.py",
    "gateway/http/exchange.py",
    "gateway/http/h1.py",
    "gateway/http/h2.py",
    "gateway/http/headers.py",
    "gateway/http/host.py",
    "gateway/http/negotiate.py",
    "gateway/http/pool.py",
    "gateway/http/proxy.py",
    "gateway/http/realip.py",
    "gateway/http/routing.py",
    "gateway/http/site.py",
    "gateway/http/spool.py",
    "gateway/http/tunnel.py",
    "gateway/http/uri.py",
    "gateway/http/variables.py",
    "gateway/upstream/group.py",
    "gateway/upstream/peer.py",
    "gateway/upstream/queue.py",
    "gateway/upstream/balancers/hash.py",
    "gateway/upstream/balancers/ip_hash.py",
    "gateway/upstream/balancers/least_conn.py",
    "gateway/upstream/balancers/random.py",
    "gateway/upstream/balancers/round_robin.py",
)

#: Plain Python semantics: annotations are not C types, functions keep their
#: introspection (signatures, ``__name__``), and the language is Python 3.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
}


def ext_modules() -> list:
    if os.environ.get("GATEWAY_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    extensions = cythonize(list(HOT_PATH), compiler_directives=COMPILER_DIRECTIVES,
                           nthreads=os.cpu_count() or 1, quiet=True)
    for extension in extensions:
        # a failed compile leaves that module as Python instead of failing the install
        extension.optional = True
    return extensions


if __name__ == "__main__":
    setup(ext_modules=ext_modules())
