"""The status page in a real headless browser (Debian's chromium, DevTools protocol).

The page is opened once; a peer taken down through the API must show as down in the
same page (it fetches /status itself), and the page must still be the one opened (a
marker set in its window survives: no reload). Assertions are on the DOM; the
screenshots are kept in a ``gateway-status-page-*`` directory of the system's
temporary directory for a person to look at (the browser profile is removed).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from urllib.parse import quote

from twisted.trial import unittest

from tests.integration.devtools import start_browser
from tests.integration.harness import get, start_backends, start_gateway
from tests.integration.test_admin import admin

CONFIG = """
[gateway]
access_log = false
[admin]
listen = "tcp:0:interface=127.0.0.1"
[upstreams.app]
servers = [ { address = "{b0}", weight = 2 }, { address = "{b1}" },
            { address = "{b2}", backup = true } ]
[upstreams.api]
balance = "least_conn"
servers = [ { address = "{b1}", max_conns = 10 } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app" },
              { path = "/api/", proxy_pass = "http://api" } ]
"""

ROWS = """[...document.querySelectorAll("tr[data-peer]")].map(row =>
    [row.dataset.upstream, row.dataset.peer, row.querySelector(".state").textContent,
     row.querySelector(".requests").textContent])"""


class StatusPage(unittest.TestCase):
    timeout = 30

    async def test_the_page_shows_every_peer_and_follows_a_peer_taken_down(self):
        backends = start_backends(self, "a", "b", "c")
        service, port = await start_gateway(self, CONFIG, backends)
        admin_port = service.admin_listener.port.getHost().port
        a, b, c = (backend.address for backend in backends)
        for _ in range(3):
            await get(port, "/")
        directory = tempfile.mkdtemp(prefix="gateway-status-page-")
        profile = os.path.join(directory, "profile")
        self.addCleanup(shutil.rmtree, profile, ignore_errors=True)  # after the browser
        url = f"http://127.0.0.1:{admin_port}/"

        page = await start_browser(self, url, profile)
        await page.wait_for('document.querySelectorAll("tr[data-peer]").length == 4')
        self.assertEqual(await page.evaluate(ROWS), [
            ["app", a, "up", "2"], ["app", b, "up", "1"], ["app", c, "up", "0"],
            ["api", b, "up", "0"],
        ])
        self.assertEqual(
            await page.evaluate('[...document.querySelectorAll("section.upstream h2")]'
                                '.map(h => h.firstChild.textContent)'),
            ["app", "api"])
        await page.screenshot(os.path.join(directory, "status-before.png"))
        await page.evaluate("window.openedOnce = 'yes'")

        status, _ = await admin(admin_port, "PATCH",
                                "/api/upstreams/app/servers/" + quote(a, safe=""),
                                {"down": True})
        self.assertEqual(status, 200)
        await get(port, "/")          # served by b: its count moves too
        await page.wait_for(
            f'document.querySelector(\'tr[data-upstream="app"][data-peer="{a}"] .state\')'
            '.textContent == "down"')
        await page.wait_for(
            f'document.querySelector(\'tr[data-upstream="app"][data-peer="{b}"] .requests\')'
            '.textContent == "2"')
        self.assertEqual(await page.evaluate("window.openedOnce"), "yes")   # not reloaded
        self.assertEqual(await page.evaluate(ROWS), [
            ["app", a, "down", "2"], ["app", b, "up", "2"], ["app", c, "up", "0"],
            ["api", b, "up", "0"],
        ])
        self.assertEqual(
            await page.evaluate(
                f'document.querySelector(\'tr[data-peer="{a}"] .state\').className'),
            "state state-down")
        png = await page.screenshot(os.path.join(directory, "status-down.png"))
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")

        # a phone's width: one card per peer, nothing wider than the screen
        await page.call("Emulation.setDeviceMetricsOverride",
                        {"width": 390, "height": 844, "deviceScaleFactor": 2,
                         "mobile": True})
        await page.wait_for("window.innerWidth == 390")
        self.assertEqual(await page.evaluate(
            'getComputedStyle(document.querySelector("thead")).display'), "none")
        self.assertEqual(await page.evaluate(
            'getComputedStyle(document.querySelector("tr[data-peer] td")).display'), "flex")
        self.assertLessEqual(
            await page.evaluate("document.documentElement.scrollWidth"), 390)
        await page.screenshot(os.path.join(directory, "status-phone.png"))
