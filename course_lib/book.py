"""What the book's pages print and generate: output that fits the text column, and tables made from the
package and the table of contents, so that they cannot go stale.

- :func:`print_wrapped`: a label and a value (a list, a dict, a long string), wrapped to
  :data:`COLUMN` characters, the width of a printed line that fits the book's text column.
- :func:`exercise_table`: a chapter's exercises (id, function, what it asks, points), from the exercise
  registry (:mod:`course_lib.exercises`) and the first paragraph of each exercise's docstring.
- :func:`chapter_map`: the chapters of the book's ``_toc.yml``, each linked, with its module and its
  exercises; the landing page shows it.
- :class:`PageClock`: what executing a page cost, printed by its last cell and glued for the prose that
  states it.

The tables are Markdown for ``IPython.display.Markdown``; a code cell that shows one renders it with
``mystnb: markdown_format: myst`` so that its links become links between the book's pages.
"""

from __future__ import annotations

import pprint
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from course_lib.exercises import Exercise, all_exercises, stub

# A Sphinx cross-reference in a docstring, ":class:`~course_lib.language_model.CourseLMForCausalLM`"
# (optionally with a domain, ":py:func:`...`"), and its target.
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<([^`>]*)>)?`")
_CHAPTER_HEADING = re.compile(r"^#\s+Chapter\s+(\d+):\s*(.+?)\s*$", re.MULTILINE)

# Characters of monospaced output that fit the text column of the built book in a 1280-pixel-wide
# window (tests/book/test_site.py measures it; a longer line makes that test fail).
COLUMN = 74


def print_wrapped(label: str, value, width: int = COLUMN) -> None:
    """Print ``label`` and ``value`` on one line when they fit in ``width`` characters; else the label,
    then the value wrapped below it and indented by two spaces: containers as ``pprint`` lays them out
    (compactly), strings at word boundaries."""
    text = value if isinstance(value, str) else repr(value)
    if len(label) + 1 + len(text) <= width:
        print(label, text)
        return
    if isinstance(value, str):
        body = textwrap.fill(value, width - 2, break_on_hyphens=False)
    else:
        body = pprint.pformat(value, width=width - 2, compact=True, sort_dicts=False)
    print(label)
    print(textwrap.indent(body, "  "))


def _plain_role(match: re.Match) -> str:
    """The text a reader should see for one role: its title, or its target (the last part with ``~``)."""
    tilde, text, target = match.groups()
    if target:                      # :role:`title <target>`
        return f"`{text}`"
    return f"`{text.rsplit('.', 1)[-1] if tilde else text}`"


def docstring_summary(doc: str) -> str:
    """The first paragraph of a docstring as one line of Markdown: whitespace joined, Sphinx roles
    reduced to code, reST's double backticks made single, ``|`` escaped for a table cell."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = _ROLE.sub(_plain_role, first).replace("``", "`")
    return first.replace("|", "\\|")


def chapter_exercises(module: str) -> list[Exercise]:
    """The exercises of chapter ``module``, in id order."""
    return [ex for ex in all_exercises() if ex.module == module]


def exercise_table(module: str) -> str:
    """A Markdown table of chapter ``module``'s exercises: id, function (its name in ``module``), what it
    asks, points, and the total. "What it asks" is the first paragraph of the exercise's docstring, whole."""
    chapter = chapter_exercises(module)
    if not chapter:
        raise ValueError(f"module={module!r} has no exercises (is it a chapter module?)")
    lines = ["| exercise | function | what it asks | points |", "|---|---|---|---|"]
    for ex in chapter:
        summary = docstring_summary(stub(ex).__doc__ or "")
        lines.append(f"| {ex.id} | `{ex.qualname}` | {summary} | {ex.points:g} |")
    lines.append(f"| | | **total** | **{sum(ex.points for ex in chapter):g}** |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Chapter:
    """One chapter page of the table of contents."""

    number: int
    title: str
    page: str           # the file as _toc.yml names it, e.g. "book/numerics"
    module: str         # the course_lib module: the page's file name

    @property
    def exercises(self) -> list[Exercise]:
        return chapter_exercises(self.module)


def toc_files(toc_path: Path | str) -> tuple[str, list[str]]:
    """The root page of a Jupyter Book ``_toc.yml`` and its other pages in reading order, as the toc
    names them (``"book/intro"``, ``["book/numerics", ...]``)."""
    import yaml

    toc = yaml.safe_load(Path(toc_path).read_text())
    files: list[str] = []

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("chapters", []) + entry.get("sections", []))

    walk(toc.get("parts", []) + toc.get("chapters", []))
    return toc["root"], files


def toc_chapters(toc_path: Path | str) -> list[Chapter]:
    """The chapters of ``_toc.yml`` in reading order (the root page is not a chapter). Number and title
    come from each page's heading, ``# Chapter 3: The Transformer, ...``."""
    chapters = []
    for page in toc_files(toc_path)[1]:
        source = Path(toc_path).parent / f"{page}.md"
        heading = _CHAPTER_HEADING.search(source.read_text(encoding="utf-8"))
        if heading is None:
            raise ValueError(f"{source}: the first heading should read '# Chapter N: title'")
        chapters.append(Chapter(int(heading.group(1)), heading.group(2), page, Path(page).name))
    return chapters


def chapter_map(toc_path: Path | str, from_page: str) -> str:
    """A Markdown table of the book's chapters (``_toc.yml``): number, title linked to its page, module,
    the functions its exercises ask for, and their points. Links are relative to ``from_page`` (a toc
    file name such as ``"book/intro"``)."""
    import os

    root = Path(toc_path).parent
    here = (root / from_page).parent
    lines = ["| # | chapter | module | exercises | points |", "|---|---|---|---|---|"]
    for chapter in toc_chapters(toc_path):
        link = Path(os.path.relpath(root / f"{chapter.page}.md", here)).as_posix()
        names = ", ".join(f"`{ex.name}`" for ex in chapter.exercises)
        points = sum(ex.points for ex in chapter.exercises)
        lines.append(f"| {chapter.number} | [{chapter.title}]({link}) | `{chapter.module}` | {names} | {points:g} |")
    return "\n".join(lines)


class PageClock:
    """What executing a page costs: started in the page's first cell, read by :meth:`report` in its last.

    Wall-clock time counts from the start; CPU time is the kernel process's since it started (every
    thread, imports included), the number that a page's budget on a shared 2-core machine is about.
    """

    def __init__(self) -> None:
        self._wall_start = time.perf_counter()

    def report(self) -> None:
        """Print the page's wall-clock and CPU seconds so far and glue them as ``page_seconds`` and
        ``page_cpu_seconds``, for the prose that states them (``{glue:text}`page_cpu_seconds:.0f```)."""
        from myst_nb import glue

        wall, cpu = time.perf_counter() - self._wall_start, time.process_time()
        print(f"this page executed in {wall:.0f} s of wall-clock time and {cpu:.0f} s of CPU time")
        glue("page_seconds", wall, display=False)
        glue("page_cpu_seconds", cpu, display=False)
