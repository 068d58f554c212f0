"""Test bootstrap: integration tests run on the asyncio reactor, as production does.

Unit tests never touch the global reactor (they use task.Clock, MemoryReactor and
StringTransport); integration tests are trial TestCases that return Deferreds, which
trial runs on the reactor installed here.
"""
import sys

if "twisted.internet.reactor" not in sys.modules:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
