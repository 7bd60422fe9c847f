"""The sandboxed door (grading.door.SandboxDoor) against a correct submission and hostile ones.

Submissions are made from the repository by grading.submissions; the hostile bodies below are
bounded themselves (a loop gives up after 30 s, nothing forks or allocates much), so that a bug in
the door cannot hurt the machine.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import pytest
import torch

import solutions.numerics as reference
from grading.door import SandboxDoor, SubmissionError, SubmissionTimeout
from grading.submissions import module_with, solved_module

CALL_TIMEOUT = 2.0


# -- hostile completions (their bodies are spliced into numerics.py) -----------------------------
def hostile_loop(logits, dim=-1):
    deadline = time.monotonic() + 30  # bounded: the door must stop it long before
    while time.monotonic() < deadline:
        pass
    return torch.softmax(logits, dim=dim)


def hostile_os_exit(x, dim=-1, keepdim=False):
    os._exit(0)


def hostile_sys_exit(logits, dim=-1):
    sys.exit(0)


class LyingResult:
    """Equal to everything: a test that compared with ``==`` would pass."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


def hostile_lying_object(logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    return LyingResult()


class LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return True


def hostile_lying_tensor(x, dim=-1, keepdim=False):
    return torch.logsumexp(x, dim=dim, keepdim=keepdim).as_subclass(LyingTensor)


def hostile_printer(logits, dim=-1):
    fake = b"\x00\x00\x00\x00\x00\x00\x00\x10" + b"not a real reply"  # a forged length-prefixed frame
    print("debug: softmax called")
    sys.stdout.buffer.write(fake)
    sys.stdout.flush()
    sys.__stdout__.write("to the original stdout object\n")
    sys.__stdout__.flush()
    os.write(1, fake)
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    return torch.exp(shifted) / torch.exp(shifted).sum(dim=dim, keepdim=True)


# -- doors ------------------------------------------------------------------------------------
def _door(tmp_path_factory, name: str, source: str):
    """A door on a submission folder holding ``source`` as numerics.py. Its call limit is generous
    (starting the child imports torch); the loop test lowers it to CALL_TIMEOUT for its call."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "numerics.py").write_text(source)
    door = SandboxDoor(folder, call_timeout=60.0)
    yield door
    door.close()


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    yield from _door(tmp_path_factory, "solved", solved_module("numerics"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    yield from _door(tmp_path_factory, "hostile", module_with("numerics", {
        "stable_softmax": hostile_loop, "logsumexp": hostile_os_exit,
        "log_softmax": hostile_sys_exit, "cross_entropy": hostile_lying_object}))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    yield from _door(tmp_path_factory, "noisy", module_with("numerics", {
        "stable_softmax": hostile_printer, "logsumexp": hostile_lying_tensor, "cross_entropy": None}))


def _inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64) * 30
    logits[0, 1] = float("-inf")
    targets = torch.randint(0, 7, (3, 5), generator=gen)
    targets[1, 2] = -100
    return logits, targets


def _same(actual, expected):
    assert type(actual) is torch.Tensor
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


# -- a correct submission ---------------------------------------------------------------------
def test_solved_submission_gives_the_reference_results(solved):
    logits, targets = _inputs()
    _same(solved.stable_softmax(logits, dim=1), reference.stable_softmax(logits, dim=1))
    _same(solved.logsumexp(logits, dim=-1, keepdim=True), reference.logsumexp(logits, dim=-1, keepdim=True))
    _same(solved.log_softmax(logits), reference.log_softmax(logits))
    for reduction in ("mean", "sum", "none"):
        _same(solved.cross_entropy(logits[1:], targets[1:], label_smoothing=0.1, reduction=reduction),
              reference.cross_entropy(logits[1:], targets[1:], label_smoothing=0.1, reduction=reduction))


def test_argument_errors_cross_the_door_as_the_same_exception(solved):
    with pytest.raises(ValueError, match="targets"):
        solved.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 5]))


# -- stubs and hostile submissions ------------------------------------------------------------------
def test_a_stub_raises_not_implemented_error_through_the_door(noisy):
    logits, targets = _inputs()
    with pytest.raises(NotImplementedError, match="Exercise 0.4"):
        noisy.cross_entropy(logits, targets)


def test_an_endless_loop_is_stopped_by_the_call_timeout_and_the_door_recovers(hostile):
    with pytest.raises(SubmissionError, match="SystemExit"):  # the child survives this one: it is up
        hostile.log_softmax(torch.zeros(2, 3))
    pid = hostile._proc.pid
    hostile.call_timeout = CALL_TIMEOUT
    spent = hostile.spent_on.get("stable_softmax", 0.0)
    try:
        with pytest.raises(SubmissionTimeout, match=f"longer than {CALL_TIMEOUT:g} s"):
            hostile.stable_softmax(torch.zeros(2, 3))
    finally:
        hostile.call_timeout = 60.0
    # stopped once charged its limit (CPU time here: a busy machine stretches the wall time only)
    assert CALL_TIMEOUT <= hostile.spent_on["stable_softmax"] - spent <= CALL_TIMEOUT + 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the looping child is gone, not left running
    if hostile._slot is not None:
        assert sandbox.pids(uid=hostile._slot.uid, zombies=False) == []
    with pytest.raises(SubmissionError, match="LyingResult"):  # the next call gets a fresh child
        hostile.cross_entropy(*_inputs())


def test_os_exit_inside_the_function_is_a_failure_not_a_pass(hostile):
    with pytest.raises(SubmissionError, match="ended"):
        hostile.logsumexp(torch.zeros(2, 3))
    with pytest.raises(SubmissionError, match="SystemExit"):  # and the next call gets a new child
        hostile.log_softmax(torch.zeros(2, 3))


def test_sys_exit_inside_the_function_is_a_failure_not_a_pass(hostile):
    with pytest.raises(SubmissionError, match="SystemExit"):
        hostile.log_softmax(torch.zeros(2, 3))


def test_an_object_with_a_lying_eq_is_rejected(hostile):
    with pytest.raises(SubmissionError, match="LyingResult"):
        hostile.cross_entropy(*_inputs())


def test_a_tensor_subclass_with_a_lying_eq_is_rejected(noisy):
    with pytest.raises(SubmissionError, match="LyingTensor"):
        noisy.logsumexp(torch.zeros(2, 3))


def test_printing_to_stdout_does_not_corrupt_the_protocol(noisy):
    logits, _ = _inputs()
    expected = reference.stable_softmax(logits[1:])
    for _ in range(2):  # the forged frames went to the log, not into the reply stream
        torch.testing.assert_close(noisy.stable_softmax(logits[1:]), expected, equal_nan=True)
    _same(noisy.log_softmax(logits), reference.log_softmax(logits))


# -- the operating-system limits (grading.sandbox) ------------------------------------------------
from grading import sandbox  # noqa: E402

needs_root = pytest.mark.skipif(not sandbox.privileged(), reason="the uid, namespace and mount layers need root")


def probe_environment(logits, dim=-1):
    import socket

    seen = {"uid": os.getuid(), "groups": os.getgroups()}
    for label, path in (("solutions", "@ROOT@/solutions/numerics.py"), ("hidden", "@ROOT@/tests/hidden/__init__.py"),
                        ("course_lib", "@ROOT@/course_lib/numerics.py"), ("tmp", "/tmp")):
        try:
            os.listdir(path) if os.path.isdir(path) else open(path).read(1)
            seen[label] = "read"
        except OSError as err:
            seen[label] = type(err).__name__
    try:
        open("@ROOT@/written-by-the-sandbox", "w")
        seen["write"] = "written"
    except OSError as err:
        seen["write"] = type(err).__name__
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
        seen["net"] = "connected"
    except OSError as err:
        seen["net"] = type(err).__name__
    raise ValueError(repr(seen))


def hostile_fork(x, dim=-1, keepdim=False):
    children = 0
    try:
        for _ in range(300):  # bounded: each child sleeps 20 s, then exits
            if os.fork() == 0:
                time.sleep(20)
                os._exit(0)
            children += 1
    except OSError:
        pass
    raise ValueError(f"children={children}")


def hostile_hoard(logits, dim=-1):
    hoard = [torch.ones(64 << 20) for _ in range(12)]  # at most 3 GB, every page touched
    return logits + len(hoard)


@pytest.fixture(scope="module")
def probing(tmp_path_factory):
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    source = module_with("numerics", {"stable_softmax": probe_environment, "logsumexp": hostile_fork,
                                      "log_softmax": hostile_hoard}).replace("@ROOT@", root)
    folder = tmp_path_factory.mktemp("probing")
    (folder / "numerics.py").write_text(source)
    door = SandboxDoor(folder, limits=sandbox.Limits(call_timeout=60, memory_bytes=1 << 30, processes=48))
    yield door
    door.close()


@needs_root
def test_the_child_runs_confined_as_root_sets_it_up(probing):
    report = probing.start()
    assert report["uid"] >= 61000 and report["net"] == "namespace" and report["fs"], report
    with pytest.raises(ValueError) as err:
        probing.stable_softmax(torch.zeros(2, 3))
    seen = eval(str(err.value))  # a dict of words, made by this test's own probe
    assert seen["uid"] == report["uid"] and seen["groups"] == []
    # refused (Landlock) or not even there (bubblewrap's file system holds only what it may read)
    assert {seen[k] for k in ("solutions", "hidden", "course_lib", "tmp", "write")} <= {"PermissionError",
                                                                                      "FileNotFoundError"}, seen
    assert seen["net"] in ("PermissionError", "OSError") or "Error" in seen["net"], seen


@needs_root
def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing(probing):
    with pytest.raises(ValueError, match=r"children=\d+") as err:
        probing.logsumexp(torch.zeros(2, 3))
    assert int(str(err.value).split("=")[1]) < 48  # RLIMIT_NPROC of the sandbox's own uid
    uid = probing._slot.uid
    probing._stop_child()
    assert sandbox.pids(uid=uid) == []


def test_a_memory_bomb_is_stopped(probing):
    # RLIMIT_DATA makes the allocation fail (RuntimeError); on a GPU run the RSS watchdog kills it
    with pytest.raises((SubmissionError, RuntimeError), match="memory|allocate"):
        probing.log_softmax(torch.zeros(2, 3))
    assert probing.stable_softmax  # the door still works for the next call


def slow_softmax(logits, dim=-1):
    """Right, after 1 s of CPU time."""
    started = time.process_time()
    while time.process_time() - started < 1.0:
        pass
    return torch.softmax(logits, dim=dim)


def test_per_exercise_and_per_submission_time_budgets(tmp_path):
    (tmp_path / "numerics.py").write_text(module_with("numerics", {"stable_softmax": slow_softmax}))
    for budget in ("exercise_timeout", "submission_timeout"):
        door = SandboxDoor(tmp_path, limits=sandbox.Limits(call_timeout=5, exercise_timeout=60, submission_timeout=60))
        try:
            door.start()
            door.logsumexp(torch.zeros(2, 3))  # the child's first call loads what the later ones reuse
            door.limits = dataclasses.replace(door.limits, **{budget: 1.5 + (door.spent if budget == "submission_timeout" else 0)})
            # about 1 s of the 1.5 s budget: a right answer
            torch.testing.assert_close(door.stable_softmax(torch.zeros(2, 3)), torch.softmax(torch.zeros(2, 3), -1))
            # the next call gets what is left of the budget (under a second) and is stopped there
            with pytest.raises(SubmissionTimeout, match=r"longer than 0\.\d+ s"):
                door.stable_softmax(torch.zeros(2, 3))
            # a stopped call ends its exercise (it can no longer score): its later calls are refused unrun
            with pytest.raises(SubmissionError, match="not run again: an earlier call ran longer than"):
                door.stable_softmax(torch.zeros(2, 3))
            if budget == "exercise_timeout":  # the other exercises still run (in a new child, whose start
                # is charged to the call that needs it: a budget of their own for that)
                door.limits = dataclasses.replace(door.limits, exercise_timeout=60)
                torch.testing.assert_close(door.logsumexp(torch.zeros(2, 3)), reference.logsumexp(torch.zeros(2, 3)))
            else:  # a spent submission refuses every call
                with pytest.raises(SubmissionTimeout, match="not run: the submission used up its total time"):
                    door.logsumexp(torch.zeros(2, 3))
        finally:
            door.close()


def hostile_gpu_hoard(logits, dim=-1):
    hoard = []
    while len(hoard) < 4096:  # bounded: at most 4096 GiB asked; the GPU runs out long before
        hoard.append(torch.empty(1 << 30, dtype=torch.uint8, device="cuda"))
    return torch.softmax(logits, dim=dim)


@pytest.mark.gpu
def test_a_gpu_memory_bomb_fails_its_call_and_the_gpu_is_free_afterwards(tmp_path):
    (tmp_path / "numerics.py").write_text(module_with("numerics", {"stable_softmax": hostile_gpu_hoard}))
    door = SandboxDoor(tmp_path, limits=sandbox.Limits(call_timeout=120))
    try:
        report = door.start()
        with pytest.raises((RuntimeError, SubmissionError), match="memory|CUDA|ended"):
            door.stable_softmax(torch.zeros(2, 3, device="cuda"))
        # the next call gets a working child on the same GPU
        logits = torch.randn(4, 5, device="cuda")
        torch.testing.assert_close(door.logsumexp(logits), reference.logsumexp(logits))
    finally:
        door.close()
    index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    sandbox.wait_gpu_free(index, timeout=30, ignore={os.getpid()})
    assert report["fs"] and (report["uid"] or not sandbox.privileged())
