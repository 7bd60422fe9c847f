"""The built book, as a reader's browser sees it: every chapter page loads from a local server,
its math is typeset by the site's own MathJax, its figures show, nothing is fetched from the web
and the browser console stays clean.

Needs a built book (``./course book``) and Chromium (Debian package ``chromium``). Without either
the tests are skipped, with the reason; ``COURSE_REQUIRE_BOOK=1`` (CI) turns the skip into a
failure. ``COURSE_BOOK_SCREENSHOTS=DIR`` also saves a full-page screenshot of every page in DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import PageVisit, chromium, serve, typeset_math, unavailable

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
# Pages that must contain typeset math (a page whose source has math is checked anyway).
MUST_HAVE_MATH = {"book/numerics.html"}

pytestmark = pytest.mark.slow


def _chapter_pages() -> list[str]:
    """Every built page of the book's table of contents (all of it lives under book/)."""
    if not (HTML / "index.html").is_file():
        return []
    return sorted(p.relative_to(HTML).as_posix() for p in (HTML / "book").rglob("*.html")
                  if "_sources" not in p.parts)


@pytest.fixture(scope="module")
def site_url():
    if not (HTML / "index.html").is_file():
        unavailable(f"the book is not built ({HTML / 'index.html'} is missing; run ./course book)")
    with serve(HTML) as url:
        yield url


@pytest.fixture(scope="module")
def browser(site_url):
    with chromium() as browser:
        yield browser


@pytest.fixture(params=_chapter_pages() or ["(no built book)"])
def visit(request, site_url, browser):
    if request.param == "(no built book)":
        unavailable("no chapter page under _build/html/book")
    v = PageVisit(browser, f"{site_url}/{request.param}")
    v.path = request.param
    yield v
    v.close()


def test_page_loads_offline_with_math_and_figures(visit):
    page = visit.page
    assert visit.response is not None and visit.response.status == 200, (
        f"{visit.path}: HTTP {visit.response and visit.response.status}")
    math = typeset_math(page)
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
