"""The browsers the Node-driven browser tests run in: Chromium (playwright-core, Debian's `chromium`)
and Firefox ESR (puppeteer-core over WebDriver BiDi, Debian's `firefox-esr`; `make browser` and `make
firefox` install them). The Node side is webapp/test/browsers.mjs: its `launch()` reads TEST_BROWSER.

A test runs in both by taking the `browser` parameter and running its node script with
`run_script` (the config as a JSON file after `--config`, the env from `env(browser)`):

    @browsers.each
    def test_x(browser, ...):
        seen = browsers.run_script(WEBAPP / "test" / "x.mjs", {...}, browser, server=server)

and its script launches with `launch()` from webapp/test/browsers.mjs instead of `chromium.launch(...)`
(the one changed line; the Playwright page API it uses stays, see that module's list)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

EXECUTABLES = {"chromium": "chromium", "firefox": "firefox-esr"}

each = pytest.mark.parametrize("browser", list(EXECUTABLES))


def env(browser: str) -> dict[str, str]:
    """The environment for a node script driving `browser`; fails the test when it is not installed."""
    if not shutil.which(EXECUTABLES[browser]):
        pytest.fail(f"{EXECUTABLES[browser]} is needed: `make {'browser' if browser == 'chromium' else 'firefox'}`")
    return {**os.environ, "TEST_BROWSER": browser}


def run_script(script: Path, config: dict, browser: str, *, timeout: float = 240, server: Any = None) -> dict:
    """Runs `node <script> --config <file holding config as JSON>` from the script's package folder
    in `browser` and returns its last stdout line (JSON). A failing script fails the test with the
    end of its stderr and, given the `server` (a ServerProcess), of the server's log. Prints where
    the screenshots went (`config["shots"]`) first, if the script takes some."""
    package = next(p for p in script.parents if (p / "package.json").exists())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{script.stem}.json"
        path.write_text(json.dumps(config))
        run = subprocess.run(
            ["node", str(script), "--config", str(path)],
            cwd=package,
            env=env(browser),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if "shots" in config:
        print(f"screenshots: {config['shots']}")
    log = "" if server is None else "\n" + server.log_text()[-3000:]
    assert run.returncode == 0, run.stderr[-4000:] + log
    return json.loads(run.stdout.strip().splitlines()[-1])
