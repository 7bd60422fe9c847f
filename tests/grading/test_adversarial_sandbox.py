"""The adversarial suite, part two: the holes an outside security test found in the grader (issue 12)
that need no nbgrader run, each attacked the way the test did (the notebook's share is in
test_adversarial.py, the busy machine's in test_batch_grading.py).

The attacks are bounded themselves (TOOLCHAIN.md): at most 1.2 GiB of shared memory and 600 MiB of
files, a forged reply of 40 MB, sleepers that end after 60 s, busy processes that stop after 60 s,
sockets of this test on this machine only.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import solutions.numerics as reference
from grading import check, sandbox
from grading.door import SandboxDoor, SandboxUnavailable, SubmissionError, SubmissionTimeout
from grading.submissions import module_with, solved_module
from tests.grading.batch_helpers import ROOT, busy_machine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")]
needs_root = pytest.mark.skipif(not sandbox.privileged(), reason="the uid, namespace and mount layers need root")


@contextlib.contextmanager
def _door(source: str, folder: Path | None = None, **limits):
    folder = Path(folder or tempfile.mkdtemp(prefix="adversarial-"))
    (folder / "numerics.py").write_text(source)
    door = SandboxDoor(folder, limits=sandbox.Limits.from_env(**limits))
    try:
        yield door
    finally:
        door.close()
        shutil.rmtree(folder, ignore_errors=True)


def _open_folder() -> Path:
    """A folder that any uid may enter (where a service would put its UNIX socket)."""
    folder = Path(tempfile.mkdtemp(prefix="adversarial-", dir="/tmp"))
    folder.chmod(0o755)
    return folder


# -- 1. a submission's conftest.py -----------------------------------------------------------------
CONFTEST = """
import pathlib, pytest
pathlib.Path(@MARKER@).write_text("a submission's conftest.py ran in the grader")

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    report.outcome, report.longrepr = "passed", None
    return report
"""


def test_a_submissions_conftest_never_runs_in_the_grader_however_the_command_is_spelled(tmp_path):
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "numerics.py").write_text(module_with("numerics", {"0.1": None}))  # 0.1 left a stub
    marker = tmp_path / "conftest-ran"
    (folder / "conftest.py").write_text(CONFTEST.replace("@MARKER@", repr(str(marker))))

    # the README's spelling, with a space: pytest's first pass must not take DIR for a test path
    spaced = subprocess.run([sys.executable, "-m", "pytest", "tests/test_numerics.py", "--submission", str(folder),
                             "--exercise", "0.1", "-x", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = spaced.stdout.strip().splitlines()[-1]
    assert not marker.exists(), "pytest imported the submission's conftest.py"
    assert "failed" in summary and "passed" not in summary, summary
    # the submission's folder given as a test path is refused before any conftest is read
    refused = subprocess.run([sys.executable, "-m", "pytest", str(folder), f"--submission={folder}", "-q",
                              "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0 and not marker.exists(), refused.stdout[-2000:] + refused.stderr[-2000:]
    # what a notebook's test cell calls
    with pytest.raises(AssertionError, match="failed"):
        check.check("0.1", submission=folder)
    assert not marker.exists(), "check() imported the submission's conftest.py"


# -- 2. links, hard links and special files ----------------------------------------------------------
def test_links_hard_links_and_special_files_are_never_read_as_a_submission(tmp_path):
    classmate = tmp_path / "classmate"
    (classmate / "course_lib").mkdir(parents=True)
    (classmate / "course_lib" / "numerics.py").write_text(solved_module("numerics"))
    cases = {
        "a module linked to the reference solutions":
            lambda d: (d / "numerics.py").symlink_to(ROOT / "solutions" / "numerics.py"),
        "a course_lib folder linked to a classmate's":
            lambda d: (d / "course_lib").symlink_to(classmate / "course_lib"),
        "a hard link to a classmate's module":
            lambda d: os.link(classmate / "course_lib" / "numerics.py", d / "numerics.py"),
        "a FIFO in the module's place": lambda d: os.mkfifo(d / "numerics.py"),
    }
    for name, make in cases.items():
        folder = tmp_path / name.replace(" ", "_").replace("'", "")
        folder.mkdir()
        make(folder)
        with pytest.raises(SubmissionError, match="no chapter module"):
            SandboxDoor(folder)  # refused before anything is copied or started
        print(f"{name}: refused")


# -- 3. processes that leave their session --------------------------------------------------------
def setsid_sleeper(x, dim=-1, keepdim=False):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(60)  # bounded: ends by itself after a minute
        os._exit(0)
    os.wait()
    return torch.logsumexp(x, dim=dim, keepdim=keepdim)


def _live(uid: int, seconds: float = 5.0) -> list[int]:
    """Processes of ``uid`` still running after at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while (running := sandbox.pids(uid=uid, zombies=False)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


@needs_root
def test_kill_uid_kills_a_process_that_left_its_session_and_checks_it_is_gone():
    slot = sandbox.acquire_uid()
    try:
        subprocess.run(["/bin/sh", "-c", "setsid sleep 60 >/dev/null 2>&1 < /dev/null & exit 0"], user=slot.uid,
                       group=slot.uid, extra_groups=[], check=True, timeout=30)
        assert _live(slot.uid, seconds=0), "the sleeper did not start"
        sandbox.kill_uid(slot.uid)
        assert _live(slot.uid) == []
    finally:
        slot.release()


@needs_root
def test_a_sandbox_leaves_no_process_behind_even_one_that_left_its_session():
    with _door(module_with("numerics", {"logsumexp": setsid_sleeper}), call_timeout=60) as door:
        torch.testing.assert_close(door.logsumexp(torch.zeros(2, 3)), reference.logsumexp(torch.zeros(2, 3)))
        uid = door._slot.uid
    assert _live(uid) == [], "a process of the sandbox outlived it"


def test_a_sandbox_that_cannot_start_costs_no_points_but_marks_the_exercises_for_a_regrade(tmp_path, monkeypatch):
    from grading import autograde

    (tmp_path / "numerics.py").write_text(solved_module("numerics"))
    monkeypatch.setenv("COURSE_SANDBOX_BWRAP", "/nonexistent/bwrap")  # the grader's machine is broken
    result = autograde.grade_code(tmp_path, ["numerics"], sandbox.Limits(call_timeout=60))
    assert result["status"] == "ok", result  # the trusted run itself finished
    for ex in result["exercises"].values():
        assert ex["regrade"] and ex["failed"] == 0 and ex["score"] == 0, ex
    assert "could not be started" in autograde.regrade_reasons(result)[0]


# -- 5 and 6. sockets by path; solutions in an installed package -------------------------------------
def unix_socket(logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    import socket

    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(2)
    try:
        conn.connect("@SOCKET@")
        conn.sendall(b"UPDATE grade SET manual_score = 100")
    except OSError as err:
        raise ValueError(f"unix socket: {type(err).__name__}")
    raise ValueError("unix socket: CONNECTED")


def read_installed_solutions(logits, dim=-1):
    try:
        text = open("@INSTALLED@").read()
    except OSError as err:
        raise ValueError(f"installed solutions: {type(err).__name__}")
    raise ValueError(f"installed solutions: READ {len(text)} characters")


def test_the_installed_package_holds_no_solutions():
    from setuptools.config.pyprojecttoml import read_configuration

    # the packages `pip install .` puts into site-packages, as setuptools finds them from pyproject.toml
    packages = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]
    assert "course_lib" in packages and "grading" in packages
    assert not [p for p in packages if p.split(".")[0] == "solutions"], f"`pip install .` would ship {packages}"


@needs_root
def test_a_sandbox_reaches_no_unix_socket_and_no_solutions_in_a_readable_tree(monkeypatch):
    service = _open_folder()
    installed = _open_folder() / "site-packages"  # as `pip install .` of an older version left it
    try:
        (installed / "solutions").mkdir(parents=True)
        shutil.copyfile(ROOT / "solutions" / "numerics.py", installed / "solutions" / "numerics.py")
        for path in (installed, installed / "solutions", installed / "solutions" / "numerics.py"):
            path.chmod(0o755)
        monkeypatch.syspath_prepend(str(installed))  # a readable library folder of the grader's Python
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(service / "gradebook.sock"))
        (service / "gradebook.sock").chmod(0o777)  # as a database's socket is
        listener.listen(4)
        listener.setblocking(False)
        source = (module_with("numerics", {"cross_entropy": unix_socket, "stable_softmax": read_installed_solutions})
                  .replace("@SOCKET@", str(service / "gradebook.sock"))
                  .replace("@INSTALLED@", str(installed / "solutions" / "numerics.py")))
        with _door(source, call_timeout=60) as door:
            with pytest.raises(ValueError, match="unix socket: (FileNotFoundError|PermissionError)"):
                door.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))
            with pytest.raises(ValueError, match="installed solutions: (FileNotFoundError|PermissionError)"):
                door.stable_softmax(torch.zeros(2, 3))
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        shutil.rmtree(service, ignore_errors=True)
        shutil.rmtree(installed.parent, ignore_errors=True)


# -- 7. limits: shared memory, disk, the reply, the sandbox folder, a busy machine -----------------
def memfd_hoard(logits, dim=-1):
    held, chunk = [], b"\1" * (1 << 20)
    for i in range(20):  # bounded: 20 files of 60 MiB, 1.2 GiB at most
        fd = os.memfd_create(f"hoard{i}")
        for _ in range(60):
            os.write(fd, chunk)
        held.append(fd)
    time.sleep(3)  # held, unmapped: no process's resident memory shows it
    return torch.softmax(logits, dim=dim)


def fill_disk(x, dim=-1, keepdim=False):
    written, chunk = 0, b"\0" * (1 << 20)
    try:
        for i in range(10):  # bounded: ten files of 60 MiB, 600 MiB at most
            with open(f"fill{i}", "wb") as f:
                for _ in range(60):
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
    except OSError:
        pass
    raise ValueError(f"written={written}")


def forged_reply(logits, dim=-1):
    import struct

    header = b"[" + b"1.5," * (10 << 20) + b"1.5]"  # 40 MB of JSON: ten million floats
    message = struct.pack(">I", len(header)) + header + struct.pack(">Q", 0)
    frame = struct.pack(">Q", len(message)) + message
    for fd in range(3, 32):  # the reply pipe is one of these
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, frame)
        except OSError:
            pass
    return torch.softmax(logits, dim=dim)


@needs_root
def test_shared_memory_files_and_disk_are_limited_and_a_forged_reply_costs_the_grader_nothing(monkeypatch):
    monkeypatch.setenv("COURSE_SANDBOX_DISK_BYTES", str(128 << 20))
    source = module_with("numerics", {"stable_softmax": memfd_hoard, "logsumexp": fill_disk,
                                      "log_softmax": forged_reply})
    with _door(source, call_timeout=60, memory_bytes=768 << 20, file_bytes=64 << 20) as door:
        with pytest.raises(SubmissionError, match="memory"):
            door.stable_softmax(torch.zeros(2, 3))
        with pytest.raises(ValueError, match=r"written=\d+") as err:
            door.logsumexp(torch.zeros(2, 3))
        written = int(str(err.value).split("=")[1])
        print(f"ten files of 60 MiB: {written >> 20} MiB written in all")
        assert written <= 128 << 20, f"the sandbox wrote {written >> 20} MiB in all (the cap is 128 MiB)"

        door.start()
        peak, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time()
        with pytest.raises(SubmissionError):
            door.log_softmax(torch.zeros(2, 3))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) >> 10  # MiB
        cpu = time.process_time() - cpu
        print(f"forged 40 MB reply: the grader grew by {grown} MiB and spent {cpu:.1f} s of CPU on it")
        assert grown < 200 and cpu < 3, (grown, cpu)


def test_check_keeps_the_sandbox_folder_setting_but_not_the_limits(monkeypatch):
    monkeypatch.setenv("COURSE_SANDBOX_DIR", "/srv/course-sandbox")
    monkeypatch.setenv("COURSE_SANDBOX_CALL_TIMEOUT", "100000")
    env = check._clean_environment()
    assert env.get("COURSE_SANDBOX_DIR") == "/srv/course-sandbox"
    assert "COURSE_SANDBOX_CALL_TIMEOUT" not in env


def one_cpu_second(logits, dim=-1):
    started = time.process_time()
    while time.process_time() - started < 1.0:  # one second of its own CPU time, however long it waits
        pass
    return torch.softmax(logits, dim=dim)


def sleeper(logits, dim=-1):
    time.sleep(30)  # bounded; sleeping is the submission's own time
    return torch.log_softmax(logits, dim=dim)


def test_a_busy_machine_does_not_time_out_an_honest_call_but_sleeping_still_counts():
    source = module_with("numerics", {"stable_softmax": one_cpu_second, "log_softmax": sleeper})
    with _door(source, call_timeout=60) as door:
        torch.testing.assert_close(door.logsumexp(torch.zeros(2, 3)), reference.logsumexp(torch.zeros(2, 3)))
        door.call_timeout = 2.5
        with busy_machine(workers=3 * (os.cpu_count() or 1), seconds=60):
            started = time.monotonic()
            out = door.stable_softmax(torch.zeros(2, 3))
            wall = time.monotonic() - started
        print(f"one CPU second on a busy machine: {wall:.1f} s of wall time, charged {door.spent_on['stable_softmax']:.1f} s")
        torch.testing.assert_close(out, reference.stable_softmax(torch.zeros(2, 3)))
        door.call_timeout = 2.0
        with pytest.raises(SubmissionTimeout):
            door.log_softmax(torch.zeros(2, 3))


# -- 8. other students' ids ---------------------------------------------------------------------------
def peek_at_processes(logits, dim=-1):
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    raise ValueError(f"{len(lines)} processes seen; " + " | ".join(line for line in lines if "student_id" in line)[:1000])


@needs_root
def test_a_sandbox_sees_no_other_process_and_so_no_other_students_id():
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "--CourseDirectory.student_id_exclude=decoy_student_one,decoy_student_two"])
    try:
        with _door(module_with("numerics", {"stable_softmax": peek_at_processes}), call_timeout=60) as door:
            with pytest.raises(ValueError, match="processes seen") as err:
                door.stable_softmax(torch.zeros(2, 3))
        seen = str(err.value)
        assert "decoy_student" not in seen, seen
        assert int(seen.split()[0]) <= 4, seen  # bwrap's init, the runner and what it started
    finally:
        decoy.kill()
        decoy.wait()


# -- without bubblewrap: refuse as root, or the older layers when told so ------------------------------
@needs_root
def test_without_bubblewrap_the_grader_refuses_unless_told_to_use_the_older_layers(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found
    with _door(solved_module("numerics"), call_timeout=60) as door:
        with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
            door.start()
    monkeypatch.setenv("COURSE_SANDBOX_BWRAP", "off")
    with _door(solved_module("numerics"), call_timeout=60) as door:
        report = door.start()
        assert report["pid"] is None and report["uid"] and report["net"] == "namespace" and report["fs"], report
        torch.testing.assert_close(door.logsumexp(torch.zeros(2, 3)), reference.logsumexp(torch.zeros(2, 3)))
