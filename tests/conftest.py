"""Test bootstrap: integration tests run on the asyncio reactor, as production does.

Unit tests never touch the global reactor (they use task.Clock, MemoryReactor and
StringTransport); integration tests are trial TestCases that return Deferreds, which
trial runs on the reactor installed here.
"""
import sys

if "twisted.internet.reactor" not in sys.modules:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def pytest_sessionstart(session):
    # an edited hot-path module whose compiled file was not rebuilt would be tested as
    # the old code (Python prefers the compiled module): refuse to run at all
    from tests.build_state import stale

    lines = stale()
    if lines:
        import pytest

        pytest.exit("stale compiled modules (run `make compiled`, or `make test`):\n  "
                    + "\n  ".join(lines), returncode=3)
