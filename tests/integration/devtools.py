"""A headless Chromium driven over the DevTools protocol, for the status page test.

:func:`start_browser` spawns Debian's ``chromium`` (``--headless --no-sandbox
--remote-debugging-port=0``) on a URL, reads the port it chose from
``DevToolsActivePort`` in its profile directory, and attaches to the page over one
WebSocket (``wsproto`` on a Twisted connection; flat sessions). :meth:`Page.evaluate`
runs JavaScript in the page and returns its value; :meth:`Page.screenshot` saves a PNG.
The test's reactor keeps running meanwhile: the gateway serves the page in the same
process. Every wait is bounded; the browser is closed (and killed, by its pid, if it
does not go) at cleanup.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from typing import Optional

from twisted.internet import defer, protocol, reactor
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, CloseConnection, Message, Ping, RejectConnection, Request,
    TextMessage,
)

from tests.integration.harness import sleep

STARTUP = 15.0    # seconds: the bound on the browser starting and opening the page
CALL = 10.0       # seconds: the bound on one DevTools call


class DevToolsError(Exception):
    pass


class _Browser(protocol.ProcessProtocol):
    """The chromium process: its stderr (for failure messages) and its end."""

    def __init__(self):
        self.stderr = b""
        self.ended = defer.Deferred()

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-8000:]

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class _Socket(protocol.Protocol):
    """One DevTools WebSocket: JSON commands out, results matched back by id."""

    def __init__(self, host: str, path: str):
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.request = Request(host=host, target=path)
        self.opened = defer.Deferred()
        self.pending: dict[int, defer.Deferred] = {}
        self.next_id = 0
        self._text: list[str] = []

    def connectionMade(self):
        self.transport.write(self.ws.send(self.request))

    def dataReceived(self, data):
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.opened.callback(self)
            elif isinstance(event, RejectConnection):
                self.opened.errback(DevToolsError(f"websocket refused: {event.status_code}"))
            elif isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    message = json.loads("".join(self._text))
                    self._text = []
                    self._dispatch(message)
            elif isinstance(event, Ping):
                self.transport.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.transport.loseConnection()

    def connectionLost(self, reason):
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(DevToolsError("the browser closed the DevTools connection"))

    def _dispatch(self, message: dict) -> None:
        d = self.pending.pop(message.get("id"), None)
        if d is None:
            return          # an event: not used here
        if "error" in message:
            d.errback(DevToolsError(json.dumps(message["error"])))
        else:
            d.callback(message.get("result", {}))

    def call(self, method: str, params: Optional[dict] = None,
             session: Optional[str] = None) -> defer.Deferred:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        d = defer.Deferred()
        self.pending[self.next_id] = d
        self.transport.write(self.ws.send(Message(data=json.dumps(message))))
        return d.addTimeout(CALL, reactor)


class Page:
    """The page the browser opened."""

    def __init__(self, socket: _Socket, session: str):
        self.socket = socket
        self.session = session

    def call(self, method: str, params: Optional[dict] = None) -> defer.Deferred:
        return self.socket.call(method, params, session=self.session)

    async def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = await self.call("Runtime.evaluate",
                                 {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll ``expression`` until it is truthy; its value. Fails after ``timeout``."""
        deadline = reactor.seconds() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError(f"not true after {timeout}s in the browser: {expression}")
            await sleep(0.05)

    async def screenshot(self, path: str) -> bytes:
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(result["data"])
        with open(path, "wb") as f:
            f.write(data)
        return data


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("chromium is not installed: `make test` installs it "
                             "(apt-get install chromium)")
    return path


async def start_browser(testcase, url: str, profile: str, width: int = 1280,
                        height: int = 900) -> Page:
    """Chromium showing ``url``, its profile in ``profile``; closed at cleanup."""
    os.makedirs(profile, exist_ok=True)
    browser = _Browser()
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", url]
    process = reactor.spawnProcess(browser, args[0], args, env=dict(os.environ))
    testcase.addCleanup(_stop, browser, process)

    active = os.path.join(profile, "DevToolsActivePort")
    deadline = reactor.seconds() + STARTUP
    while not _ready(active):
        if browser.ended.called:
            raise AssertionError("chromium exited: " + browser.stderr.decode(errors="replace"))
        if reactor.seconds() > deadline:
            raise AssertionError("chromium did not open its DevTools port: "
                                 + browser.stderr.decode(errors="replace"))
        await sleep(0.05)
    with open(active) as f:
        port, path = f.read().split("\n")[:2]

    socket = _Socket(f"127.0.0.1:{port}", path)
    await protocol.ClientCreator(reactor, lambda: socket).connectTCP(
        "127.0.0.1", int(port), timeout=CALL)
    await socket.opened.addTimeout(CALL, reactor)
    testcase.addCleanup(_close, socket)
    while True:
        targets = (await socket.call("Target.getTargets"))["targetInfos"]
        pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(url)]
        if pages:
            break
        if reactor.seconds() > deadline:
            raise AssertionError(f"no page for {url} among {targets}")
        await sleep(0.05)
    attached = await socket.call("Target.attachToTarget",
                                 {"targetId": pages[0]["targetId"], "flatten": True})
    return Page(socket, attached["sessionId"])


def _ready(path: str) -> bool:
    try:
        with open(path) as f:
            return len(f.read().split("\n")) >= 2
    except FileNotFoundError:
        return False


async def _close(socket: _Socket) -> None:
    if socket.transport is not None and socket.transport.connected:
        try:
            await socket.call("Browser.close")
        except Exception:
            pass          # closing may drop the connection before the answer
        socket.transport.loseConnection()


async def _stop(browser: _Browser, process) -> None:
    """Wait a little for the browser to exit after Browser.close, then kill it (this
    process only, by its pid)."""
    if browser.ended.called:
        return
    try:
        await _ended(browser, 5.0)
    except defer.TimeoutError:
        process.signalProcess("KILL")
        await _ended(browser, 5.0)


def _ended(browser: _Browser, timeout: float) -> defer.Deferred:
    """Fires when the browser process has ended, or fails after ``timeout``."""
    d = defer.Deferred()
    browser.ended.addBoth(lambda result: (d.called or d.callback(None), result)[1])
    return d.addTimeout(timeout, reactor)
