"""The student handout (grading.release): what it holds, that its scan is clean and catches planted
leaks, and that the handout's own ``pytest`` fails on the stubs with NotImplementedError only."""

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from course_lib import exercises
from grading import release

ROOT = Path(__file__).resolve().parents[2]
SOURCE_NOTEBOOKS = sorted(ROOT.glob("assignments/*/*.ipynb"))


@pytest.fixture
def leaky(handout, tmp_path):
    """A copy of the handout to plant a leak in (or to run code in: bytecode stays out of ``handout``)."""
    copy = tmp_path / "handout"
    shutil.copytree(handout, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def reference_function(name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / "solutions" / "numerics.py").read_text())
    return next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == name)


def replace_stub_body(module: Path, name: str, new_body: str) -> None:
    """Replace the ``raise NotImplementedError`` line of stub ``name`` by ``new_body``."""
    source = module.read_text()
    tree = ast.parse(source)
    fn = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == name)
    lines = source.splitlines(keepends=True)
    last = fn.body[-1]
    assert isinstance(last, ast.Raise)
    lines[last.lineno - 1:last.end_lineno] = [new_body]
    module.write_text("".join(lines))


def run_in_handout(handout, args, tmp_path, cwd=None, env=None):
    """Run the student's Python (see release.student_python) in the handout, in student mode."""
    python = release.student_python(handout, tmp_path / "student-venv")
    return subprocess.run([str(python), *args], cwd=cwd or handout, env={**release.student_env(), **(env or {})},
                          capture_output=True, text=True, timeout=600)


# -- what the handout holds --------------------------------------------------------------------------
def test_handout_holds_the_student_files_and_none_of_the_instructors(handout):
    for path in ["course_lib/__init__.py", "course_lib/exercises.py", "grading/door.py",
                 "grading/pytest_plugin.py", "tests/__init__.py", "tests/conftest.py", "pyproject.toml",
                 "README.md", *[f"course_lib/{m}.py" for m in exercises.CHAPTER_MODULES],
                 *[f"tests/test_{m}.py" for m in exercises.CHAPTER_MODULES]]:
        assert (handout / path).is_file(), f"{path} missing from the handout"
    for path in ["_config.yml", "_toc.yml", "book"]:
        assert (handout / path).exists() == (ROOT / path).exists(), path
    for path in ["solutions", "tests/hidden", "tests/mutants", "tests/grading", "grading/release.py",
                 ".venv", ".git", "_build", ".cache", "tests/test_exercises.py"]:
        assert not (handout / path).exists(), f"{path} must not be in the handout"
    for nb in SOURCE_NOTEBOOKS:
        assert (handout / "assignments" / nb.parent.name / nb.name).is_file(), f"{nb.name} not released"
    for module in exercises.CHAPTER_MODULES:  # one file per chapter: beside the notebook, a link to it
        link = handout / "assignments" / module / f"{module}.py"
        assert link.is_symlink() and link.resolve() == (handout / "course_lib" / f"{module}.py").resolve(), link
        assert sorted(p.name for p in link.parent.iterdir()) == sorted([f"{module}.ipynb", f"{module}.py"])
    include = tomllib.loads((handout / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "course_lib*" in include and not any(p.startswith("solutions") for p in include)
    readme = (handout / "README.md").read_text()
    assert "pip install torch==2.13.0" in readme and 'pip install -e ".[dev]"' in readme
    assert "pytest --chapter numerics" in readme


def test_released_notebooks_hold_no_solution_and_no_hidden_test(handout):
    for nb in SOURCE_NOTEBOOKS:
        released = (handout / "assignments" / nb.parent.name / nb.name).read_text()
        assert "BEGIN SOLUTION" not in released and "BEGIN HIDDEN" not in released
        for cell in json.loads(released)["cells"]:
            assert not cell.get("outputs"), "released notebooks are cleared"


def test_the_release_command_writes_a_handout_whose_scan_is_clean(release_run):
    out, proc = release_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scan: clean" in proc.stdout and (out / release.MARKER_FILE).is_file()


def test_handout_imports_its_own_course_lib_and_cannot_import_solutions(handout, tmp_path):
    probe = ("import json, importlib\n"
             "found = {}\n"
             "for name in ('course_lib', 'grading', 'tests', 'solutions', 'solutions.numerics'):\n"
             "    try:\n"
             "        found[name] = importlib.import_module(name).__file__\n"
             "    except ModuleNotFoundError as err:\n"
             "        found[name] = 'missing: ' + str(err)\n"
             "print(json.dumps(found))\n")
    proc = run_in_handout(handout, ["-c", probe], tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for name in ("course_lib", "grading", "tests"):
        assert Path(found[name]).resolve().is_relative_to(handout.resolve()), (name, found[name])
    assert found["solutions"].startswith("missing") and found["solutions.numerics"].startswith("missing")


@pytest.mark.parametrize("isolated", [False, True], ids=["python", "python -I"])
def test_solutions_stay_out_of_reach_even_with_the_instructor_repo_on_the_path(handout, tmp_path, isolated):
    # As if the instructor's repository were installed some other way: its root on sys.path, first.
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import course_lib; print(course_lib.__file__); "
            "import solutions")
    proc = run_in_handout(handout, ["-I", "-B", "-c", code] if isolated else ["-c", code], tmp_path, cwd=tmp_path)
    assert Path(proc.stdout.strip()).resolve().is_relative_to(handout.resolve()), proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No module named 'solutions'" in proc.stderr, proc.stderr


# -- planted leaks are caught ------------------------------------------------------------------------
def _paste_reference_into_stub(h):
    fn = reference_function("stable_softmax")
    body = "".join(f"    {ast.unparse(s)}\n" for s in fn.body)  # reformatted, comments gone
    replace_stub_body(h / "course_lib" / "numerics.py", "stable_softmax", body)
    helper = ast.unparse(reference_function("_finite_max"))
    (h / "course_lib" / "numerics.py").write_text((h / "course_lib" / "numerics.py").read_text() + "\n\n" + helper + "\n")
    return "course_lib/numerics.py"


def _reference_in_a_notebook(h):
    fn = reference_function("cross_entropy")
    fn.name = "my_cross_entropy"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Extra"),
                                         nbformat.v4.new_code_cell(ast.unparse(fn))])
    (h / "assignments" / "extra").mkdir(parents=True)
    nbformat.write(nb, h / "assignments" / "extra" / "extra.ipynb")
    return "assignments/extra/extra.ipynb"


def _reference_lines_in_a_book_page(h):
    fn = reference_function("logsumexp")
    code = "\n".join(ast.unparse(s) for s in fn.body[:2])  # two lines, at the top level of a cell
    (h / "book").mkdir(exist_ok=True)
    (h / "book" / "leak.md").write_text(f"# Page\n\n```{{code-cell}} ipython3\nx = 1\n{code}\n```\n")
    return "book/leak.md"


def _solutions_folder(h):
    (h / "solutions").mkdir()
    (h / "solutions" / "__init__.py").write_text("")
    return "solutions/"


def _hidden_test_file(h):
    shutil.copy(ROOT / "tests" / "hidden" / "test_numerics_hidden.py", h / "tests" / "test_numerics_more.py")
    return "tests/test_numerics_more.py"


def _hidden_tests_edited_and_renamed(h):
    text = (ROOT / "tests" / "hidden" / "test_numerics_hidden.py").read_text()
    (h / "tests" / "test_numerics_extra.py").write_text("# more tests\n" + text.replace('"""', "'''"))
    return "tests/test_numerics_extra.py"


def _mutants_folder(h):
    shutil.copytree(ROOT / "tests" / "mutants", h / "tests" / "mutants")
    return "tests/mutants"


def _nbgrader_marker(h):
    with open(h / "README.md", "a") as f:
        f.write("\n    ### BEGIN SOLUTION\n    x = 1\n    ### END SOLUTION\n")
    return "README.md"


def _pyproject_packages_solutions(h):
    text = (ROOT / "pyproject.toml").read_text()
    packaged = re.sub(r'include = \[', 'include = ["solutions*", ', text, count=1)
    assert packaged != text, "pyproject.toml has no package include list to plant solutions in"
    (h / "pyproject.toml").write_text(packaged)
    return "pyproject.toml"


def _link_out_of_the_handout(h):
    (h / "assignments" / "numerics" / "notes.py").symlink_to(ROOT / "solutions" / "numerics.py")
    return "assignments/numerics/notes.py"


def _bytecode(h):
    (h / "course_lib" / "__pycache__").mkdir()
    (h / "course_lib" / "__pycache__" / "numerics.cpython-311.pyc").write_bytes(b"\x00bytecode")
    return "course_lib/__pycache__"


LEAKS = [_paste_reference_into_stub, _reference_in_a_notebook, _reference_lines_in_a_book_page,
         _solutions_folder, _hidden_test_file, _hidden_tests_edited_and_renamed, _mutants_folder,
         _nbgrader_marker, _pyproject_packages_solutions, _link_out_of_the_handout, _bytecode]


@pytest.mark.parametrize("plant", LEAKS, ids=[p.__name__.strip("_") for p in LEAKS])
def test_scan_catches_a_planted_leak(leaky, plant):
    where = plant(leaky)
    problems = release.scan_handout(leaky, call_stubs=False)
    assert any(p.startswith(where) for p in problems), problems


def test_scan_names_the_reference_a_pasted_body_comes_from(leaky):
    _paste_reference_into_stub(leaky)
    problems = release.scan_handout(leaky, call_stubs=False)
    assert any("stable_softmax() has the body of solutions/numerics.py" in p for p in problems), problems
    assert any("_finite_max() has the body of solutions/numerics.py" in p for p in problems), problems


@pytest.mark.slow
def test_scan_calls_every_stub_and_catches_one_that_no_longer_raises(leaky):
    replace_stub_body(leaky / "course_lib" / "numerics.py", "logsumexp",
                      "    return torch.logsumexp(x, dim=dim, keepdim=keepdim)\n")
    ids, problems = release.check_exercises(leaky)
    assert ids == [ex.id for ex in exercises.all_exercises()]
    assert len(problems) == 1 and "exercise 0.2" in problems[0] and "is it implemented?" in problems[0]
    replace_stub_body(leaky / "course_lib" / "numerics.py", "log_softmax", "    return logits\n")
    ids, problems = release.check_exercises(leaky)
    assert any("exercise 0.3" in p and "without raising" in p for p in problems), problems


def test_generic_code_that_also_appears_in_the_reference_is_no_leak():
    fingerprints = release.instructor_fingerprints()
    code = ("def f(x, dim=-1, keepdim=False):\n    return x\n"
            "def g(loss):\n    if loss.ndim:\n        return loss.sum()\n    return loss\n"
            "import torch\nloss = nll\n")
    assert release._code_problems("probe.py", ast.parse(code), fingerprints) == []


# -- the release notebooks step on a notebook made here ------------------------------------------
def _source_notebook() -> nbformat.NotebookNode:
    def meta(**kw):
        return {"nbgrader": {"schema_version": 3, "locked": False, "solution": False, "grade": False,
                             "task": False, **kw}}

    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Demo\nImplement `double`.",
                                      metadata=meta(grade_id="intro", locked=True)),
        nbformat.v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    doubled = x + x  # the secret\n"
                                  "    assert doubled == 2 * x, (doubled, x)\n    return doubled\n"
                                  "    ### END SOLUTION\n",
                                  metadata=meta(grade_id="double", solution=True)),
        nbformat.v4.new_code_cell("assert double(2) == 4\n### BEGIN HIDDEN TESTS\n"
                                  "assert double(-3) == -6, 'negative numbers'\n### END HIDDEN TESTS\n",
                                  metadata=meta(grade_id="test_double", grade=True, locked=True, points=2)),
    ])


@pytest.mark.slow
def test_release_notebooks_strips_solutions_and_hidden_tests_with_nbgrader(tmp_path):
    source = tmp_path / "repo" / "assignments" / "demo"
    source.mkdir(parents=True)
    nbformat.write(_source_notebook(), source / "demo.ipynb")
    out = tmp_path / "handout" / "assignments"
    written = release.release_notebooks(source.parent, out, root=tmp_path / "repo")
    assert written == [out / "demo"]
    text = (out / "demo" / "demo.ipynb").read_text()
    assert "YOUR CODE HERE" in text and "assert double(2) == 4" in text
    for secret in ("x + x", "the secret", "double(-3)", "BEGIN SOLUTION", "BEGIN HIDDEN"):
        assert secret not in text, secret

    fingerprints = release.instructor_fingerprints(tmp_path / "repo")
    released = nbformat.read(out / "demo" / "demo.ipynb", as_version=4)
    for cell in released.cells:
        if cell.cell_type == "code":
            assert release._code_problems("demo", ast.parse(cell.source), fingerprints) == []
    leak = ast.parse("def double(x):\n    doubled = x + x\n    assert doubled == 2 * x, (doubled, x)\n    return doubled\n"
                     "assert double(-3) == -6, 'negative numbers'\n")
    problems = release._code_problems("leak", leak, fingerprints)
    assert any("(solution)" in p for p in problems) and any("(hidden tests)" in p for p in problems), problems


# -- the handout's own pytest --------------------------------------------------------------------------
@pytest.mark.slow
def test_handout_pytest_fails_on_every_exercise_with_not_implemented_and_no_collection_error(handout, tmp_path):
    report = tmp_path / "report.xml"
    proc = run_in_handout(handout, ["-m", "pytest", "-p", "no:cacheprovider", "-q", "--junitxml", str(report),
                                    "-o", "junit_family=xunit2"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"expected failing tests (exit 1), got {proc.returncode}:\n{output[-3000:]}"
    assert "ERROR collecting" not in output and "ImportError" not in output, output[-3000:]
    assert str(ROOT / "course_lib") not in output, "the handout imported the instructor's course_lib"
    assert "No module named 'solutions'" not in output and "solutions/" not in output, output[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    named, failed = set(), 0
    for case in cases:
        assert case.find("error") is None, ET.tostring(case, encoding="unicode")[:2000]
        failure = case.find("failure")
        if failure is None:
            continue
        failed += 1
        message = (failure.get("message") or "") + (failure.text or "")
        match = re.search(r"NotImplementedError: Exercise (\d+\.\d+)", message)
        assert match, f"{case.get('name')} failed without an exercise's NotImplementedError:\n{message[:2000]}"
        named.add(match.group(1))
    assert failed > 0
    assert named == {ex.id for ex in exercises.all_exercises()}


def _failures(output: str) -> dict[str, list[str]]:
    """A pytest run's FAILURES section: test name -> the lines pytest printed for it."""
    section = output.split("= FAILURES =", 1)[1].split("= short test summary info =", 1)[0]
    found, name = {}, None
    for line in section.splitlines()[1:]:
        if header := re.fullmatch(r"_+ (test\S*) _+", line):
            name = header.group(1)
            found[name] = []
        elif name is not None:
            found[name].append(line)
    return found


def test_a_failure_shows_the_message_first_and_the_lines_of_the_test_and_of_the_student_code(leaky, tmp_path):
    # Softmax over the last axis whatever dim says: a wrong answer, not an unfinished one.
    replace_stub_body(leaky / "course_lib" / "numerics.py", "stable_softmax",
                      "    return torch.softmax(logits, dim=-1)\n")
    proc = run_in_handout(leaky, ["-m", "pytest", "--exercise", "0.1", "-p", "no:cacheprovider"], tmp_path)
    failures = _failures(proc.stdout)
    assert "test_stable_softmax_normalises_along_the_given_dim" in failures, proc.stdout[-3000:]
    lines = failures["test_stable_softmax_normalises_along_the_given_dim"]
    assert lines[0].startswith("AssertionError: stable_softmax(logits, dim=0) is wrong"), lines
    assert "Softmax over the wrong axis?" in lines[0]
    text = "\n".join(lines)
    assert "tests/test_numerics.py:" in text, text
    assert "def assert_close" not in text and "grading/" not in text, "helper frames are hidden"
    assert len(lines) <= 8, text


def test_a_chapter_module_that_does_not_import_leaves_the_other_chapters_alone(leaky, tmp_path):
    attention = leaky / "course_lib" / "attention.py"
    source = attention.read_text()
    line = source[:source.index("def _check_dropout(")].count("\n") + 1
    attention.write_text(source.replace("def _check_dropout(", "def _check_dropout(:", 1))  # half-typed code
    other = run_in_handout(leaky, ["-m", "pytest", "--exercise", "0.1", "-p", "no:cacheprovider"], tmp_path)
    output = other.stdout + other.stderr
    assert "INTERNALERROR" not in output and "attention" not in output, output[-3000:]
    assert re.search(r"\b\d+ failed\b", output) and " passed" not in output, output[-3000:]  # 0.1's tests ran
    assert "NotImplementedError: Exercise 0.1" in output, output[-3000:]
    own = run_in_handout(leaky, ["-m", "pytest", "--chapter", "attention", "-p", "no:cacheprovider"], tmp_path)
    output = own.stdout + own.stderr
    assert own.returncode != 0 and "INTERNALERROR" not in output, output[-3000:]
    where = f"course_lib/attention.py, line {line}: SyntaxError"
    assert where in output, output[-3000:]
    assert output.index(where) < output.index("Traceback") if "Traceback" in output else True


# -- the command ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_release_command_refuses_to_overwrite_replaces_with_force_and_checks(handout, tmp_path):
    out = tmp_path / "handout"
    shutil.copytree(handout, out, symlinks=True)
    command = [sys.executable, "-m", "grading.release"]

    def run(*args):
        return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)

    again = run(str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    (out / "course_lib" / "numerics.py").write_text("# an earlier handout's file, replaced by --force\n")
    forced = run(str(out), "--force")
    assert forced.returncode == 0 and "scan: clean" in forced.stdout, forced.stdout + forced.stderr
    assert (out / "course_lib" / "numerics.py").read_text() == (ROOT / "course_lib" / "numerics.py").read_text()
    _hidden_test_file(out)
    check = run(str(out), "--check")
    assert check.returncode == 1 and "tests/test_numerics_more.py" in check.stderr


def test_release_refuses_the_repository_and_folders_that_hold_no_handout(tmp_path):
    with pytest.raises(release.ReleaseError, match="outside the repository"):
        release.build_handout(ROOT / "handout")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(release.ReleaseError, match="holds no earlier handout"):
        release.build_handout(tmp_path, force=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_scan_catches_a_written_model_answer_pasted_into_a_notebook(leaky):
    answers = release.instructor_fingerprints().answer_lines
    if not answers:
        pytest.skip("no source notebook has a written (Markdown) model answer")
    line = next(iter(answers))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"My answer:\n{line}\n")])
    (leaky / "notes.ipynb").write_text(nbformat.writes(nb))
    problems = release.scan_handout(leaky, call_stubs=False)
    assert any(p.startswith("notes.ipynb line 2: text of") for p in problems), problems


@pytest.mark.slow
def test_a_released_notebooks_public_check_reports_the_stubs_not_implemented(leaky, tmp_path):
    if not SOURCE_NOTEBOOKS:
        pytest.skip("no assignment notebook")
    nb = SOURCE_NOTEBOOKS[0]
    ex = next(e for e in exercises.all_exercises() if e.module == nb.parent.name)
    proc = run_in_handout(leaky, ["-c", f"from grading.check import check; check({ex.id!r})"], tmp_path,
                          cwd=leaky / "assignments" / nb.parent.name)
    assert proc.returncode != 0
    assert f"NotImplementedError: Exercise {ex.id}" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "solutions" not in proc.stdout + proc.stderr


def test_the_handouts_pyproject_builds_a_wheel_without_solutions(leaky, tmp_path):
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(wheels), str(leaky)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"course_lib", "grading"} <= top and "solutions" not in top and "tests" not in top, top
