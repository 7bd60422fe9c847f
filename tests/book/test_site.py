"""The built book, as a reader's browser sees it: every chapter page loads from a local server,
its math is typeset by the site's own MathJax, its figures show, nothing is fetched from the web
and the browser console stays clean; and the page reads well at the column width of a desktop
browser (1280 x 900): printed output fits the column, code that does not fit scrolls with a visible
scrollbar, display equations fit, figures are drawn large enough for their text to be read, no raw
Sphinx role leaks into the text, and the landing page links every chapter of ``_toc.yml``.

Needs a built book (``./course book``) and Chromium (Debian package ``chromium``). Without either
the tests are skipped, with the reason; ``COURSE_REQUIRE_BOOK=1`` (CI) turns the skip into a
failure. A full-page screenshot of every page is saved under ``_build/screenshots/`` (for humans to
look at; CI keeps it as an artefact), or in ``COURSE_BOOK_SCREENSHOTS=DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from course_lib.book import toc_files
from tests.browser import LOCAL_HOSTS, PageVisit, chromium, serve, typeset_math, unavailable

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
# Pages that must contain typeset math (a page whose source has math is checked anyway).
MUST_HAVE_MATH = {"book/numerics.html"}
# A desktop browser window; the article column is what is left beside the two sidebars.
VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOTS = Path(os.environ.get("COURSE_BOOK_SCREENSHOTS") or ROOT / "_build" / "screenshots")
# Legibility of figures: matplotlib writes text of FIGURE_FONT_PT points (its default size) and a
# PNG's pHYs chunk holds the figure's dpi, so the browser's scaling tells how tall that text is drawn.
# Below MIN_LABEL_PX CSS pixels (the body text is 16 px) a label is guesswork.
FIGURE_FONT_PT = 10
MIN_LABEL_PX = 8.0
CSS_PX_PER_INCH = 96
PAGE_TIMEOUT_MS = 180_000

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
    with chromium(scrollbars=True) as browser:  # scrollbars as a reader's browser draws them
        yield browser


class BookVisit(PageVisit):
    """A page of the book at the reader's window size, its math typeset and the network idle."""

    def __init__(self, browser, url: str):
        # Generous waits: on a busy 2-core machine, typesetting a long page can take over a minute.
        super().__init__(browser, url, viewport=VIEWPORT, timeout_ms=PAGE_TIMEOUT_MS)
        self.math = typeset_math(self.page)
        self.page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)

    def screenshot(self, directory: Path) -> Path:
        """The whole page as one PNG. Taken with a window as tall as the page, not with Playwright's
        ``full_page``, which hides every scrollbar of the page for the rest of the visit."""
        out = directory / (self.path.replace("/", "_").removesuffix(".html") + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        height = self.page.evaluate("document.documentElement.scrollHeight")
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        try:
            self.page.screenshot(path=str(out))
        finally:
            self.page.set_viewport_size(VIEWPORT)
        return out


@pytest.fixture(scope="module", params=_chapter_pages() or ["(no built book)"])
def visit(request, site_url, browser):
    """One visit per page, shared by the page's tests; its full-page screenshot is saved first."""
    if request.param == "(no built book)":
        unavailable("no chapter page under _build/html/book")
    v = BookVisit(browser, f"{site_url}/{request.param}")
    v.path = request.param
    v.layout = v.page.evaluate(_LAYOUT_PROBE)     # measured at the reader's window size, before the screenshot
    v.screenshot(SCREENSHOTS)
    yield v
    v.close()


def test_page_loads_offline_with_math_and_figures(visit):
    page, math = visit.page, visit.math
    assert visit.response is not None and visit.response.status == 200, (
        f"{visit.path}: HTTP {visit.response and visit.response.status}")
    images = page.evaluate("""() => Array.from(document.images).map(i => ({
        src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}))""")

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


# -- the page at the column width ---------------------------------------------------------------------
# What the browser measures, at the reader's window size. The column is the article's content box.
# A block of code or output (a <pre>) overflows when its text, laid out on unbroken lines, reaches past
# the nearest box that clips it (or past the column). It scrolls visibly when a box between the text
# and the column has overflow-x auto/scroll and a scrollbar that is drawn at all times: one that takes
# height in this browser (Playwright's headless default, which hides scrollbars, is switched off) and
# is styled (::-webkit-scrollbar), which Blink and WebKit draw even on systems whose own scrollbars
# only show while scrolling (macOS, phones). Printed output must fit without scrolling; code may scroll,
# also code that a cell displays as its result.
_LAYOUT_PROBE = r"""() => {
    const article = document.querySelector('article.bd-article') || document.querySelector('main');
    const cs = getComputedStyle(article);
    const box = article.getBoundingClientRect();
    const column = {left: box.left + parseFloat(cs.paddingLeft), right: box.right - parseFloat(cs.paddingRight)};
    column.width = column.right - column.left;
    const firstLine = el => (el.textContent || '').trim().split('\n')[0].slice(0, 90);
    const scrollbar = el => {
        const s = getComputedStyle(el);
        const height = el.offsetHeight - el.clientHeight - parseFloat(s.borderTopWidth) - parseFloat(s.borderBottomWidth);
        const styled = getComputedStyle(el, '::-webkit-scrollbar').height !== 'auto';
        return {height, styled, visible: height > 0 && styled};
    };

    const blocks = [];
    for (const pre of article.querySelectorAll('pre')) {
        // Printed output (a stream, a plain-text result, a traceback), not code that a cell displays.
        const output = pre.closest('.cell_output .output:is(.stream, .stderr, .text_plain, .traceback)') !== null;
        const textRight = pre.getBoundingClientRect().left + pre.scrollWidth;
        let clipRight = column.right, scrolls = false, cutBy = null;
        for (let el = pre; el && el !== article; el = el.parentElement) {
            const s = getComputedStyle(el);
            if (s.overflowX === 'visible') continue;
            clipRight = Math.min(clipRight, el.getBoundingClientRect().left + el.clientLeft + el.clientWidth);
            if (el.scrollWidth <= el.clientWidth + 1) continue;
            const bar = scrollbar(el);
            if ((s.overflowX === 'auto' || s.overflowX === 'scroll') && bar.visible) {
                scrolls = true;
            } else if (!cutBy) {
                cutBy = `<${el.tagName.toLowerCase()} class="${el.className}"> (overflow-x: ${s.overflowX}; `
                    + `scrollbar ${bar.height} px high, ${bar.styled ? 'styled' : 'the system\'s'})`;
            }
        }
        const excess = Math.round(textRight - clipRight);
        if (excess > 1) {
            blocks.push({output, scrolls, excess, cutBy, line: firstLine(pre),
                         width: Math.round(pre.scrollWidth), column: Math.round(column.width)});
        }
    }

    // Tables must fit the column: the theme puts a wide table in a box that scrolls, but with no
    // scrollbar drawn a reader sees its last columns cut off.
    const tables = [];
    for (const table of article.querySelectorAll('table')) {
        const r = table.getBoundingClientRect();
        if (r.width > column.width + 1 || r.right > column.right + 1) {
            const header = Array.from(table.querySelectorAll('th'), th => th.textContent.trim()).join(' | ');
            tables.push({width: Math.round(r.width), column: Math.round(column.width), header: header.slice(0, 80)});
        }
    }

    const equations = [];
    for (const c of article.querySelectorAll('mjx-container[display="true"]')) {
        const r = (c.querySelector('mjx-math') || c).getBoundingClientRect();
        if (r.width > column.width + 1 || r.right > column.right + 1 || r.left < column.left - 1) {
            equations.push({width: Math.round(r.width), column: Math.round(column.width),
                            text: (c.textContent || '').slice(0, 80)});
        }
    }

    const images = Array.from(article.querySelectorAll('img'), img => ({
        src: img.currentSrc || img.src, naturalWidth: img.naturalWidth,
        renderedWidth: img.getBoundingClientRect().width}));

    // A role left in text: ":class:" followed by a backtick, or by the code element that Markdown
    // made of the backticked target.
    const roles = [];
    const role = /(?:^|[\s(\[])(:(?:[a-z]+:)?[a-z]+:)(`|\s*$)/;
    const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, {acceptNode: n =>
        n.parentElement.closest('pre, code, kbd, samp, mjx-container, script, style, .math')
            ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const m = n.data.match(role);
        if (!m) continue;
        const next = n.nextSibling;
        const codeNext = next && next.nodeType === 1 && (next.matches('code, .pre') || next.querySelector('code'));
        if (m[2] === '`' || codeNext) {
            roles.push((n.data + (next ? next.textContent : '')).trim().slice(-100));
        }
    }

    const streams = [];
    for (const out of article.querySelectorAll('.cell_output')) {
        const boxes = out.querySelectorAll(':scope > .output.stream, :scope > .output.stderr');
        if (boxes.length > 1) {
            streams.push(Array.from(boxes, b => `${b.classList.contains('stderr') ? 'stderr' : 'stdout'}: ${firstLine(b)}`));
        }
    }
    return {column, blocks, tables, equations, images, roles, streams};
}"""


@pytest.fixture(scope="module")
def layout(visit) -> dict:
    return visit.layout


def test_printed_output_fits_the_column_and_code_scrolls_visibly(visit, layout):
    """Output is formatted to the column; a code line that does not fit scrolls with a scrollbar."""
    problems = []
    for b in layout["blocks"]:
        where = f"{b['excess']} px too wide ({b['width']} px of text, column {b['column']} px)"
        if b["output"]:
            problems.append(f"printed output wider than the column, {where}: {b['line']!r}"
                            + ("" if b["scrolls"] else f"; cut off by {b['cutBy']}"))
        elif not b["scrolls"]:
            problems.append(f"code cut off without a visible scrollbar, {where}, by {b['cutBy']}: {b['line']!r}")
    assert not problems, (f"{visit.path}: blocks that do not fit (wrap the printed text, or shorten "
                          "its columns):\n  " + "\n  ".join(problems))


def test_tables_fit_the_column(visit, layout):
    wide = [f"{t['width']} px in a {t['column']} px column: {t['header']!r}" for t in layout["tables"]]
    assert not wide, (f"{visit.path}: tables wider than the column (their last columns are hidden; let long "
                      "code in the cells wrap, or shorten them):\n  " + "\n  ".join(wide))


def test_display_equations_fit_the_column(visit, layout):
    """MathJax 3 does not break lines: a long display equation must be split by hand (aligned)."""
    wide = [f"{e['width']} px in a {e['column']} px column: {e['text']!r}" for e in layout["equations"]]
    assert not wide, (f"{visit.path}: display equations wider than the column (split them with "
                      "\\begin{aligned} ... \\\\ ...):\n  " + "\n  ".join(wide))


def _png_dpi(path: Path) -> float | None:
    """The resolution a PNG declares (its pHYs chunk; matplotlib writes the figure's dpi), or None."""
    from PIL import Image

    with Image.open(path) as image:
        dpi = image.info.get("dpi")
    return float(dpi[0]) if dpi and dpi[0] > 1 else None


def test_figures_are_legible_at_the_column_width(visit, layout, site_url):
    """A figure of W inches drawn over R CSS pixels shows its text at R / W px per inch: matplotlib's
    default 10-pt labels are then 10 / 72 * R / W px high, and must stay at least MIN_LABEL_PX."""
    illegible = []
    for image in layout["images"]:
        path = HTML / urlsplit(image["src"]).path.lstrip("/")
        if not path.is_file() or not image["naturalWidth"]:
            continue  # not a local file: test_page_loads_offline_with_math_and_figures reports it
        dpi = _png_dpi(path) if path.suffix.lower() == ".png" else None
        inches = image["naturalWidth"] / (dpi or CSS_PX_PER_INCH)
        px_per_inch = image["renderedWidth"] / inches
        label_px = FIGURE_FONT_PT / 72 * px_per_inch
        if label_px < MIN_LABEL_PX:
            illegible.append(f"{path.name}: {inches:.1f} in wide{'' if dpi else ' (no dpi, 96 assumed)'}, "
                             f"drawn {image['renderedWidth']:.0f} px wide: {FIGURE_FONT_PT}-pt text at "
                             f"{label_px:.1f} px (this column fits figures up to "
                             f"{layout['column']['width'] * FIGURE_FONT_PT / 72 / MIN_LABEL_PX:.1f} in)")
    assert not illegible, (f"{visit.path}: figures whose text is too small to read at the column width "
                           "(draw them narrower, or split them):\n  " + "\n  ".join(illegible))


def test_no_raw_sphinx_role_in_the_text(visit, layout):
    assert not layout["roles"], (f"{visit.path}: Sphinx roles shown as raw text (a docstring rendered as "
                                 "Markdown?):\n  " + "\n  ".join(layout["roles"]))


def test_each_cell_prints_into_one_box(visit, layout):
    """A cell's printed output is one box: nb_merge_streams joins its prints into one, so a second box is
    a write to stderr (a library warning that leaked into the page)."""
    split = ["\n    ".join(boxes) for boxes in layout["streams"]]
    assert not split, (f"{visit.path}: cells whose printed output is split into several boxes (is "
                       "nb_merge_streams on? does the cell write to stderr?):\n  " + "\n  ".join(split))


def test_landing_page_links_every_chapter(browser, site_url):
    """The landing page's own text (not only the sidebar) links every chapter of _toc.yml."""
    root, chapters = toc_files(ROOT / "_toc.yml")
    v = PageVisit(browser, f"{site_url}/{root}.html")
    try:
        hrefs = v.page.evaluate("""() => Array.from(
            document.querySelectorAll('article.bd-article a[href]'), a => a.href)""")
    finally:
        v.close()
    linked = {urlsplit(h).path.lstrip("/") for h in hrefs if urlsplit(h).hostname in LOCAL_HOSTS}
    missing = [c for c in chapters if f"{c}.html" not in linked]
    assert not missing, f"{root}.html does not link these chapters of _toc.yml: {missing}"


def test_every_toc_page_was_built(site_url):
    """The root page redirects into the book and every chapter of the table of contents exists."""
    root, chapters = toc_files(ROOT / "_toc.yml")
    missing = [f for f in [root, *chapters] if not (HTML / f"{f}.html").is_file()]
    assert not missing, f"chapters in _toc.yml without a built page: {missing}"
    assert f"{root}.html" in (HTML / "index.html").read_text()
