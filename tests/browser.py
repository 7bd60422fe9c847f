"""A headless Chromium that records what a page asks for, for the tests that look at pages as a
reader or an instructor sees them (the built book, formgrader, feedback). Requests that leave the
machine are blocked and listed; so are failed requests and console errors.

Needs Debian's ``chromium`` (or ``$COURSE_CHROMIUM``) and the ``playwright`` package; a test that
lacks either is skipped, or fails where ``COURSE_REQUIRE_BOOK=1`` (CI) requires the browser checks.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def unavailable(reason: str):
    """Skip, or fail where the browser checks are required (CI: COURSE_REQUIRE_BOOK=1)."""
    if os.environ.get("COURSE_REQUIRE_BOOK") == "1":
        pytest.fail(f"{reason} (COURSE_REQUIRE_BOOK=1)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("COURSE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium(scrollbars: bool = False):
    """A headless Chromium (a Playwright ``Browser``) for the ``with`` block. ``scrollbars``: draw
    them as a reader's browser does (Playwright's headless default hides them)."""
    path = find_chromium()
    if path is None:
        unavailable("Chromium is not installed (apt-get install -y chromium, or set COURSE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True,
                                     ignore_default_args=["--hide-scrollbars"] if scrollbars else None)
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 for the ``with`` block; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class PageVisit:
    """One page opened in a fresh browser context, with everything it asked for recorded (later
    navigations of ``page`` are recorded too)."""

    def __init__(self, browser, url: str, viewport: dict | None = None, timeout_ms: float = 60_000):
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.console_errors: list[str] = []
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900},
                                           service_workers="block")
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{m.text} ({m.location.get('url', '')})"))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: r.url not in self.blocked and self.failed.append(
            f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(
            f"{r.url} (HTTP {r.status})"))
        self.response = self.page.goto(url, wait_until="load", timeout=timeout_ms)

    def _route(self, route):
        url = route.request.url
        self.requests.append(url)
        if urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def close(self):
        self.context.close()


def typeset_math(page) -> dict:
    """Wait for MathJax (if the page loads it) and count what it produced."""
    return page.evaluate("""async () => {
        const hasSource = document.querySelector('.math, span.math, div.math') !== null;
        if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            await MathJax.startup.promise;
        }
        await document.fonts.ready;
        return {
            hasSource,
            mathjax: !!(window.MathJax && MathJax.version),
            version: window.MathJax ? MathJax.version : null,
            containers: document.querySelectorAll('mjx-container').length,
            errors: Array.from(document.querySelectorAll('mjx-merror'))
                         .map(e => e.getAttribute('data-mjx-error') || e.textContent),
        };
    }""")
