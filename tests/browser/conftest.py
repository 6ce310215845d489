"""Real headless Chromium for the console's browser tests: Debian's package at
/usr/bin/chromium (the Makefile installs it), driven by Playwright — whose own browser
downloads are never used. A missing Chromium fails the tests; it never skips them.

Screenshots go to ``$LANECORE_SCREENSHOT_DIR`` when it is set (``make screenshots``
sets it to docs/console/), else to the test run's temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LANECORE_CHROMIUM", "/usr/bin/chromium")
#: What this machine's closed network needs (no background connections, no QUIC),
#: and what running as root in CI needs (no sandbox).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """Chromium for one module. (Playwright's sync API runs an event loop on this
    thread while it is open: kept for the whole session, it broke every later test
    that calls asyncio.run.)"""
    assert Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK), (
        f"the browser tests need Chromium at {CHROMIUM}: `make test` installs Debian's "
        f"chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    d = os.environ.get("LANECORE_SCREENSHOT_DIR")
    path = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
