"""The student handout: what students get, written from the instructor's repository and checked.

    python -m grading.release OUT_DIR [--force]     write the handout into OUT_DIR, then scan it
    python -m grading.release --check DIR           scan an existing handout only

nbgrader strips solutions from notebooks only, so the rest of the handout is the course's own step:

- ``course_lib/`` as it is (its exercises are stubs), ``grading/`` (the door and the pytest plugin a
  student needs to run the tests locally; not this file), the public tests (``tests/__init__.py``,
  ``tests/conftest.py``, helpers, ``tests/test_<chapter>.py``; never ``tests/hidden``,
  ``tests/mutants`` or the infrastructure tests in other subfolders), the book sources with
  ``_config.yml`` and ``_toc.yml``, ``benchmarks/`` unless it imports ``solutions``, a
  ``pyproject.toml`` whose package list leaves out ``solutions``, a README, and the released
  assignment notebooks made by nbgrader's own ``generate_assignment`` in a scratch course folder.
- :func:`scan_handout` then looks for every way a solution or a hidden test could have slipped in
  (see its docstring); the command fails if it finds anything.

The scan runs the handout's code with :func:`student_python`: a bare venv that reaches this
interpreter's libraries but not the instructor's (editable) install of this repository, and in
which ``course_lib``, ``grading``, ``tests`` and ``solutions`` import from the handout or not at all.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import sysconfig
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER_FILE = ".course-handout"

# Never copied from anywhere, and flagged by the scan if present.
JUNK_DIRS = {".git", ".venv", "_build", ".cache", "__pycache__", ".pytest_cache", ".ipynb_checkpoints",
             ".jupyter_cache", ".mypy_cache", ".ruff_cache"}
JUNK_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".db", ".sqlite")
# Top-level packages that must import from the handout and only from there.
HANDOUT_PACKAGES = ("course_lib", "grading", "solutions", "tests", "benchmarks")
# Subfolders of tests/ that hold test data rather than tests (copied if present).
PUBLIC_TEST_DATA_DIRS = ("data", "fixtures")
# nbgrader's delimiters (and the looser "BEGIN HIDDEN" some notebooks use).
MARKER_RE = re.compile(r"#{2,}\s*(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS|MARK SCHEME)|BEGIN HIDDEN")
# A statement (or pair of consecutive statements) of reference code counts as a leak when its AST
# has at least this many nodes: ``return x`` (3 nodes) or ``loss = nll`` (5) are too generic to
# mean anything; ``out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))`` has 27.
MIN_SINGLE_NODES = 20
MIN_PAIR_NODES = 14
MIN_BODY_NODES = 8
# Code between nbgrader delimiters is secret as a whole, even a one-line `check("0.1", hidden=True)`.
MIN_REGION_NODES = 5
# A line of a written model answer (a Markdown solution region) counts when it has this many characters.
MIN_ANSWER_CHARS = 40


class ReleaseError(RuntimeError):
    """The handout could not be written, or its scan found a problem."""


# -- writing the handout --------------------------------------------------------------------------
def _copytree(src: Path, dest: Path, skip: frozenset[Path] = frozenset()) -> None:
    """Copy ``src`` to ``dest`` without caches, bytecode, build output or the paths in ``skip``."""

    def ignore(directory, names):
        return {n for n in names if n in JUNK_DIRS or n.endswith(JUNK_SUFFIXES) or Path(directory, n) in skip}

    shutil.copytree(src, dest, ignore=ignore)


def _imports_solutions(path: Path) -> bool:
    """Whether a Python file imports ``solutions`` (statically or by a literal module name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if re.fullmatch(r"solutions(\.\w+)*", node.value) else []
        if any(n == "solutions" or n.startswith("solutions.") for n in names):
            return True
    return False


def _chapter_modules(root: Path) -> tuple[str, ...]:
    """``CHAPTER_MODULES`` of ``root``'s course_lib, read from the source (nothing is imported)."""
    tree = ast.parse((root / "course_lib" / "exercises.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "CHAPTER_MODULES":
            return tuple(ast.literal_eval(node.value))
    raise ReleaseError("course_lib/exercises.py defines no CHAPTER_MODULES")


def _student_pyproject(text: str) -> str:
    """``pyproject.toml`` with every ``solutions`` entry removed from the setuptools package lists."""
    out, section = [], ""
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
        if section.startswith("tool.setuptools") and re.match(r"\s*(include|packages)\s*=", line):
            line = re.sub(r'\s*"solutions[^"]*"\s*,?', "", line).replace(", ]", "]").replace(",]", "]")
        out.append(line)
    rewritten = "".join(out)
    problems = _pyproject_problems(rewritten)
    if problems:
        raise ReleaseError("could not rewrite pyproject.toml: " + "; ".join(problems))
    return rewritten


def _pyproject_problems(text: str) -> list[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return [f"pyproject.toml does not parse: {err}"]
    setuptools = data.get("tool", {}).get("setuptools", {})
    packages = setuptools.get("packages", [])
    listed = packages if isinstance(packages, list) else packages.get("find", {}).get("include", [])
    if not listed:
        return ["pyproject.toml lists no packages (tool.setuptools.packages[.find.include])"]
    return [f"pyproject.toml still packages {p!r}" for p in listed if p.split(".")[0].startswith("solutions")]


STUDENT_README = """\
# Large Language Models, Hands-On: your working copy

This folder is the student handout of the course: the package `course_lib` with every exercise as a
stub for you to complete, the public tests, the assignment notebooks and the book's sources.

## Install (Python >= 3.11)

```bash
python -m venv .venv && source .venv/bin/activate
pip install torch==2.13.0        # first, pinned: a looser request can pull a multi-GB CUDA build
pip install -e ".[dev]"           # course_lib, the test tools (add ",book" to build the book pages)
pip install --no-deps auto-gptq==0.7.1 autoawq==0.2.7.post3   # Chapter 11's GPTQ and AWQ references
```

## Work on a chapter

1. Open `course_lib/<chapter>.py` (chapters: {chapters}). Each exercise is a function marked
   `@exercise("0.1", points=...)`; its docstring states the contract and gives a hint, and its body
   raises `NotImplementedError` until you replace it with your code. This is the one file of the
   chapter that you edit: the tests, the assignment notebook and the grader all read it.
2. Run the chapter's tests, or one exercise's tests:

   ```bash
   pytest --chapter {first}
   pytest --exercise 0.1
   ```

   An untouched exercise fails with `NotImplementedError: Exercise 0.1: ...`; a wrong answer fails with
   a message that says what is off, then the line of the test and of your code where it happened. A
   file of yours that does not import (a syntax error) fails its own chapter's tests with the file,
   line and message, and leaves the other chapters alone. The tests run on a GPU when there is one
   and on the CPU otherwise.
3. The assignment notebooks are in `assignments/<chapter>/` (`pip install jupyterlab`, then
   `jupyter lab`). A notebook imports your `course_lib/<chapter>.py` and its test cells run the same
   tests as `pytest --exercise`. Beside each notebook, `<chapter>.py` is a link to your
   `course_lib/<chapter>.py`, not a copy: hand in the assignment's folder (`nbgrader submit`, or a zip of
   the folder, which stores the file the link points to), as your instructor tells you. Graders run
   more tests than the public ones, so make every case of the docstring work, not only the tested ones.

`COURSE_LIB_MODE` must stay unset (or `student`): the reference solutions are not part of this folder.
The book's pages under `book/` run the reference solutions, so read the published book rather than
building it here.
"""


def release_notebooks(assignments: Path, dest: Path, *, root: Path = ROOT) -> list[Path]:
    """Run nbgrader's ``generate_assignment`` on every ``assignments/<name>/`` holding a notebook.

    The run happens in a scratch course folder (its own gradebook, its own log) with the
    repository's ``nbgrader_config.py`` loaded first if there is one, so the student versions are
    exactly what nbgrader releases: solutions replaced by stubs, hidden tests and outputs removed,
    cells locked and checksummed. Every released file lands in ``dest/<name>/``.
    """
    folders = sorted(assignments.iterdir()) if assignments.is_dir() else []
    names = [d.name for d in folders if d.is_dir() and d.name not in JUNK_DIRS and any(d.glob("*.ipynb"))]
    written: list[Path] = []
    if not names:
        return written
    with tempfile.TemporaryDirectory(prefix="course-release-") as scratch:
        scratch = Path(scratch)
        repo_configs = [p for p in (root / "nbgrader_config.py", assignments / "nbgrader_config.py") if p.is_file()]
        (scratch / "nbgrader_config.py").write_text(textwrap.dedent(f"""\
            from traitlets.config.loader import PyFileConfigLoader
            c = get_config()
            for path in {[str(p) for p in repo_configs]!r}:
                c.merge(PyFileConfigLoader(path.rsplit("/", 1)[-1], path=path.rsplit("/", 1)[0]).load_config())
            c.CourseDirectory.root = {str(scratch)!r}
            c.CourseDirectory.source_directory = {str(assignments.resolve())!r}
            c.CourseDirectory.release_directory = {str(scratch / "release")!r}
            c.CourseDirectory.db_url = {"sqlite:///" + str(scratch / "gradebook.db")!r}
            c.CourseDirectory.directory_structure = "{{nbgrader_step}}/{{student_id}}/{{assignment_id}}"
            c.GenerateAssignment.create_assignment = True
            """))
        for name in names:
            proc = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force"],
                                  cwd=scratch, capture_output=True, text=True,
                                  env={**os.environ, "JUPYTER_CONFIG_DIR": str(scratch / "jupyter"),
                                       "COURSE_GRADING_DIR": str(scratch),
                                       # nbgrader runs `alembic` for the gradebook: this venv's one
                                       "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                                os.environ.get("PATH", os.defpath)])})
            released = scratch / "release" / name
            if proc.returncode != 0 or not released.is_dir():
                raise ReleaseError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}{proc.stderr}")
            _copytree(released, dest / name)
            written.append(dest / name)
    return written


def build_handout(out: Path | str, *, force: bool = False, root: Path = ROOT) -> list[str]:
    """Write the student handout into ``out``; return notes on what was left out and why.

    ``out`` must be new or empty; ``force`` replaces an earlier handout (a folder holding
    :data:`MARKER_FILE`), never any other folder.
    """
    out, root = Path(out).resolve(), Path(root).resolve()
    if out == root or root.is_relative_to(out) or out.is_relative_to(root):
        raise ReleaseError(f"write the handout outside the repository ({root}), not into {out}")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ReleaseError(f"{out} is not empty (use --force to replace an earlier handout)")
        if not (out / MARKER_FILE).is_file():
            raise ReleaseError(f"{out} is not empty and holds no earlier handout ({MARKER_FILE}): not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    chapters = _chapter_modules(root)

    _copytree(root / "course_lib", out / "course_lib")
    # grading/: the door, the codec, the pytest plugin, check(); not this instructor-only file.
    _copytree(root / "grading", out / "grading", skip=frozenset({root / "grading" / "release.py"}))

    tests = out / "tests"
    tests.mkdir()
    for path in sorted((root / "tests").iterdir()):
        if path.is_dir():
            if path.name in PUBLIC_TEST_DATA_DIRS:
                _copytree(path, tests / path.name)
            elif path.name not in JUNK_DIRS:
                notes.append(f"left out tests/{path.name}/ (hidden, mutants or infrastructure tests)")
        elif path.name.startswith("test_") and path.suffix == ".py" and path.stem[5:] not in chapters:
            notes.append(f"left out tests/{path.name} (not a chapter's graded tests)")
        elif not path.name.endswith(JUNK_SUFFIXES):
            shutil.copy2(path, tests / path.name)

    for folder in ("book", "configs"):  # the chapters' pages; launch configurations (Chapter 7's Accelerate files)
        if (root / folder).is_dir():
            _copytree(root / folder, out / folder)
    for name in ("_config.yml", "_toc.yml", ".gitignore", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)

    bench = root / "benchmarks"
    if bench.is_dir():
        importers = [p.name for p in sorted(bench.rglob("*.py")) if _imports_solutions(p)]
        if importers:
            notes.append(f"left out benchmarks/: {', '.join(importers)} import solutions")
        else:
            _copytree(bench, out / "benchmarks")

    (out / "pyproject.toml").write_text(_student_pyproject((root / "pyproject.toml").read_text()))
    (out / "README.md").write_text(STUDENT_README.format(chapters=", ".join(chapters), first=chapters[0]))
    released = release_notebooks(root / "assignments", out / "assignments", root=root)
    notes += [f"released assignment {p.name} (nbgrader generate_assignment)" for p in released]
    for folder in released:
        if folder.name in chapters:
            link_chapter_file(folder, folder.name)
    if not released:
        notes.append("no assignment notebooks in assignments/ to release")
    (out / MARKER_FILE).write_text(f"Student handout written by grading.release from {_git_describe(root)}.\n")
    return notes


def link_chapter_file(folder: Path, module: str) -> Path:
    """Put ``<module>.py`` beside the released notebook in ``folder`` as a relative link to the
    handout's ``course_lib/<module>.py``: the one file the student edits is also the one the
    notebook's folder hands in (``nbgrader submit`` and ``zip`` copy the file a link points to)."""
    link = folder / f"{module}.py"
    if link.is_symlink() or link.exists():
        link.unlink()  # nbgrader's copy of a stub, if the source folder had one
    link.symlink_to(Path("..", "..", "course_lib", f"{module}.py"))
    return link


def _git_describe(root: Path) -> str:
    proc = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return f"commit {proc.stdout.strip()}" if proc.returncode == 0 else str(root)


# -- a Python that sees the handout as a student's machine does ------------------------------------------
HANDOUT_ONLY = '''\
"""Answer the course's top-level packages from the student handout only (written by grading.release)."""
import os
import sys
from importlib.machinery import PathFinder

HANDOUT = {handout!r}
INSTRUCTOR = {instructor!r}
NAMES = {names!r}


class HandoutOnlyFinder:
    """First on sys.meta_path: no install of the instructor's repository can answer these names."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in NAMES:
            return None
        # sys.path as a student has it (a grading sandbox puts its own folder first), never the
        # instructor's tree, and the handout last.
        search = [p for p in sys.path if not (os.path.abspath(p or ".") + os.sep).startswith(INSTRUCTOR)] + [HANDOUT]
        spec = PathFinder.find_spec(fullname, search)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{fullname!r}} (not in the student handout)", name=fullname)
        return spec


sys.meta_path.insert(0, HandoutOnlyFinder)
'''


def student_python(handout: Path | str, where: Path | str) -> Path:
    """A Python interpreter for which the handout is all there is of the course.

    The instructor's venv has this repository installed (editable: ``course_lib``, ``solutions`` and
    ``grading`` import from it wherever you are), so running a handout with that venv's Python can
    silently use the instructor's files. Instead this makes a bare venv in ``where`` that reaches
    this interpreter's libraries (torch, pytest, ...) through a plain path in a ``.pth`` file -- so
    their own ``.pth`` files, the editable install's finder among them, never run -- and whose
    site-packages hold a finder, first on ``sys.meta_path``, that answers ``course_lib``, ``grading``,
    ``solutions``, ``tests`` and ``benchmarks`` from the handout folder or not at all. It is set up
    by a ``.pth`` import line, so it also holds for ``python -I`` children (``grading.check``).
    """
    handout, where = Path(handout).resolve(), Path(where).resolve()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, capture_output=True)
    site = Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(where), "platbase": str(where)}))
    libraries = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "course_handout_only.py").write_text(HANDOUT_ONLY.format(handout=str(handout), instructor=str(ROOT) + os.sep,
                                                                             names=set(HANDOUT_PACKAGES)))
    (site / "00-course-handout-only.pth").write_text("import course_handout_only\n")
    (site / "course-libraries.pth").write_text("".join(f"{p}\n" for p in libraries))
    return where / ("Scripts" if os.name == "nt" else "bin") / "python"


def student_env() -> dict[str, str]:
    """This environment as a student's shell would have it: student mode (``COURSE_LIB_MODE`` unset),
    no ``PYTHONPATH`` or pytest options, and no bytecode written into the handout."""
    drop = ("COURSE_LIB_MODE", "COURSE_LIB_STUDENT_MODULES", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
            "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- the scan --------------------------------------------------------------------------------------
def _size(node: ast.AST) -> int:
    """How many nodes ``node``'s tree has (itself included); kept on the node, as :func:`_digest`."""
    size = node.__dict__.get("_course_size")
    if size is None:
        size = node._course_size = 1 + sum(_size(child) for child in ast.iter_child_nodes(node))
    return size


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _blocks(tree: ast.AST):
    """Every statement list in ``tree`` (module, function, class, if/for/while/with/try bodies)."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and all(isinstance(s, ast.stmt) for s in block):
                yield _strip_docstring(block)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _digest(node: ast.AST) -> str:
    """A digest of ``node``'s normalised tree: equal exactly when ``ast.dump(node)`` is (node types, field
    names and values, no positions), up to a 128-bit hash collision. Computed once per node, bottom up,
    and kept on the node: a scan keys every statement, pair and block, and nested blocks share their
    statements, so dumping each one again made the scan quadratic in the nesting depth."""
    digest = node.__dict__.get("_course_digest")
    if digest is None:
        def value(v) -> str:
            if isinstance(v, ast.AST):
                return _digest(v)
            if isinstance(v, list):
                return "[" + ",".join(map(value, v)) + "]"
            return repr(v)

        text = type(node).__name__ + "(" + ",".join(f"{name}={value(v)}" for name, v in ast.iter_fields(node)) + ")"
        digest = node._course_digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
    return digest


def _key(stmts) -> str:
    return "\n".join(map(_digest, stmts))


@dataclass
class Fingerprints:
    """Normalised ASTs of code that must not reach students, each with where it comes from."""

    bodies: dict[str, str] = field(default_factory=dict)   # whole function bodies
    pieces: dict[str, str] = field(default_factory=dict)   # long statements, pairs, whole regions
    lengths: set[int] = field(default_factory=lambda: {1, 2})  # statement counts of the pieces
    hidden_names: dict[str, str] = field(default_factory=dict)  # names of hidden test functions
    answer_lines: dict[str, str] = field(default_factory=dict)  # lines of model answers (Markdown)

    def add_code(self, tree: ast.AST, origin: str, *, public: set[str] = frozenset()) -> None:
        for fn in _functions(tree):
            body = _strip_docstring(fn.body)
            if body and sum(map(_size, body)) >= MIN_BODY_NODES and _key(body) not in public:
                self.bodies.setdefault(_key(body), f"{origin}: body of {fn.name}()")
        for block in _blocks(tree):
            for i, stmt in enumerate(block):
                where = f"{origin} line {stmt.lineno}"
                if _size(stmt) >= MIN_SINGLE_NODES and not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) \
                        and _key([stmt]) not in public:
                    self.pieces.setdefault(_key([stmt]), where)
                pair = block[i:i + 2]
                if len(pair) == 2 and sum(map(_size, pair)) >= MIN_PAIR_NODES \
                        and not any(isinstance(s, (ast.FunctionDef, ast.ClassDef)) for s in pair) \
                        and _key(pair) not in public:
                    self.pieces.setdefault(_key(pair), where)

    def add_region(self, tree: ast.Module, origin: str, *, public: set[str] = frozenset()) -> None:
        """Code between nbgrader delimiters: its pieces, and the whole region however short."""
        self.add_code(tree, origin, public=public)
        body = _strip_docstring(tree.body)
        if body and sum(map(_size, body)) >= MIN_REGION_NODES and _key(body) not in public:
            self.pieces.setdefault(_key(body), f"{origin} (all of it)")
            self.lengths.add(len(body))


def _public_keys(tree: ast.AST) -> set[str]:
    keys = set()
    for fn in _functions(tree):
        keys.add(_key(_strip_docstring(fn.body)))
    for block in _blocks(tree):
        keys.update(_key([s]) for s in block)
        keys.update(_key(block[i:i + 2]) for i in range(len(block) - 1))
    return keys


def _parse(source: str) -> ast.AST | None:
    """Parse Python (or IPython: magics and shell lines are dropped); None if it is not code."""
    lines = ["" if re.match(r"\s*[%!]", line) else line for line in source.splitlines()]
    try:
        return ast.parse(textwrap.dedent("\n".join(lines)))
    except (SyntaxError, ValueError):
        return None


FENCE_RE = re.compile(r"^(`{3,}|~{3,})\s*(\{code-cell\}|python|py|ipython3?)(?![\w-])[^\n]*\n(.*?)^\1", re.M | re.S)


def _markdown_code(text: str) -> list[str]:
    """Python code blocks of a Markdown/MyST text (``{code-cell}`` options lines dropped)."""
    blocks = []
    for match in FENCE_RE.finditer(text):
        body = re.sub(r"^(:\w[\w-]*:.*\n)+", "", match.group(3))
        blocks.append(re.sub(r"^---\n.*?^---\n", "", body, flags=re.M | re.S))
    return blocks


def _words(line: str) -> str:
    return " ".join(line.split())


def _region(source: str, begin: str, end: str) -> list[str]:
    return re.findall(rf"^[ \t]*#+\s*{begin}[^\n]*\n(.*?)^[ \t]*#+\s*{end}", source, re.M | re.S)


def instructor_fingerprints(root: Path = ROOT) -> Fingerprints:
    """What must not leak, from ``root``: every function of ``solutions/``, the code between
    ``BEGIN SOLUTION``/``END SOLUTION`` and ``BEGIN HIDDEN TESTS``/``END HIDDEN TESTS`` in the source
    notebooks, and the hidden tests (their names and bodies). Code that the public tests or the
    source notebooks' public cells contain anyway is not counted."""
    fp = Fingerprints()
    public: set[str] = set()
    for path in sorted((root / "tests").glob("*.py")):
        if (tree := _parse(path.read_text())) is not None:
            public |= _public_keys(tree)
    notebooks = sorted((root / "assignments").glob("*/*.ipynb")) if (root / "assignments").is_dir() else []
    for nb in notebooks:
        for cell in json.loads(nb.read_text()).get("cells", []):
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") != "code":
                continue
            visible = re.sub(r"^[ \t]*#+\s*BEGIN (SOLUTION|HIDDEN TESTS).*?^[ \t]*#+\s*END \1[^\n]*\n?", "",
                             source, flags=re.M | re.S)
            if (tree := _parse(visible)) is not None:
                public |= _public_keys(tree)
    for path in sorted((root / "solutions").rglob("*.py")):
        if (tree := _parse(path.read_text())) is not None:
            fp.add_code(tree, f"solutions/{path.relative_to(root / 'solutions')}")
    for path in sorted((root / "tests" / "hidden").rglob("*.py")):
        if (tree := _parse(path.read_text())) is not None:
            fp.add_code(tree, f"tests/hidden/{path.name}", public=public)
            fp.hidden_names.update({f.name: f"tests/hidden/{path.name}" for f in _functions(tree)
                                    if f.name.startswith("test")})
    for nb in notebooks:
        for i, cell in enumerate(json.loads(nb.read_text()).get("cells", [])):
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") != "code":
                for region in _region(source, "BEGIN SOLUTION", "END SOLUTION"):
                    for line in region.splitlines():
                        if len(_words(line)) >= MIN_ANSWER_CHARS:
                            fp.answer_lines.setdefault(_words(line), f"{nb.relative_to(root)} cell {i} (model answer)")
                continue
            for kind, begin, end in (("solution", "BEGIN SOLUTION", "END SOLUTION"),
                                     ("hidden tests", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")):
                for region in _region(source, begin, end):
                    if (tree := _parse(region)) is not None:
                        fp.add_region(tree, f"{nb.relative_to(root)} cell {i} ({kind})", public=public)
    return fp


def _forbidden_files(root: Path) -> dict[str, str]:
    """Digest -> origin of every file of solutions/, tests/hidden/ and tests/mutants/."""
    digests = {}
    for folder in ("solutions", "tests/hidden", "tests/mutants"):
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            if path.is_file() and "__pycache__" not in path.parts and path.stat().st_size > 0:
                digests[hashlib.sha256(path.read_bytes()).hexdigest()] = str(path.relative_to(root))
    return digests


def _code_units(handout: Path, path: Path) -> list[tuple[str, str]]:
    """(where, Python source) of every piece of code in a handout file."""
    rel = str(path.relative_to(handout))
    text = path.read_text(errors="replace")
    if path.suffix == ".py":
        return [(rel, text)]
    if path.suffix in (".md", ".markdown", ".rst", ".txt"):
        return [(f"{rel} code block {i}", code) for i, code in enumerate(_markdown_code(text))]
    if path.suffix == ".ipynb":
        units = []
        try:
            cells = json.loads(text).get("cells", [])
        except json.JSONDecodeError:
            return [(rel, "")]
        for i, cell in enumerate(cells):
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") == "code":
                units.append((f"{rel} cell {i}", source))
            else:
                units += [(f"{rel} cell {i} code block {j}", c) for j, c in enumerate(_markdown_code(source))]
        return units
    return []


def _notebook_problems(rel: str, text: str) -> list[str]:
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as err:
        return [f"{rel}: not a valid notebook ({err})"]
    problems = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("outputs"):
            problems.append(f"{rel} cell {i}: has outputs (released notebooks must be cleared)")
    return problems


CHECK_EXERCISES = r'''
import ast, inspect, json, os, sys
handout = os.path.realpath(os.getcwd())
problems = []
import course_lib
from course_lib import exercises
if not os.path.realpath(course_lib.__file__).startswith(handout + os.sep):
    problems.append(f"course_lib imports from {course_lib.__file__}, not from the handout")
try:
    import solutions
    problems.append(f"solutions is importable from the handout ({solutions.__file__})")
except ModuleNotFoundError:
    pass
if exercises.get_mode() != "student":
    problems.append(f"mode is {exercises.get_mode()} with COURSE_LIB_MODE unset")

def scaffolded_stub(stub, ex):
    """Setup lines and then `raise NotImplementedError("Exercise <id>...")`, no return."""
    fn = ast.parse(inspect.cleandoc("\n" + inspect.getsource(stub))).body[0]
    last = fn.body[-1]
    inner = [n for s in fn.body for n in ast.walk(s)]
    return (isinstance(last, ast.Raise) and last.exc is not None and "NotImplementedError" in ast.unparse(last.exc)
            and f"Exercise {ex.id}" in ast.unparse(last.exc)
            and not any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) for n in inner))

ids = []
for ex in exercises.all_exercises():
    ids.append(ex.id)
    if exercises.uses_reference(ex.module):
        problems.append(f"exercise {ex.id} ({ex.qualname}) would run the reference in student mode")
    stub = exercises.stub(ex)
    params = inspect.signature(stub).parameters.values()
    args = [None for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kwargs = {p.name: None for p in params if p.default is p.empty and p.kind is p.KEYWORD_ONLY}
    try:
        stub(*args, **kwargs)
    except NotImplementedError as err:
        if f"Exercise {ex.id}" not in str(err):
            problems.append(f"exercise {ex.id} ({ex.qualname}) raises NotImplementedError without naming "
                            f"'Exercise {ex.id}': {err}")
        continue
    except Exception as err:
        if scaffolded_stub(stub, ex):
            continue
        problems.append(f"exercise {ex.id} ({ex.qualname}): the stub raised {type(err).__name__} ({err}), "
                        "not NotImplementedError: is it implemented?")
        continue
    problems.append(f"exercise {ex.id} ({ex.qualname}): the stub returns without raising NotImplementedError "
                    "(a solution in course_lib?)")
if not ids:
    problems.append("the handout's course_lib declares no exercises")
print(json.dumps({"exercises": ids, "problems": problems}))
'''


def check_exercises(handout: Path | str) -> tuple[list[str], list[str]]:
    """Call every exercise stub of the handout's course_lib in a student-mode subprocess.

    Returns (exercise ids, problems): each stub must raise ``NotImplementedError`` naming its
    exercise (or be setup lines ending in that raise), ``course_lib`` must import from the handout
    and ``solutions`` must not import at all.
    """
    handout = Path(handout).resolve()
    with tempfile.TemporaryDirectory(prefix="course-student-") as venv:
        proc = subprocess.run([str(student_python(handout, venv)), "-c", CHECK_EXERCISES], cwd=handout,
                              capture_output=True, text=True, env=student_env(), timeout=600)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return [], [f"calling the handout's exercise stubs failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"]
    return result["exercises"], result["problems"]


def scan_handout(path: Path | str, *, root: Path = ROOT, call_stubs: bool = True) -> list[str]:
    """Every problem found in the handout at ``path`` (empty: safe to hand out).

    - no ``solutions`` package or module, no ``hidden``/``mutants`` folder, no file under ``tests/``
      named like a hidden test, no byte-for-byte copy of a file of ``solutions/``, ``tests/hidden/`` or
      ``tests/mutants/``, no leftovers (``.git``, ``.venv``, ``_build``, caches, bytecode, databases);
    - no nbgrader delimiter (``### BEGIN SOLUTION``, ``### BEGIN HIDDEN TESTS``, ``BEGIN HIDDEN``, ...)
      in any text file;
    - no solution code in any ``.py`` file, notebook code cell, or Python block of a Markdown page:
      compared as ASTs (formatting, comments and docstrings do not matter) with every function of
      ``root/solutions`` and every solution/hidden-test region of the source notebooks: a whole
      function body that is the same (bodies of fewer than 8 AST nodes, like ``return x``, are too
      generic to count), any two consecutive statements that are the same (14+ nodes together) or any
      single long statement (20+ nodes) that is the same; test functions named like hidden tests, or
      with a hidden test's body, count too (code that the public tests also contain does not);
    - released notebooks carry no outputs; ``pyproject.toml`` does not package ``solutions``;
    - (``call_stubs``) in a subprocess that imports the handout only, in student mode: every exercise
      stub raises ``NotImplementedError`` naming its exercise, and ``import solutions`` fails.
    """
    handout, root = Path(path).resolve(), Path(root).resolve()
    if not handout.is_dir():
        return [f"{handout} is not a folder"]
    problems: list[str] = []
    fingerprints = instructor_fingerprints(root)
    forbidden = _forbidden_files(root)
    for file in sorted(handout.rglob("*")):
        rel = file.relative_to(handout)
        parts = rel.parts
        if file.is_symlink() and not file.resolve().is_relative_to(handout):
            problems.append(f"{rel}: a link to {os.readlink(file)}, outside the handout")
            continue
        if file.is_dir():
            if file.name in ("solutions", "hidden", "mutants"):
                problems.append(f"{rel}/: a {file.name} folder")
            elif file.name in JUNK_DIRS or file.name.endswith(JUNK_SUFFIXES):
                problems.append(f"{rel}/: should not be in a handout")
            continue
        if file.name == "solutions.py" or (parts[0] == "tests" and "hidden" in file.name.lower()):
            problems.append(f"{rel}: a solutions module or hidden test file by its name")
        if file.name.endswith(JUNK_SUFFIXES):
            problems.append(f"{rel}: should not be in a handout (bytecode or database)")
            continue
        data = file.read_bytes()
        if (origin := forbidden.get(hashlib.sha256(data).hexdigest())) and data.strip():
            problems.append(f"{rel}: a copy of the instructor's {origin}")
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for match in MARKER_RE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{rel} line {line}: nbgrader marker {match.group(0)!r}")
        if file.suffix == ".ipynb":
            problems += _notebook_problems(str(rel), text)
        if fingerprints.answer_lines:
            lines = text.splitlines()
            if file.suffix == ".ipynb":
                try:
                    lines = [ln for c in json.loads(text).get("cells", []) for ln in "".join(c.get("source", "")).splitlines()]
                except json.JSONDecodeError:
                    pass
            for n, line in enumerate(lines, 1):
                if (origin := fingerprints.answer_lines.get(_words(line))) is not None:
                    problems.append(f"{rel} line {n}: text of {origin}")
        for where, code in _code_units(handout, file):
            tree = _parse(code)
            if tree is None:
                if file.suffix == ".py":
                    problems.append(f"{where}: does not parse as Python")
                continue
            problems += _code_problems(where, tree, fingerprints)
    pyproject = handout / "pyproject.toml"
    if pyproject.is_file():
        problems += _pyproject_problems(pyproject.read_text())
    else:
        problems.append("pyproject.toml is missing")
    if call_stubs:
        problems += check_exercises(handout)[1]
    return problems


def _code_problems(where: str, tree: ast.AST, fp: Fingerprints) -> list[str]:
    problems, seen = [], set()

    def report(message: str) -> None:
        if message not in seen:
            seen.add(message)
            problems.append(message)

    for fn in _functions(tree):
        body = _strip_docstring(fn.body)
        if (origin := fp.bodies.get(_key(body))) is not None:
            report(f"{where} line {fn.lineno}: {fn.name}() has the body of {origin}")
        if (origin := fp.hidden_names.get(fn.name)) is not None:
            report(f"{where} line {fn.lineno}: {fn.name}() is a hidden test of {origin}")
    for block in _blocks(tree):
        for i, stmt in enumerate(block):
            for n in sorted(fp.lengths):
                if i + n > len(block):
                    break
                piece = block[i:i + n]
                if (origin := fp.pieces.get(_key(piece))) is not None:
                    report(f"{where} line {stmt.lineno}: code from {origin}")
    return problems


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write the handout into (new or empty)")
    parser.add_argument("--force", action="store_true", help="replace an earlier handout in OUT_DIR")
    parser.add_argument("--check", action="store_true", help="only scan the handout already in OUT_DIR")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if not args.check:
            for note in build_handout(out, force=args.force):
                print(f"  {note}")
            print(f"wrote the student handout to {out.resolve()}")
        problems = scan_handout(out)
    except ReleaseError as err:
        print(f"release failed: {err}", file=sys.stderr)
        return 1
    if problems:
        print(f"the handout in {out} is NOT safe to hand out ({len(problems)} problem(s)):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("scan: clean (no solutions, hidden tests or nbgrader markers; every exercise is a stub)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
