"""The browsers the Node-driven browser tests run in: Chromium (playwright-core, Debian's `chromium`)
and Firefox ESR (puppeteer-core over WebDriver BiDi, Debian's `firefox-esr`; `make browser` and `make
firefox` install them). The Node side is webapp/test/browsers.mjs: its `launch()` reads TEST_BROWSER.

A test runs in both by taking the `browser` parameter and handing the node subprocess its env:

    @browsers.each
    def test_x(browser, ...):
        subprocess.run(["node", "test/x.mjs"], env=browsers.env(browser), ...)

and its script launches with `launch()` from webapp/test/browsers.mjs instead of `chromium.launch(...)`
(the one changed line; the Playwright page API it uses stays, see that module's list)."""

from __future__ import annotations

import os
import shutil

import pytest

EXECUTABLES = {"chromium": "chromium", "firefox": "firefox-esr"}

each = pytest.mark.parametrize("browser", list(EXECUTABLES))


def env(browser: str) -> dict[str, str]:
    """The environment for a node script driving `browser`; fails the test when it is not installed."""
    if not shutil.which(EXECUTABLES[browser]):
        pytest.fail(f"{EXECUTABLES[browser]} is needed: `make {'browser' if browser == 'chromium' else 'firefox'}`")
    return {**os.environ, "TEST_BROWSER": browser}
