"""The built book, as a reader's browser sees it: every chapter page loads from a local server,
its math is typeset by the site's own MathJax, its figures show, nothing is fetched from the web
and the browser console stays clean.

Needs a built book (``./course book``) and Chromium (Debian package ``chromium``). Without either
the tests are skipped, with the reason; ``COURSE_REQUIRE_BOOK=1`` (CI) turns the skip into a
failure. ``COURSE_BOOK_SCREENSHOTS=DIR`` also saves a full-page screenshot of every page in DIR.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
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
# Pages that must contain typeset math (a page whose source has math is checked anyway).
MUST_HAVE_MATH = {"book/numerics.html"}

pytestmark = pytest.mark.slow


def _unavailable(reason: str):
    """Skip, or fail when the book is required (CI: COURSE_REQUIRE_BOOK=1)."""
    if os.environ.get("COURSE_REQUIRE_BOOK") == "1":
        pytest.fail(f"{reason} (COURSE_REQUIRE_BOOK=1)", pytrace=False)
    pytest.skip(reason)


def _chapter_pages() -> list[str]:
    """Every built page of the book's table of contents (all of it lives under book/)."""
    if not (HTML / "index.html").is_file():
        return []
    return sorted(p.relative_to(HTML).as_posix() for p in (HTML / "book").rglob("*.html")
                  if "_sources" not in p.parts)


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("COURSE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def site_url():
    if not (HTML / "index.html").is_file():
        _unavailable(f"the book is not built ({HTML / 'index.html'} is missing; run ./course book)")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser(site_url):
    chromium = _find_chromium()
    if chromium is None:
        _unavailable("Chromium is not installed (apt-get install -y chromium, or set COURSE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageVisit:
    """One page opened in a fresh browser context, with everything it asked for recorded."""

    def __init__(self, browser, url: str):
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.console_errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900},
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
        self.response = self.page.goto(url, wait_until="load", timeout=60_000)

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


@pytest.fixture(params=_chapter_pages() or ["(no built book)"])
def visit(request, site_url, browser):
    if request.param == "(no built book)":
        _unavailable("no chapter page under _build/html/book")
    v = PageVisit(browser, f"{site_url}/{request.param}")
    v.path = request.param
    yield v
    v.close()


def _typeset_math(page) -> dict:
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


def test_page_loads_offline_with_math_and_figures(visit):
    page = visit.page
    assert visit.response is not None and visit.response.status == 200, (
        f"{visit.path}: HTTP {visit.response and visit.response.status}")
    math = _typeset_math(page)
    page.wait_for_load_state("networkidle")
    images = page.evaluate("""() => Array.from(document.images).map(i => ({
        src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}))""")
    shots = os.environ.get("COURSE_BOOK_SCREENSHOTS")
    if shots:
        out = Path(shots) / (visit.path.replace("/", "_").removesuffix(".html") + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)

    problems = []
    if visit.blocked:
        problems.append("requests that left localhost (blocked):\n  " + "\n  ".join(visit.blocked))
    if visit.failed:
        problems.append("requests that failed:\n  " + "\n  ".join(visit.failed))
    if visit.console_errors:
        problems.append("console errors:\n  " + "\n  ".join(visit.console_errors))
    broken = [i["src"] for i in images if not i["ok"]]
    if broken:
        problems.append("images that did not load:\n  " + "\n  ".join(broken))
    if (math["hasSource"] or visit.path in MUST_HAVE_MATH) and not math["containers"]:
        problems.append(f"math not typeset: no mjx-container (MathJax loaded: {math['mathjax']})")
    if visit.path in MUST_HAVE_MATH and not math["hasSource"]:
        problems.append("this page should contain math and has none")
    if math["errors"]:
        problems.append("TeX errors: " + "; ".join(math["errors"]))
    assert not problems, f"{visit.path}:\n" + "\n".join(problems)


def test_every_toc_page_was_built(site_url):
    """The root page redirects into the book and every chapter of the table of contents exists."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    stack = list(toc.get("parts", [])) + list(toc.get("chapters", []))
    while stack:
        entry = stack.pop()
        if "file" in entry:
            files.append(entry["file"])
        stack.extend(entry.get("chapters", []) + entry.get("sections", []))
    missing = [f for f in files if not (HTML / f"{f}.html").is_file()]
    assert not missing, f"chapters in _toc.yml without a built page: {missing}"
    assert f'{toc["root"]}.html' in (HTML / "index.html").read_text()
