"""The instructor's path through nbgrader's web UI, in a browser: formgrader started by the documented
command (``./course formgrader``) on a course folder outside the repository, one hostile submission.

- formgrader lists the assignment and the submission (and no missing-exchange banner once an
  exchange folder is set up);
- its per-student Autograde button runs the hostile notebook in the confined kernel (its attacks on
  the gradebook, the solutions and the files fail) and the code exercises are scored in the sandbox;
- a score typed for the written answer lands in the gradebook and in ``nbgrader export``;
- the grading view and the feedback page typeset the student's math with the course's MathJax and
  ask for nothing outside the machine; the feedback shows no hidden-test lines.

The submission: 0.1 left a stub (so the code is worth 8 of 10), a written answer with math, and a cell
added before the tests that tries the gradebook, the solutions and the files
(``tests/grading/test_adversarial.py``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grading.submissions import module_with
from tests.browser import PageVisit, chromium, serve, typeset_math
from tests.grading import test_adversarial as hostile
from tests.grading.batch_helpers import ASSIGNMENT, POINTS, ROOT, gradebook_scores, nbgrader, released_course, \
    released_notebook, submit

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")

STUDENT = "hostile"
ANSWER = (r"Fully masked rows come from padding: every logit of the row is $-\infty$, so "
          r"$\mathrm{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j} = 0/0$, a NaN that spreads to the loss.")
CODE_SCORE = sum(POINTS.values()) - POINTS["0.1"]  # 0.1 is left a stub
MANUAL_SCORE = 1.5


# -- the course, the server, the browser ------------------------------------------------------------
@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("formgrader") / "course"
    released_course(course)
    notebook = hostile._kernel_attack(released_notebook(course), hostile._Fill(course, 0, 0, course / "no-service.sock"))
    answer = next(c for c in notebook["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "answer_masked_rows")
    answer["source"] = ANSWER
    submit(course, STUDENT, module_with(ASSIGNMENT, {"0.1": None}), notebook)
    return course


@pytest.fixture(scope="module")
def formgrader(course, tmp_path_factory):
    """``./course formgrader`` on ``course``, with an exchange folder; yields its printed address."""
    exchange = tmp_path_factory.mktemp("exchange")
    exchange.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTEST_", "PYTHON", "JUPYTER"))}
    env.update(COURSE_GRADING_DIR=str(course), COURSE_EXCHANGE_DIR=str(exchange),
               JUPYTER_CONFIG_DIR=str(course / ".jupyter"), JUPYTER_RUNTIME_DIR=str(course / ".runtime"))
    log = course.parent / "formgrader.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / "course"), "formgrader"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _wait_for_server(proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # Jupyter shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_server(proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> str:
    """The formgrader address the command printed, once the server answers there."""
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"./course formgrader exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        if url is None:
            found = re.search(r"open  (http://127\.0\.0\.1:\d+/formgrader\?token=\S+)", log.read_text())
            url = found and found.group(1)
        if url is not None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"formgrader did not answer within {timeout:g} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def browser(formgrader):
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def instructor(browser, formgrader):
    """One browser tab, logged in with the token, on formgrader's assignment list."""
    visit = PageVisit(browser, formgrader)
    yield visit
    visit.close()


def _base(url: str) -> str:
    return url.split("/formgrader")[0]


def _submissions_page(instructor, formgrader):
    page = instructor.page
    page.goto(f"{_base(formgrader)}/formgrader/manage_submissions/{ASSIGNMENT}", wait_until="load")
    row = page.locator("tr", has=page.locator("td.student-id", has_text=STUDENT))
    row.wait_for(timeout=30_000)
    return row


def _click_and_read_modal(page, link) -> tuple[str, str]:
    """Click ``link`` (a formgrader action) and return (modal id, modal text) once it answers."""
    link.click()
    modal = page.locator("#success-modal, #error-modal")
    modal.first.wait_for(state="visible", timeout=600_000)
    text, modal_id = modal.first.inner_text(), modal.first.get_attribute("id")
    modal.first.locator(".modal-footer button").click()
    modal.first.wait_for(state="detached", timeout=10_000)
    return modal_id, text


@pytest.fixture(scope="module")
def autograded(instructor, formgrader, course):
    """The Autograde button clicked for the hostile submission: (modal id, modal text, seconds)."""
    row = _submissions_page(instructor, formgrader)
    started = time.monotonic()
    modal_id, text = _click_and_read_modal(instructor.page, row.locator("td.autograde a"))
    return modal_id, text, time.monotonic() - started


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_formgrader_lists_the_assignment_and_the_submission_with_the_exchange_set_up(instructor, formgrader):
    with urllib.request.urlopen(f"{_base(formgrader)}/formgrader/manage_assignments", timeout=10) as response:
        assert "/login" in response.url, "formgrader let a browser without the token in"
    page = instructor.page
    assert instructor.response.status == 200
    page.locator("tr", has_text=ASSIGNMENT).first.wait_for(timeout=30_000)
    text = page.inner_text("body")
    assert "Sorry, the formgrader encountered an error" not in text, text[:2000]
    assert page.locator("#warning-exchange").count() == 0, "formgrader says the exchange folder is missing"
    _submissions_page(instructor, formgrader)
    assert not instructor.blocked, f"formgrader asked for pages outside the machine: {instructor.blocked}"


@pytest.mark.slow
def test_autograde_button_confines_the_notebook_and_scores_the_code_in_the_sandbox(autograded, course):
    modal_id, text, seconds = autograded
    print(f"\nAutograde button: {seconds:.1f} s")
    assert modal_id == "success-modal", f"the Autograde button failed:\n{text[-3000:]}"
    cells = json.loads((course / "autograded" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())["cells"]
    printed = "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    attacks = re.findall(r"ATTACK (.+): (\w+)", printed)
    labels = re.findall(r'^    \("([^"]+)", ', hostile.KERNEL_CELL, re.M)
    assert [a[0] for a in attacks] == labels and not [a for a in attacks if a[1] == "SUCCEEDED"], (
        f"the notebook's kernel reached the gradebook, the solutions or the files: {attacks}")
    # the solutions exist on this machine: the confined kernel is refused them or does not see them
    assert dict(attacks)["solutions"] in ("PermissionError", "FileNotFoundError"), attacks
    assert "exercise 0.1 (stable_softmax): 0 of 2 points" in printed, "the test cells do not show the sandbox's results"
    assert "NotImplementedError: Exercise 0.1" in printed
    scores = gradebook_scores(course, [STUDENT])[STUDENT]
    assert sum(auto for name, (auto, _) in scores.items() if name.startswith("test_")) == CODE_SCORE, scores
    assert all(manual is None for _, manual in scores.values()), f"a manual score appeared: {scores}"


@pytest.mark.slow
def test_manual_score_typed_in_the_grading_view_reaches_nbgrader_export(autograded, instructor, formgrader, course,
                                                                         tmp_path):
    page = instructor.page
    page.goto(f"{_base(formgrader)}/formgrader/gradebook/{ASSIGNMENT}/{ASSIGNMENT}", wait_until="load")
    page.locator("a", has_text="Submission #").first.click()  # students' names are hidden until revealed
    # formgrader's own readiness: scores and comments loaded, its setup done (it waits for MathJax)
    page.wait_for_function("() => window.formgrader && formgrader.loaded && formgrader.grades.loaded "
                           "&& formgrader.comments.loaded", timeout=60_000)
    score = page.locator("input.score#answer_masked_rows")
    math = typeset_math(page)
    answer = page.locator(".nbgrader_cell", has=score)
    assert answer.locator("mjx-container").count() == ANSWER.count("$") // 2, f"the student's math is not typeset: {math}"
    with page.expect_response(lambda r: "/formgrader/api/grade/" in r.url and r.request.method == "PUT") as saved:
        score.fill(str(MANUAL_SCORE))
        score.press("Tab")
    assert saved.value.ok, saved.value.status
    assert not instructor.blocked, f"the grading view asked for pages outside the machine: {instructor.blocked}"
    assert not instructor.failed and not instructor.console_errors, (instructor.failed, instructor.console_errors)

    nbgrader(course, "export", "--to", str(tmp_path / "grades.csv"))
    with open(tmp_path / "grades.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["student_id"] == STUDENT)
    assert float(row["score"]) == CODE_SCORE + MANUAL_SCORE, row


@pytest.mark.slow
def test_feedback_page_typesets_math_offline_and_leaves_out_the_hidden_tests(autograded, instructor, formgrader,
                                                                             browser, course):
    row = _submissions_page(instructor, formgrader)
    modal_id, text = _click_and_read_modal(instructor.page, row.locator("td.generate-feedback a"))
    assert modal_id == "success-modal", text[-3000:]
    folder = course / "feedback" / STUDENT / ASSIGNMENT
    source = (folder / f"{ASSIGNMENT}.html").read_text()
    for secret in ("BEGIN HIDDEN TESTS", "hidden=True"):
        assert secret not in source, f"the feedback shows {secret!r}"
    with serve(folder) as url:  # a student opens the file as it is: nothing beside it
        visit = PageVisit(browser, f"{url}/{ASSIGNMENT}.html")
        try:
            math = typeset_math(visit.page)
            visit.page.wait_for_load_state("networkidle")
            text = visit.page.inner_text("body")
            assert math["containers"] == ANSWER.count("$") // 2 and not math["errors"], math
            assert not visit.blocked, f"the feedback asked for pages outside the machine: {visit.blocked}"
            assert not visit.failed and not visit.console_errors, (visit.failed, visit.console_errors)
        finally:
            visit.close()
    assert re.search(r"exercise 0\.4 \(cross_entropy\): 4 of 4 points, \d+ tests passed, 0 failed", text), text[-3000:]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "llm-course") as gb:
        total, most = gb.find_submission(ASSIGNMENT, STUDENT).score, gb.find_assignment(ASSIGNMENT).max_score
    assert f"(Score: {round(total, 2)} / {round(most, 2)})" in text, text[:500]


def test_autograde_refuses_a_notebook_where_the_kernel_cannot_be_confined(monkeypatch):
    import nbformat

    from grading import nbgrader_autograde, sandbox

    monkeypatch.delenv("COURSE_CHECK_DEFER", raising=False)
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    resources = {"nbgrader": {"student": "someone", "assignment": ASSIGNMENT}, "metadata": {"path": "."}}
    with pytest.raises(RuntimeError, match=r"no Landlock.*\./course grade numerics --student someone"):
        nbgrader_autograde.ConfinedExecute().preprocess(nbformat.v4.new_notebook(), resources)


def test_the_server_root_holds_the_course_folder(tmp_path):
    """formgrader needs the course folder under the server's root: the repository for the default
    _grading/, the course folder itself for one elsewhere (as in the browser tests above)."""
    from grading.formgrader import server_root

    assert server_root(ROOT / "_grading") == ROOT
    assert server_root(tmp_path / "course") == tmp_path / "course"
