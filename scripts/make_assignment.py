"""Write the nbgrader source of a chapter's assignment: ``assignments/<module>/<module>.ipynb`` and,
beside it, ``<module>.py``, a symlink to the chapter's stub module ``course_lib/<module>.py`` (what
the student completes and hands in with the notebook; nbgrader releases a copy of the file).

Generated, not hand-edited, so that the test cells, their points and the stub module stay in sync
with ``course_lib`` (``@exercise("0.1", points=2)``). Usage::

    python scripts/make_assignment.py            # every chapter that has an assignment text below
    python scripts/make_assignment.py numerics
    python scripts/make_assignment.py --check    # fail if a committed file differs from what it writes
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import exercises  # noqa: E402


def _cell(kind: str, grade_id: str, source: str, *, grade: bool = False, solution: bool = False,
          locked: bool = True, points: float | None = None, task: bool = False):
    """A cell with nbgrader metadata (schema 3) and a stable id (its grade_id)."""
    make = new_code_cell if kind == "code" else new_markdown_cell
    cell = make(source.strip("\n"))
    cell.id = grade_id.replace("_", "-")
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked and not solution,
            "schema_version": 3, "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    if kind == "code":
        cell.metadata["editable"] = not meta["locked"]
        cell.metadata["deletable"] = not meta["locked"]
    return cell


def test_cells(module: str) -> list:
    """One instruction cell and one autograded test cell per exercise of ``module``."""
    cells = []
    for ex in (e for e in exercises.all_exercises() if e.module == module):
        summary = inspect.getdoc(exercises.entry_point(ex)).splitlines()[0]
        key = ex.id.replace(".", "_")
        cells.append(_cell("markdown", f"about_{key}", f"""
### Exercise {ex.id}: `{ex.name}` ({ex.points:g} points)

{summary} Complete `{ex.name}` in `{module}.py`, then run the cell below: it runs the public tests of
this exercise against your file, in a separate process. Grading runs more (hidden) tests of the same
contract, on the file you hand in.
"""))
        cells.append(_cell("code", f"test_{key}", f"""
from grading.check import check
check("{ex.id}")
### BEGIN HIDDEN TESTS
check("{ex.id}", hidden=True)
### END HIDDEN TESTS
""", grade=True, points=ex.points))
    return cells


def numerics_notebook() -> nbformat.NotebookNode:
    module = "numerics"
    chapter = [e for e in exercises.all_exercises() if e.module == module]
    table = "\n".join(f"| {e.id} | `{e.name}` | {e.points:g} |" for e in chapter)
    total = sum(e.points for e in chapter)
    cells = [
        _cell("markdown", "intro", f"""
# Chapter 0: numerically stable softmax

In this assignment you complete the {len(chapter)} functions of **`{module}.py`**, the file in this folder
beside the notebook. Each one raises `NotImplementedError` until you write its body; its docstring
states the contract (shapes, dtypes, masked entries, edge cases) and gives a hint.

| exercise | function | points |
|---|---|---|
{table}

The code exercises are worth {total:g} points, checked automatically; the written answer below is
graded by hand.

How to work:

1. Edit `numerics.py` in your editor. The cells below import it and reload it when it changes.
2. Run the experiment to see where the naive formulas break, and answer the question.
3. Run the test cell of each exercise. A test cell prints one line per test and fails with a message
   that says what is wrong.

Hand in this notebook **and** `numerics.py`. Do not rename the file and do not edit the test cells:
they are restored before grading, and grading runs additional hidden tests.
"""),
        _cell("code", "setup", f"""
%load_ext autoreload
%autoreload 2

import torch
import torch.nn.functional as F

import {module}  # your file: {module}.py in this folder
"""),
        _cell("markdown", "about_experiment", """
## Experiment: when does softmax overflow?

`exp` of a float32 above about 88.7 is `inf`, and `inf / inf` is NaN. Real logits get that large
(an untrained model, a temperature near 0, attention scores before scaling). The cell compares the
naive formula with your `stable_softmax` on random logits of growing scale, counts the rows that
come out NaN, and checks your answer against `torch.softmax`. An exercise you have not done yet is
reported, not fatal.
"""),
        _cell("code", "experiment", f"""
def naive_softmax(logits):
    exp = torch.exp(logits)
    return exp / exp.sum(dim=-1, keepdim=True)


def attempt(fn, *args, **kwargs):
    \"\"\"Call one of your functions; an unfinished or failing one gives None and a message.\"\"\"
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        print(f"not done yet: {{err}}")
    except Exception as err:
        print(f"{{fn.__name__}} raised {{type(err).__name__}}: {{err}}")
    return None


def nan_rows(probs):
    return float(torch.isnan(probs).any(dim=-1).float().mean())


gen = torch.Generator().manual_seed(0)
scales = [1, 10, 30, 100, 300, 1000, 3000]
naive_rate, yours_rate = [], []
print(f"{{'scale':>6}} {{'naive NaN rows':>15}} {{'yours NaN rows':>15}} {{'max |yours - torch|':>20}}")
for scale in scales:
    logits = torch.randn(2000, 64, generator=gen) * scale
    naive_rate.append(nan_rows(naive_softmax(logits)))
    yours = attempt({module}.stable_softmax, logits)
    if yours is None:
        break
    yours_rate.append(nan_rows(yours))
    gap = (yours - torch.softmax(logits, dim=-1)).abs().max().item()
    print(f"{{scale:>6}} {{naive_rate[-1]:>15.1%}} {{yours_rate[-1]:>15.1%}} {{gap:>20.2e}}")

try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None and yours_rate:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogx(scales[:len(naive_rate)], naive_rate, "o-", label="naive exp / sum")
    ax.semilogx(scales[:len(yours_rate)], yours_rate, "s--", label="your stable_softmax")
    ax.set_xlabel("logit scale (std of the logits)")
    ax.set_ylabel("fraction of NaN rows")
    ax.legend()
    plt.show()

logits = torch.randn(4, 16, 100, generator=gen) * 5          # (batch, seq, vocab)
targets = torch.randint(0, 100, (4, 16), generator=gen)       # (batch, seq)
targets[:, -3:] = -100                                        # padding: ignored
loss = attempt({module}.cross_entropy, logits, targets)
if loss is not None:
    expected = F.cross_entropy(logits.reshape(-1, 100), targets.reshape(-1))
    print(f"cross_entropy: yours {{loss.item():.6f}}, torch {{expected.item():.6f}}")
"""),
        _cell("markdown", "question_masked_rows", """
## Written answer (2 points, graded by hand)

`torch.softmax` returns NaN for a row whose logits are all `-inf`; this course's `stable_softmax`
returns zeros there. Where in a language model do fully masked rows occur, why is NaN harmful there,
and when could silently returning zeros hide a bug instead? Answer in a few sentences.
"""),
        _cell("markdown", "answer_masked_rows", """
### BEGIN SOLUTION
Fully masked rows appear in attention when a query may attend to no key: left-padding positions in a
batch with a padding mask, or a causal mask combined with a padding mask at the first positions.
A NaN there does not stay put: it spreads through the weighted sum of values, the next layers and
the loss, and one NaN gradient corrupts every parameter in the optimiser step. Zeros give those
positions a zero attention output, which is harmless when the positions are padding whose outputs
are ignored (their loss is masked too). But zeros also hide mistakes: a mask built the wrong way
(inverted, or shifted by one) that blanks out real tokens' rows produces plausible numbers instead
of a loud NaN, so such a bug shows up only as a worse loss. A check that real (non-padding) rows
are never fully masked catches it.
### END SOLUTION
""", grade=True, solution=True, points=2),
        _cell("markdown", "about_tests", """
## Tests

Each cell below checks one exercise (the points are in its heading). Run them after each change.
"""),
        *test_cells(module),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


ASSIGNMENTS = {"numerics": numerics_notebook}


def notebook_text(module: str) -> str:
    notebook = ASSIGNMENTS[module]()
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


def stub_link(module: str) -> tuple[Path, str]:
    """``assignments/<module>/<module>.py``: a relative symlink to ``course_lib/<module>.py``, so the
    stub the student gets is always the package's (nbgrader copies the file it points to)."""
    return ROOT / "assignments" / module / f"{module}.py", f"../../course_lib/{module}.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"chapter modules (default: {', '.join(ASSIGNMENTS)})")
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for module in args.modules or list(ASSIGNMENTS):
        if module not in ASSIGNMENTS:
            parser.error(f"no assignment for {module!r}; known: {', '.join(ASSIGNMENTS)}")
        notebook, text = ROOT / "assignments" / module / f"{module}.ipynb", notebook_text(module)
        link, target = stub_link(module)
        if args.check:
            if not notebook.is_file() or notebook.read_text() != text:
                stale.append(notebook)
            if not link.is_symlink() or os.readlink(link) != target or not link.is_file():
                stale.append(link)
            continue
        notebook.parent.mkdir(parents=True, exist_ok=True)
        notebook.write_text(text)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        print(f"wrote {notebook.relative_to(ROOT)}, {link.relative_to(ROOT)} -> {target}")
    if stale:
        print("out of date (run python scripts/make_assignment.py):")
        for path in stale:
            print(f"  {path.relative_to(ROOT)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
