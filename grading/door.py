"""The one narrow door between graded tests and student code.

Tests never import student code. They call ``student.<entry point>(...)`` on a door, with tensors and
plain data in and out:

- :class:`InProcessDoor` calls ``course_lib`` directly (what a student running ``pytest`` uses);
  ``overrides`` swap single entry points (how the test suite checks itself against wrong variants).
- :class:`SandboxDoor` forwards each call to a separate child process that imports the *submitted*
  chapter modules (the reference for every other chapter), confined by :mod:`grading.sandbox` (own
  uid, no network, Landlock, limits) under per-call, per-exercise and per-submission time limits.
  Only data crosses back (see :mod:`grading.codec`) and the assertions run on the trusted side.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from course_lib import exercises
from grading import codec, sandbox

# Exceptions the child may raise that tests are allowed to expect (pytest.raises(ValueError)).
RERAISED = ("ValueError", "TypeError", "IndexError", "KeyError", "RuntimeError", "NotImplementedError",
            "ZeroDivisionError")


class SubmissionError(Exception):
    """The submission failed in a way that is not an ordinary exception of its own code."""


class SubmissionTimeout(SubmissionError):
    """A call into the submission ran past its time limit; its process was killed."""


class SandboxUnavailable(RuntimeError):
    """The sandbox could not be started with the limits it must have (not the submission's fault)."""


def _find(name: str) -> exercises.Exercise:
    """The exercise called ``name``; ``AttributeError`` (so ``hasattr(student, x)`` works) if none."""
    try:
        return exercises.find(name)
    except KeyError as err:
        raise AttributeError(f"no exercise entry point named {name!r}") from err


class InProcessDoor:
    """Calls the exercise entry points of ``course_lib`` in this process."""

    def __init__(self, overrides: dict[str, Callable] | None = None):
        self.overrides = dict(overrides or {})

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.overrides:
            return self.overrides[name]
        return exercises.entry_point(_find(name))

    def close(self) -> None:
        pass


def submitted_modules(submission: Path) -> dict[str, Path]:
    """Chapter modules present in a submission folder (``numerics.py`` or ``course_lib/numerics.py``)."""
    found = {}
    for module in exercises.CHAPTER_MODULES:
        for candidate in (submission / f"{module}.py", submission / "course_lib" / f"{module}.py"):
            if candidate.is_file():
                found[module] = candidate
                break
    return found


def reference_folder() -> Path | None:
    """The folder of the reference solutions, or None where they are absent (the student handout)."""
    try:
        import solutions
    except ModuleNotFoundError:
        return None
    return Path(solutions.__file__).parent


class SandboxDoor:
    """Forwards calls to a child process that runs the submitted code.

    The child starts in a fresh folder holding the trusted ``course_lib`` with the submitted chapter
    modules swapped in, the reference solutions of the chapters they build on (the earlier ones) only,
    and the runner. It runs
    with ``python -I``, a scrubbed environment and its own process group, confined by
    :func:`grading.sandbox.confine` before any submitted code is imported: as root, a uid of its
    own, no network, a file system reduced to the system, Python and that folder (its ``work/``
    subfolder the only writable place), and resource limits. The door also watches the memory of all
    the sandbox's processes. A call that exceeds ``limits.call_timeout`` seconds, or any call once the
    exercise's entry point has used ``limits.exercise_timeout`` seconds, or the submission
    ``limits.submission_timeout`` seconds in all, fails; a stopped child is
    replaced by a new one at the next call. ``require`` lists the layers (:data:`grading.sandbox.
    LAYERS`) that must apply, default all of them when the grader runs as root.
    """

    def __init__(self, submission: Path | str, call_timeout: float | None = None,
                 limits: sandbox.Limits | None = None, require: tuple[str, ...] | None = None):
        self.submission = Path(submission).resolve()
        self.modules = submitted_modules(self.submission)
        if not self.modules:
            raise SubmissionError(f"no chapter module ({', '.join(exercises.CHAPTER_MODULES)}) "
                                  f"found in {self.submission}")
        self.limits = limits or sandbox.Limits.from_env(call_timeout=call_timeout)
        self.require = tuple(sandbox.LAYERS if require is None and sandbox.privileged() else require or ())
        self.spent = 0.0  # wall seconds of calls into this submission so far
        self.spent_on: dict[str, float] = {}  # the same per entry point
        self.confinement: dict | None = None  # what the last child reported having applied
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._folder: Path | None = None
        self._slot: sandbox.UidSlot | None = None
        self._stopped_because: str | None = None

    @property
    def call_timeout(self) -> float:
        return self.limits.call_timeout

    @call_timeout.setter
    def call_timeout(self, seconds: float) -> None:
        self.limits = dataclasses.replace(self.limits, call_timeout=seconds)

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)
        _find(name)  # an unknown name fails here, on the trusted side
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    # -- child process ----------------------------------------------------------------------
    def _prepare_folder(self) -> Path:
        import course_lib

        if sandbox.privileged():  # the child runs as another uid: a folder it can reach, no other
            self._slot = sandbox.acquire_uid()
            folder = Path(tempfile.mkdtemp(prefix="course-sandbox-", dir=sandbox.sandbox_dir()))
            os.chmod(folder, 0o755)
        else:
            folder = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(course_lib.__file__).parent, folder / "course_lib", ignore=ignore)
        for module, path in self.modules.items():
            shutil.copyfile(path, folder / "course_lib" / f"{module}.py")
        reference = reference_folder()
        if reference is not None:  # the instructor's side: the earlier chapters run the reference
            (folder / "solutions").mkdir()
            shutil.copyfile(reference / "__init__.py", folder / "solutions" / "__init__.py")
            # Only the chapters the submitted ones build on: the code in this folder can read what is
            # here and word its errors (which reach the feedback) as it likes.
            earlier = {m for submitted in self.modules for m in exercises.chapters_before(submitted)}
            for module in sorted(earlier - set(self.modules)):
                shutil.copyfile(reference / f"{module}.py", folder / "solutions" / f"{module}.py")
        here = Path(__file__).parent
        shutil.copyfile(here / "codec.py", folder / "door_codec.py")
        shutil.copyfile(here / "sandbox.py", folder / "door_sandbox.py")
        shutil.copyfile(here / "sandbox_runner.py", folder / "door_runner.py")
        work = folder / "work"
        work.mkdir(mode=0o700)
        (folder / ".mounts").mkdir(mode=0o700)
        if self._slot is not None:
            os.chown(work, self._slot.uid, self._slot.uid)
        return folder

    def _hidden_paths(self) -> list[str]:
        """What the mount fallback covers: the course tree (but the Python install inside it), the
        course's grading folder and the folder that holds the submission (other students)."""
        import course_lib

        root = Path(course_lib.__file__).resolve().parent.parent
        keep = {Path(p).resolve() for p in (sys.prefix, sys.exec_prefix)}
        hide = [str(p) for p in root.iterdir()
                if not any(k == p or p in k.parents for k in keep)]
        grading_dir = os.environ.get("COURSE_GRADING_DIR")
        hide += [grading_dir] if grading_dir else []
        hide.append(str(self.submission.parent))
        return hide

    def _start(self) -> None:
        import torch

        if self._folder is None:
            self._folder = self._prepare_folder()
        folder, work = self._folder, self._folder / "work"
        gpu = torch.cuda.is_available()
        spec = {
            "uid": self._slot.uid if self._slot else None,
            "gid": self._slot.uid if self._slot else None,
            "read": sandbox.read_paths() + [str(folder)],
            "write": [str(work)],
            "devices": sandbox.device_paths(gpu),
            "hide": self._hidden_paths(),
            "limits": self.limits.as_dict(),
            "gpu": gpu,
            "fs": os.environ.get(sandbox.FS_ENV) or "auto",
            "require": list(self.require),
            "parent": os.getpid(),
            "work": str(work),
            "staging": str(folder / ".mounts"),
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        env = {
            "PATH": os.defpath,
            "HOME": str(work),
            "TMPDIR": str(work),
            "MPLCONFIGDIR": str(work),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            # Without the reference (a student's own machine) every chapter runs the student's code.
            exercises.MODE_ENV: "solution" if reference_folder() is not None else "student",
            exercises.STUDENT_MODULES_ENV: ",".join(self.modules),
        }
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
            if name in os.environ:
                env[name] = os.environ[name]
        self._log = open(folder / "child.log", "wb")
        self._stopped_because = None
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(folder / "door_runner.py"), str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=folder, env=env, start_new_session=True,
        )
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self._proc, self._replies), daemon=True).start()
        threading.Thread(target=self._watch_memory, args=(self._proc,), daemon=True).start()
        try:
            hello = self._replies.get(timeout=max(60.0, self.limits.call_timeout))
        except queue.Empty:
            hello = None
        ready = None
        if isinstance(hello, bytes):
            try:
                ready = codec.decode(hello)
            except Exception:
                ready = None
        if not isinstance(ready, dict) or not ready.get("ready"):
            status = self._proc.poll()
            self._stop_child()
            log = (folder / "child.log").read_bytes()[-2000:].decode(errors="replace")
            if status == 71:
                raise SandboxUnavailable(log.strip().splitlines()[-1] if log.strip() else "confinement failed")
            raise SandboxUnavailable(f"the sandbox's process did not start (exit status {status}): {log[-1500:]}")
        self.confinement = ready["confinement"]

    def start(self) -> dict:
        """Start the child now (else the first call does); return its confinement report."""
        if self._proc is None or self._proc.poll() is not None:
            self._stop_child()
            self._start()
        return self.confinement

    @staticmethod
    def _read_replies(proc: subprocess.Popen, replies: queue.Queue) -> None:
        while True:
            try:
                replies.put(codec.read_message(proc.stdout))
            except Exception as err:  # EOF or a malformed message: the door is closed
                replies.put(err)
                return

    def _watch_memory(self, proc: subprocess.Popen) -> None:
        """Kill the sandbox when all its processes together hold more than ``limits.memory_bytes``
        resident (the bound that also holds on a GPU, where RLIMIT_DATA is not set)."""
        uid = self._slot.uid if self._slot else None
        while proc.poll() is None:
            found = sandbox.pids(uid=uid) if uid is not None else sandbox.pids(session=proc.pid)
            if sandbox.rss_bytes(found) > self.limits.memory_bytes:
                self._stopped_because = f"used more than {self.limits.memory_bytes / 2**30:.3g} GiB of memory"
                self._signal_all(proc)
                return
            time.sleep(0.2)

    def _signal_all(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._slot is not None:  # also what left the process group (setsid, double fork)
            sandbox.kill_uid(self._slot.uid)

    def _stop_child(self) -> None:
        if self._proc is not None:
            self._signal_all(self._proc)
            self._proc.wait()
            self._log.close()
            self._proc = None

    def _kill(self) -> None:
        self._stop_child()

    def close(self) -> None:
        self._stop_child()
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # -- calls --------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run entry point ``name`` in the child; return its result or raise its error here."""
        request = {"name": name, "args": list(args), "kwargs": kwargs}
        message = codec.encode(request)  # fail on the trusted side if the test sends bad data
        left = self.limits.submission_timeout - self.spent
        if left <= 0:
            raise SubmissionTimeout(f"{name} was not run: the submission used up its total time "
                                    f"({self.limits.submission_timeout:g} s)")
        left_here = self.limits.exercise_timeout - self.spent_on.get(name, 0.0)
        if left_here <= 0:
            raise SubmissionTimeout(f"{name} was not run: its calls used up the exercise's time "
                                    f"({self.limits.exercise_timeout:g} s)")
        left = min(left, left_here)
        started = time.monotonic()  # a restart after a crash counts against the exercise too
        self.start()
        try:
            self._proc.stdin.write(codec.frame(message))
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._stop_child()
            raise SubmissionError("the submission's process ended before the call") from None
        limit = min(self.limits.call_timeout, left)
        try:
            reply = self._replies.get(timeout=limit)
        except queue.Empty:
            self._stop_child()
            raise SubmissionTimeout(f"{name} ran longer than {limit:g} s and was stopped") from None
        finally:
            self.spent += time.monotonic() - started
            self.spent_on[name] = self.spent_on.get(name, 0.0) + time.monotonic() - started
        if isinstance(reply, Exception):
            status = self._proc.wait() if self._proc is not None else None
            why = self._stopped_because or _describe_exit(status) or str(reply)
            self._stop_child()
            raise SubmissionError(f"the submission's process ended during {name} ({why})")
        try:
            result = codec.decode(reply)
        except Exception as err:
            self._stop_child()
            raise SubmissionError(f"{name} sent back malformed data ({err})") from None
        if not isinstance(result, dict) or "ok" not in result:
            raise SubmissionError(f"{name} sent back malformed data")
        if result["ok"]:
            return result.get("value")
        kind, text = str(result.get("type")), str(result.get("message"))[:4000]
        if kind in RERAISED:
            raise getattr(builtins, kind)(text)
        raise SubmissionError(f"{name} raised {kind}: {text}")


def _describe_exit(status: int | None) -> str | None:
    """Words for a child's exit status (a signal's name for the limits that end in one)."""
    if status is None:
        return None
    if status < 0:
        name = signal.Signals(-status).name
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed",
               "SIGSEGV": "crashed"}.get(name, "signal")
        return f"{why}: {name}"
    return f"exit status {status}"
