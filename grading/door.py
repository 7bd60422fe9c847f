"""The one narrow door between graded tests and student code.

Tests never import student code. They call ``student.<entry point>(...)`` on a door, with tensors and
plain data in and out:

- :class:`InProcessDoor` calls ``course_lib`` directly (what a student running ``pytest`` uses);
  ``overrides`` swap single entry points (how the test suite checks itself against wrong variants).
- :class:`SandboxDoor` forwards each call to a separate child process that imports the *submitted*
  chapter modules (the reference for every other chapter), under a per-call time limit. Only data
  crosses back (see :mod:`grading.codec`) and the assertions run on the trusted side.
"""

from __future__ import annotations

import builtins
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from course_lib import exercises
from grading import codec

# Exceptions the child may raise that tests are allowed to expect (pytest.raises(ValueError)).
RERAISED = ("ValueError", "TypeError", "IndexError", "KeyError", "RuntimeError", "NotImplementedError",
            "ZeroDivisionError")


class SubmissionError(Exception):
    """The submission failed in a way that is not an ordinary exception of its own code."""


class SubmissionTimeout(SubmissionError):
    """A call into the submission ran past its time limit; its process was killed."""


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
    modules swapped in, the reference solutions of the *other* chapters only, and the runner. It runs
    with ``python -I``, a scrubbed environment and its own process group; a call that exceeds
    ``call_timeout`` seconds kills the group and the next call starts a new child.
    """

    def __init__(self, submission: Path | str, call_timeout: float = 60.0):
        self.submission = Path(submission).resolve()
        self.modules = submitted_modules(self.submission)
        if not self.modules:
            raise SubmissionError(f"no chapter module ({', '.join(exercises.CHAPTER_MODULES)}) "
                                  f"found in {self.submission}")
        self.call_timeout = call_timeout
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._folder: Path | None = None

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)
        _find(name)  # an unknown name fails here, on the trusted side
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    # -- child process ----------------------------------------------------------------------
    def _prepare_folder(self) -> Path:
        import course_lib

        folder = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(course_lib.__file__).parent, folder / "course_lib", ignore=ignore)
        for module, path in self.modules.items():
            shutil.copyfile(path, folder / "course_lib" / f"{module}.py")
        reference = reference_folder()
        if reference is not None:  # the instructor's side: the other chapters run the reference
            (folder / "solutions").mkdir()
            shutil.copyfile(reference / "__init__.py", folder / "solutions" / "__init__.py")
            for module in exercises.CHAPTER_MODULES:
                if module not in self.modules:
                    shutil.copyfile(reference / f"{module}.py", folder / "solutions" / f"{module}.py")
        here = Path(__file__).parent
        shutil.copyfile(here / "codec.py", folder / "door_codec.py")
        shutil.copyfile(here / "sandbox_runner.py", folder / "door_runner.py")
        return folder

    def _start(self) -> None:
        self._folder = self._prepare_folder()
        env = {
            "PATH": os.defpath,
            "HOME": str(self._folder),
            "TMPDIR": str(self._folder),
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
        self._log = open(self._folder / "child.log", "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(self._folder / "door_runner.py"), str(self._folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=self._folder, env=env, start_new_session=True,
        )
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self._proc, self._replies), daemon=True).start()

    @staticmethod
    def _read_replies(proc: subprocess.Popen, replies: queue.Queue) -> None:
        while True:
            try:
                replies.put(codec.read_message(proc.stdout))
            except Exception as err:  # EOF or a malformed message: the door is closed
                replies.put(err)
                return

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._log.close()
            self._proc = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def close(self) -> None:
        self._kill()

    # -- calls --------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run entry point ``name`` in the child; return its result or raise its error here."""
        request = {"name": name, "args": list(args), "kwargs": kwargs}
        message = codec.encode(request)  # fail on the trusted side if the test sends bad data
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._start()
        try:
            self._proc.stdin.write(codec.frame(message))
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._kill()
            raise SubmissionError("the submission's process ended before the call") from None
        try:
            reply = self._replies.get(timeout=self.call_timeout)
        except queue.Empty:
            self._kill()
            raise SubmissionTimeout(f"{name} ran longer than {self.call_timeout:g} s and was stopped") from None
        if isinstance(reply, Exception):
            self._kill()
            raise SubmissionError(f"the submission's process ended during {name} ({reply})")
        try:
            result = codec.decode(reply)
        except Exception as err:
            self._kill()
            raise SubmissionError(f"{name} sent back malformed data ({err})") from None
        if not isinstance(result, dict) or "ok" not in result:
            raise SubmissionError(f"{name} sent back malformed data")
        if result["ok"]:
            return result.get("value")
        kind, text = str(result.get("type")), str(result.get("message"))[:4000]
        if kind in RERAISED:
            raise getattr(builtins, kind)(text)
        raise SubmissionError(f"{name} raised {kind}: {text}")
