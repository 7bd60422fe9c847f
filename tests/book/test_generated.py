"""What the book's pages generate from the package: exercise tables, the chapter map of the landing
page, output wrapped to the text column, and the memory measurement of Chapter 2. Fast; no built book
needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_lib import book
from course_lib.exercises import CHAPTER_MODULES, all_exercises, stub

ROOT = Path(__file__).resolve().parents[2]


def test_docstring_summary_is_the_whole_first_paragraph_without_sphinx_roles():
    doc = """The number of parameters of :class:`~course_lib.language_model.CourseLMForCausalLM` with this
    architecture, by formula: what ``sum(p.numel() for p in model.parameters())`` returns, see
    :py:func:`course_lib.transformer.count_parameters` and :ref:`the cost <tr-cost>`.

    Args:
        config: ...
    """
    summary = book.docstring_summary(doc)
    assert summary == ("The number of parameters of `CourseLMForCausalLM` with this architecture, by formula: "
                       "what `sum(p.numel() for p in model.parameters())` returns, see "
                       "`course_lib.transformer.count_parameters` and `the cost`.")


@pytest.mark.parametrize("module", CHAPTER_MODULES)
def test_exercise_table_lists_every_exercise_with_its_points(module):
    table = book.exercise_table(module).splitlines()
    chapter = [ex for ex in all_exercises() if ex.module == module]
    rows = table[2:-1]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [ex.id for ex in chapter]
    for row, ex in zip(rows, chapter):
        assert f"| `{ex.qualname}` |" in row and row.endswith(f"| {ex.points:g} |")
        assert book.docstring_summary(stub(ex).__doc__) in row
        assert ":class:" not in row and ":func:" not in row and "``" not in row, row
    assert table[-1].endswith(f"**{sum(ex.points for ex in chapter):g}** |")


def test_exercise_table_of_a_module_without_exercises_is_an_error():
    with pytest.raises(ValueError, match="module"):
        book.exercise_table("corpus")


def test_chapter_map_links_every_chapter_of_the_toc_in_order():
    chapters = book.toc_chapters(ROOT / "_toc.yml")
    assert [c.module for c in chapters] == list(CHAPTER_MODULES)
    assert [c.number for c in chapters] == list(range(len(CHAPTER_MODULES)))
    rows = book.chapter_map(ROOT / "_toc.yml", from_page="book/intro").splitlines()[2:]
    for row, chapter in zip(rows, chapters, strict=True):
        assert f"[{chapter.title}]({chapter.module}.md)" in row
        assert row.endswith(f"| {sum(ex.points for ex in chapter.exercises):g} |")


@pytest.mark.parametrize("value", [
    list(range(200)),
    {f"key{i}": "value " * i for i in range(8)},
    "a sentence of words " * 12,
    [b"\xe6\x97\xa5", "naïve", "x" * 30] * 5,
])
def test_print_wrapped_keeps_every_line_within_the_column(value, capsys):
    book.print_wrapped("a label:", value)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "a label:" and len(lines) > 2
    assert all(len(line) <= book.COLUMN for line in lines), max(lines, key=len)
    body = "".join(line.strip() for line in lines[1:])
    if isinstance(value, str):
        assert body.replace(" ", "") == value.replace(" ", "")
    else:
        assert eval(body) == value  # noqa: S307 - the repr the test itself printed


def test_print_wrapped_keeps_a_short_value_on_the_label_line(capsys):
    book.print_wrapped("ids:", [1, 2, 3])
    assert capsys.readouterr().out == "ids: [1, 2, 3]\n"


def test_peak_rss_increase_sees_a_large_allocation_and_not_a_small_one():
    import torch

    from course_lib.memory import peak_rss_increase

    big = peak_rss_increase(lambda: torch.ones(64 * 2**20 // 4))          # 64 MiB of float32, written
    if big is None:
        pytest.skip("peak resident memory is not measurable here (needs Linux /proc and glibc)")
    small = peak_rss_increase(lambda: torch.ones(1024))
    assert 60 * 2**20 <= big <= 80 * 2**20, f"a 64 MiB tensor raised the peak by {big / 2**20:.1f} MiB"
    assert small < 8 * 2**20, f"a 4 KiB tensor raised the peak by {small / 2**20:.1f} MiB"


def test_page_clock_prints_and_glues_the_page_s_wall_and_cpu_time(monkeypatch, capsys):
    import time

    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: (value, display)}))
    clock = book.PageClock()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    # 0.3 s of CPU work on this page, and 0.3 s of wall-clock time (the process's other threads can make
    # its CPU time run ahead of the wall clock)
    while time.process_time() < cpu_before + 0.3 or time.perf_counter() < wall_before + 0.3:
        pass
    clock.report()
    wall, cpu = glued["page_seconds"][0], glued["page_cpu_seconds"][0]
    assert glued["page_seconds"][1] is False and glued["page_cpu_seconds"][1] is False  # glued, not shown
    assert wall >= 0.3 and cpu >= cpu_before + 0.3, "the CPU time counts the kernel's whole process"
    assert capsys.readouterr().out == (f"this page executed in {wall:.0f} s of wall-clock time and "
                                       f"{cpu:.0f} s of CPU time\n")
