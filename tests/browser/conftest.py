"""A real browser on the UIs Ray Serve serves (tests.ray_session deploys them with the demo
orchestrator): Playwright driving the system's Chromium (`apt-get install chromium`; no browser
download). Every request the page makes is recorded, so a test can check none leaves the stack."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.ray_session import ROOT

CHROMIUM = os.environ.get("GPU_ORCH_CHROMIUM", "/usr/bin/chromium")
# Screenshots the README shows (docs/screenshots/ holds the committed copies).
SHOTS = Path(os.environ.get("GPU_ORCH_SCREENSHOTS", ROOT / "build" / "screenshots"))


# Package scope: Playwright's sync API keeps an event loop running in this thread while it is open,
# and tests after these (asyncio.run) need it gone.
@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: install it (apt-get install chromium) or set GPU_ORCH_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Page:
    """A browser tab and the hosts it asked for."""

    def __init__(self, page, base: str):
        self.page = page
        self.base = base
        self.hosts: set[str] = set()
        page.on("request", lambda r: self.hosts.add(urlparse(r.url).netloc or r.url.split(":", 1)[0]))

    def open(self, path: str) -> None:
        self.page.goto(self.base + path, wait_until="load")

    def outside_requests(self) -> set[str]:
        """Hosts other than the stack's own (data: and blob: URLs stay in the page)."""
        own = urlparse(self.base).netloc
        return {h for h in self.hosts if h not in (own, "data", "blob")}

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def tab(browser, ui_apps_deployed):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    t = Page(page, ui_apps_deployed)
    yield t
    ctx.close()
    assert t.outside_requests() == set(), f"the page asked hosts outside the stack: {t.outside_requests()}"
