"""The adversarial suite: hostile submissions graded by the batch grader (grading.autograde), end to end.

Every hostile submission is Chapter 0 solved by the reference except the attacked exercise (mostly
0.1, 2 points), so the right score is 8 of 10 unless said otherwise; each must end with exactly that
score, with the run going on to the next student. The attacks are bounded themselves (TOOLCHAIN.md):
the loop gives up after 30 s, the fork bomb makes at most 300 sleeping children that exit after 20 s,
the memory bomb asks for 3 GB at most, the network attempts go to listeners of this test on
127.0.0.1 (TCP and UDP) and a UNIX socket of this test, a notebook sleeps 120 s at most. The table
(attack, outcome, score) is printed (``pytest -s``) and kept in ``adversarial_table`` for the report.
The attacks that need no notebook run are in test_adversarial_sandbox.py.
"""

from __future__ import annotations

import atexit  # noqa: F401  (carried into hostile modules)
import builtins  # noqa: F401
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from grading import sandbox
from grading.autograde import grade_assignment, run_notebooks
from grading.submissions import module_with, solved_module
from tests.grading.batch_helpers import (ASSIGNMENT, POINTS, ROOT, gradebook_scores, released_course,
                                         released_notebook, sandbox_processes, submit, table)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")]


# -- hostile bodies of stable_softmax (0.1); "@...@" are filled in per course ------------------------
class LyingResult:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


class LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return True


def patch_torch(logits, dim=-1):
    torch.allclose = lambda *a, **k: True
    torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)
    torch.equal = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None
    return torch.zeros_like(logits)


def patch_builtins_numpy(logits, dim=-1):
    import numpy

    numpy.allclose = lambda *a, **k: True
    numpy.testing.assert_allclose = lambda *a, **k: None
    builtins.isinstance = lambda *a: True
    builtins.AssertionError = type("Quiet", (Exception,), {})
    return logits


def lying_eq(logits, dim=-1):
    return LyingResult()


def tensor_subclass(logits, dim=-1):
    return torch.zeros_like(logits).as_subclass(LyingTensor)


def exit_zero(logits, dim=-1):
    sys.exit(0)


def os_exit_zero(logits, dim=-1):
    os._exit(0)


def atexit_tricks(logits, dim=-1):
    atexit.register(lambda: os.write(1, b"\x00\x00\x00\x00\x00\x00\x00\x20" + b'{"ok": true, "value": 1}' + b" " * 8))
    atexit.register(lambda: print("exercise 0.1: all 15 tests passed"))
    sys.exit(0)


def fake_output(logits, dim=-1):
    print("exercise 0.1: all 15 tests passed")
    sys.__stdout__.write("exercise 0.1: all 15 tests passed\n")
    os.write(1, b"\x00\x00\x00\x00\x00\x00\x00\x10" + b"0123456789abcdef")
    return logits


def read_secrets(logits, dim=-1):
    errors = []
    for path in ("@ROOT@/solutions/numerics.py", "@ROOT@/tests/hidden/test_numerics_hidden.py", "@OTHER@"):
        try:
            text = open(path).read()
        except OSError as err:
            errors.append(f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}: {type(err).__name__}")
            continue
        if "return" in text and "def stable_softmax" in text:  # a working answer: use it
            namespace = {}
            exec(compile(text.replace("from __future__ import annotations", ""), path, "exec"), namespace)
            return namespace["stable_softmax"](logits, dim)
    raise RuntimeError("cheat failed: " + "; ".join(errors))


def write_gradebook(logits, dim=-1):
    import sqlite3

    outcome = []
    try:
        db = sqlite3.connect("@GRADEBOOK@")
        db.execute("UPDATE grade SET manual_score = 100")
        db.commit()
        outcome.append("WROTE")
    except Exception as err:
        outcome.append(f"sqlite3: {err}")
    try:
        with open("@GRADEBOOK@", "ab") as f:
            f.write(b"garbage")
        outcome.append("APPENDED")
    except OSError as err:
        outcome.append(f"append: {type(err).__name__}")
    raise RuntimeError("gradebook " + "; ".join(outcome))


def endless_loop(logits, dim=-1):
    deadline = time.monotonic() + 30  # bounded: the sandbox must stop it long before
    while time.monotonic() < deadline:
        pass
    return torch.softmax(logits, dim=dim)


def memory_bomb(logits, dim=-1):
    hoard = []
    for _ in range(12):  # at most 3 GB, every page touched
        hoard.append(torch.ones(64 << 20))
    return torch.softmax(logits, dim=dim)


def fork_bomb(logits, dim=-1):
    children = 0
    try:
        for _ in range(300):  # bounded: each child sleeps 20 s, then exits
            if os.fork() == 0:
                time.sleep(20)
                os._exit(0)
            children += 1
    except OSError as err:
        raise RuntimeError(f"fork bomb stopped after {children} children: {err}")
    return torch.softmax(logits, dim=dim)  # all 300 forked: the sandbox did not limit it


def network(logits, dim=-1):
    try:
        conn = socket.create_connection(("127.0.0.1", int("@PORT@")), timeout=2)
        conn.sendall(b"leak")
    except OSError as err:
        raise RuntimeError(f"network: {type(err).__name__}: {err}")
    return torch.softmax(logits, dim=dim)  # connected: a right answer, which must not help


# -- the notebook attacks --------------------------------------------------------------------------
KERNEL_CELL = '''
import os, socket, sqlite3


def grader_environment():
    leaked = sorted(set(os.environ) & {"COURSE_GRADEBOOK_URL", "COURSE_TEST_GRADER_TOKEN"})
    if not leaked:
        raise LookupError("none of the grader's variables")
    return leaked


def other_students():
    seen = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            seen.append(open(f"/proc/{pid}/cmdline", "rb").read())
        except OSError:
            pass
    if not any(b"@OTHER_ID@" in line for line in seen):
        raise LookupError(f"no other student's id in {len(seen)} command lines")


for label, action in [
    ("gradebook", lambda: sqlite3.connect("@GRADEBOOK@").execute("UPDATE grade SET manual_score = 100").connection.commit()),
    ("solutions", lambda: open("@ROOT@/solutions/numerics.py").read()),
    ("own module", lambda: open("numerics.py", "a").write("\\n# changed by the kernel\\n")),
    ("other student", lambda: open("@OTHER@", "a").write("\\n# changed by another student's kernel\\n")),
    ("grader's environment", grader_environment),
    ("unix socket", lambda: socket.socket(socket.AF_UNIX).connect("@UNIX@")),
    ("other students' ids", other_students),
]:
    try:
        action()
        print(f"ATTACK {label}: SUCCEEDED")
    except Exception as err:
        print(f"ATTACK {label}: {type(err).__name__}")
try:  # UDP cannot fail here; the test's listener on 127.0.0.1 tells whether it arrived
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leak", ("127.0.0.1", int("@UDP@")))
except OSError:
    pass
import grading.check
grading.check.check = lambda *a, **k: print("all tests passed")
'''

UNDECODABLE_CELL = "import os\nos.write(2, b'\\xff\\xfe not UTF-8\\n')\nos.write(1, b'\\xc3\\x28\\n')\n"
SLEEPER_CELL = "import time\ntime.sleep(120)  # bounded; the notebook's limit stops it first\n"


def _cell(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": f"extra-{abs(hash(source)) % 10**8}",
            "metadata": {}, "outputs": [], "source": source}


def _edit_locked(nb: dict) -> dict:
    for cell in nb["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("test_") or grade_id == "setup":
            cell["source"] = "print('exercise: all tests passed')"
    return nb


def _delete_test_cell(nb: dict) -> dict:
    nb["cells"] = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") != "test_0_1"]
    return nb


def _kernel_attack(nb: dict, fill, cell: str = KERNEL_CELL) -> dict:
    first_test = next(i for i, c in enumerate(nb["cells"]) if c["metadata"].get("nbgrader", {}).get("grade_id") == "about_tests")
    nb["cells"].insert(first_test, _cell(fill(cell)))
    return nb


def _linked_submission(folder, fill) -> None:
    """Only links: a course_lib folder that is a classmate's submission, files that are the solutions
    and the hidden tests (which a copy that follows links would fill in), and a FIFO."""
    (folder / "course_lib").symlink_to(fill.other_folder())
    (folder / "leak.txt").symlink_to(ROOT / "solutions" / "numerics.py")
    (folder / "leak_hidden.txt").symlink_to(ROOT / "tests" / "hidden" / "test_numerics_hidden.py")
    os.mkfifo(folder / "pipe.txt")


# -- the run ------------------------------------------------------------------------------------------
def _swap_signature(source: str) -> str:
    old = "def stable_softmax(logits: torch.Tensor, dim: int = -1)"
    assert old in source
    return source.replace(old, "def stable_softmax(dim: int, logits: torch.Tensor)")


def _drop_function(source: str) -> str:
    start = source.index('@exercise("0.1"')
    end = source.index('@exercise("0.2"')
    return source[:start] + source[end:]


ATTACKS = [
    # name, what it tries, how the submission is made (fill -> module source, notebook or None), expected
    ("control: correct", "nothing", lambda f: (solved_module(ASSIGNMENT), None), 10),
    ("control: 0.1 unfinished", "nothing", lambda f: (module_with(ASSIGNMENT, {"0.1": None}), None), 8),
    ("patch torch.allclose/isclose/equal/testing", "patched in the module and the function",
     lambda f: (module_with(ASSIGNMENT, {"0.1": patch_torch}) + "\ntorch.allclose = lambda *a, **k: True\n", None), 8),
    ("patch builtins and numpy", "isinstance, AssertionError, numpy.allclose",
     lambda f: (module_with(ASSIGNMENT, {"0.1": patch_builtins_numpy}), None), 8),
    ("object with a lying __eq__", "", lambda f: (module_with(ASSIGNMENT, {"0.1": lying_eq}), None), 8),
    ("tensor subclass with a lying __eq__", "", lambda f: (module_with(ASSIGNMENT, {"0.1": tensor_subclass}), None), 8),
    ("sys.exit(0)", "", lambda f: (module_with(ASSIGNMENT, {"0.1": exit_zero}), None), 8),
    ("os._exit(0)", "", lambda f: (module_with(ASSIGNMENT, {"0.1": os_exit_zero}), None), 8),
    ("atexit handlers + sys.exit", "forged frame and fake line at exit",
     lambda f: (module_with(ASSIGNMENT, {"0.1": atexit_tricks}), None), 8),
    ("printing fake results", "fake pass lines, forged frames on fd 1",
     lambda f: (module_with(ASSIGNMENT, {"0.1": fake_output}), None), 8),
    ("read hidden tests / solutions / another student", "",
     lambda f: (f(module_with(ASSIGNMENT, {"0.1": read_secrets})), None), 8),
    ("write the gradebook (student module)", "", lambda f: (f(module_with(ASSIGNMENT, {"0.1": write_gradebook})), None), 8),
    ("endless loop", "", lambda f: (module_with(ASSIGNMENT, {"0.1": endless_loop}), None), 8),
    ("memory bomb (3 GB)", "", lambda f: (module_with(ASSIGNMENT, {"0.1": memory_bomb}), None), 8),
    ("fork bomb (300 sleepers)", "", lambda f: (module_with(ASSIGNMENT, {"0.1": fork_bomb}), None), 8),
    ("network socket to 127.0.0.1", "", lambda f: (f(module_with(ASSIGNMENT, {"0.1": network})), None), 8),
    ("syntax error", "", lambda f: (solved_module(ASSIGNMENT) + "\ndef broken(:\n    pass\n", None), 0),
    ("missing function", "stable_softmax deleted", lambda f: (_drop_function(solved_module(ASSIGNMENT)), None), 8),
    ("wrong signature", "parameters swapped", lambda f: (_swap_signature(solved_module(ASSIGNMENT)), None), 8),
    ("no module handed in", "", lambda f: (None, None), 0),
    ("edit locked cells", "test and setup cells print 'all passed'",
     lambda f: (module_with(ASSIGNMENT, {"0.1": None}), _edit_locked(f.notebook())), 8),
    ("delete a test cell", "test_0_1 removed",
     lambda f: (module_with(ASSIGNMENT, {"0.1": None}), _delete_test_cell(f.notebook())), 8),
    ("notebook kernel: gradebook, files, patch check()", "an added cell",
     lambda f: (module_with(ASSIGNMENT, {"0.1": None}), _kernel_attack(f.notebook(), f)), 8),
    ("links to a classmate, the solutions, a FIFO", "course_lib/ linked to a classmate's submission",
     lambda f: (None, None), 0),
    ("notebook: undecodable bytes on stderr", "an added cell", lambda f: (
        module_with(ASSIGNMENT, {"0.1": None}), _kernel_attack(f.notebook(), f, UNDECODABLE_CELL)), 8),
]


LINKED = {"links to a classmate, the solutions, a FIFO"}  # made by _linked_submission after submit()

# Attacks on the code grader's verdict alone: their notebook is the released one, and in the notebook's
# kernel the module has no verdict to forge (check() leaves scoring to the sandbox), so they are graded
# without running their notebooks. Attacks on files, the network, processes or memory are graded with
# their notebooks: the kernel, which imports the module for the experiments, is a second way in.
CODE_ONLY = {"patch torch.allclose/isclose/equal/testing", "patch builtins and numpy", "object with a lying __eq__",
             "tensor subclass with a lying __eq__", "sys.exit(0)", "atexit handlers + sys.exit",
             "printing fake results", "syntax error", "missing function", "wrong signature", "no module handed in"}


def _student(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]


class _Fill:
    """Fills the placeholders of hostile code with this course's paths."""

    def __init__(self, course, port, udp_port, unix_socket):
        self.course, self.port, self.udp_port, self.unix_socket = course, port, udp_port, unix_socket

    def other_folder(self):
        return self.course / "submitted" / _student("control: correct") / ASSIGNMENT

    def __call__(self, text: str) -> str:
        other = self.other_folder() / f"{ASSIGNMENT}.py"
        return (text.replace("@ROOT@", str(ROOT)).replace("@GRADEBOOK@", str(self.course / "gradebook.db"))
                .replace("@OTHER@", str(other)).replace("@PORT@", str(self.port))
                .replace("@UDP@", str(self.udp_port)).replace("@UNIX@", str(self.unix_socket))
                .replace("@OTHER_ID@", _student("control: correct")))

    def notebook(self) -> dict:
        return released_notebook(self.course)


adversarial_table: list[tuple] = []


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("adversarial") / "course"
    service = Path(tempfile.mkdtemp(prefix="adversarial-", dir="/tmp"))  # a folder any uid may enter
    service.chmod(0o755)
    secrets = {"COURSE_GRADEBOOK_URL": f"sqlite:///{course / 'gradebook.db'}",  # the default, spelled out
               "COURSE_TEST_GRADER_TOKEN": "grader-secret-token"}
    os.environ.update(COURSE_GRADING_DIR=str(course), **secrets)
    listener, udp, unix = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_UNIX)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    udp.bind(("127.0.0.1", 0))
    unix.bind(str(service / "gradebook.sock"))
    (service / "gradebook.sock").chmod(0o777)  # as a database's socket is
    unix.listen(8)
    for sock in (listener, udp, unix):
        sock.setblocking(False)
    try:
        released_course(course)
        fill = _Fill(course, listener.getsockname()[1], udp.getsockname()[1], service / "gradebook.sock")
        expected = {}
        for name, _, make, score in ATTACKS:
            module, notebook = make(fill)
            folder = submit(course, _student(name), module, notebook)
            if name in LINKED:
                _linked_submission(folder, fill)
            expected[_student(name)] = score
        other_before = (course / "submitted" / _student("control: correct") / ASSIGNMENT / f"{ASSIGNMENT}.py").read_text()
        limits = sandbox.Limits(call_timeout=5.0, exercise_timeout=20.0, submission_timeout=120.0, memory_bytes=3 << 29, processes=64,
                                cpu_seconds=120)
        started = time.monotonic()
        assert CODE_ONLY <= {name for name, *_ in ATTACKS}, CODE_ONLY - {name for name, *_ in ATTACKS}
        code_only = [_student(name) for name in CODE_ONLY]
        records = grade_assignment(ASSIGNMENT, jobs=2, limits=limits, course=course, progress=False, students=code_only,
                                   notebooks=False)
        records.update(grade_assignment(ASSIGNMENT, jobs=2, limits=limits, course=course, progress=False, cell_timeout=30,
                                        students=[s for s in expected if s not in code_only]))
        elapsed = time.monotonic() - started
        reached = []
        for label, sock, receive in (("TCP", listener, lambda s: s.accept()), ("UDP", udp, lambda s: s.recv(64)),
                                     ("UNIX socket", unix, lambda s: s.accept())):
            try:
                receive(sock)
                reached.append(label)
            except BlockingIOError:
                pass
        yield dict(course=course, records=records, expected=expected, reached=reached, elapsed=elapsed,
                   other_before=other_before)
    finally:
        for sock in (listener, udp, unix):
            sock.close()
        shutil.rmtree(service, ignore_errors=True)
        for name in ("COURSE_GRADING_DIR", *secrets):
            os.environ.pop(name, None)


def _outcome(course, student: str, record: dict) -> str:
    """What happened, in a few words: the attacked exercise's first message, or the added cell's output."""
    notebook = course / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    if notebook.is_file():
        printed = [line for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) for line in "".join(o.get("text", "")).splitlines()
                   if line.startswith("ATTACK")]
        if printed:
            return "; ".join(p.removeprefix("ATTACK ") for p in printed)
    ex = record["exercises"]["0.1"]
    if not ex["messages"]:
        return f"0.1: {ex['passed']} tests passed"
    return ex["messages"][0][:110]


def test_every_attack_gets_exactly_its_score_and_the_run_goes_on(graded):
    course, records, expected = graded["course"], graded["records"], graded["expected"]
    rows = []
    for name, what, _, score in ATTACKS:
        student = _student(name)
        record = records[student]
        rows.append((name, _outcome(course, student, record), f"{record['code_score']:g}/10 (expected {score})"))
    adversarial_table[:] = rows
    print("\n" + table(rows, ("attack", "outcome", "score")))
    print(f"\n{len(ATTACKS)} submissions graded in {graded['elapsed']:.0f} s with --jobs 2")
    got = {s: records[s]["code_score"] for s in expected}
    assert got == expected


def test_the_gradebook_holds_the_sandbox_scores_and_no_manual_score_appeared(graded):
    course, expected = graded["course"], graded["expected"]
    scores = gradebook_scores(course, expected)
    for student, cells in scores.items():
        assert sum(auto for name, (auto, manual) in cells.items() if name.startswith("test_")) == expected[student], student
        assert all(manual is None for auto, manual in cells.values()), (student, cells)


def test_no_secret_was_read_no_file_changed_no_connection_made_no_process_left(graded):
    course, records = graded["course"], graded["records"]
    messages = " ".join(m for r in records.values() for e in r["exercises"].values() for m in e["messages"])
    assert "cheat failed" in messages and "WROTE" not in messages and "APPENDED" not in messages
    assert "PermissionError" in messages
    assert not graded["reached"], f"a submission or a notebook reached this test's {graded['reached']} listener"
    other = course / "submitted" / _student("control: correct") / ASSIGNMENT / f"{ASSIGNMENT}.py"
    assert other.read_text() == graded["other_before"]
    kernel = _outcome(course, _student("notebook kernel: gradebook, files, patch check()"), {})
    assert "SUCCEEDED" not in kernel and kernel.count("Error") == 7, kernel
    assert not sandbox_processes(), "processes of a sandbox uid outlived the run"


def test_feedback_shows_results_and_messages_but_no_test_code(graded):
    course = graded["course"]
    student = _student("control: 0.1 unfinished")
    page = (course / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
    assert "exercise 0.1 (stable_softmax): 0 of 2 points" in page
    assert "NotImplementedError: Exercise 0.1" in page
    assert "exercise 0.4 (cross_entropy): 4 of 4 points" in page
    hidden = [line.strip() for line in (ROOT / "tests" / "hidden" / "test_numerics_hidden.py").read_text().splitlines()
              if "student." in line]
    assert not [line for line in hidden if line in page]


def test_a_rerun_changes_nothing(graded):
    course = graded["course"]
    before = gradebook_scores(course, graded["expected"])
    records = grade_assignment(ASSIGNMENT, jobs=2, course=course, progress=False, cell_timeout=30)
    assert {s: r["code_score"] for s, r in records.items()} == graded["expected"]
    assert gradebook_scores(course, graded["expected"]) == before


def test_links_and_special_files_were_set_aside_before_any_copy(graded):
    course = graded["course"]
    student = _student(next(iter(LINKED)))
    autograded = course / "autograded" / student / ASSIGNMENT
    quarantine = course / "autograde" / ASSIGNMENT / "quarantine" / student / ASSIGNMENT
    assert sorted(graded["records"][student]["rejected"]) == ["course_lib", "leak.txt", "leak_hidden.txt", "pipe.txt"]
    assert sorted(p.name for p in quarantine.iterdir()) == ["course_lib", "leak.txt", "leak_hidden.txt", "pipe.txt"]
    assert (quarantine / "leak.txt").is_symlink()  # set aside as it was, never followed
    secret = (ROOT / "solutions" / "numerics.py").read_text()
    copied = {p.name: p.read_text(errors="replace") for p in autograded.rglob("*") if p.is_file()}
    assert not {"leak.txt", "leak_hidden.txt", "pipe.txt"} & set(copied), sorted(copied)
    assert not [name for name, text in copied.items() if secret[-300:] in text]


def test_a_notebook_that_runs_too_long_costs_that_notebook_only(graded):
    course = graded["course"]
    sleeper = "notebook_sleeps_past_its_limit"
    submit(course, sleeper, module_with(ASSIGNMENT, {"0.1": None}),
           _kernel_attack(released_notebook(course), lambda text: text, SLEEPER_CELL))
    log = course / "autograde" / ASSIGNMENT / "logs" / "timeout-test.log"
    started = time.monotonic()
    status = run_notebooks(course, ASSIGNMENT, [sleeper], log, cell_timeout=200, notebook_timeout=20)
    assert status[sleeper].startswith("failed (the notebook ran past 20 s"), status
    assert time.monotonic() - started < 120, "the notebook's run was not stopped at its limit"
