"""The one narrow door between graded tests and student code.

Tests never import student code. They call ``student.<entry point>(...)`` on a door, with tensors and
plain data in and out:

- :class:`InProcessDoor` calls ``course_lib`` directly (what a student running ``pytest`` uses);
  ``overrides`` swap single entry points (how the test suite checks itself against wrong variants).
- :class:`SandboxDoor` forwards each call to a separate child process that imports the *submitted*
  chapter modules (the reference for every other chapter), confined by :mod:`grading.sandbox`
  (bubblewrap's namespaces, own uid, Landlock, limits) under per-call, per-exercise and
  per-submission time limits. Only data crosses back (see :mod:`grading.codec`), at most
  ``limits.reply_bytes`` of it, and the assertions run on the trusted side.

A failure is the submission's (:class:`SubmissionError`, :class:`SubmissionTimeout`: it costs the
test) or the grader's (:class:`GraderFault`: the sandbox could not start, the machine was too busy
to time a call, processes survived a kill): a grader's fault never counts against the student; the
batch grader marks that submission for a regrade instead.
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
from grading import codec, intake, sandbox

# Exceptions the child may raise that tests are allowed to expect (pytest.raises(ValueError)).
RERAISED = ("ValueError", "TypeError", "IndexError", "KeyError", "RuntimeError", "NotImplementedError",
            "ZeroDivisionError")


class SubmissionError(Exception):
    """The submission failed in a way that is not an ordinary exception of its own code."""


class SubmissionTimeout(SubmissionError):
    """A call into the submission ran past its time limit; its process was killed."""


class GraderFault(Exception):
    """The grader could not judge the submission; not the submission's fault, so the result must not
    count (grade it again). Not a subclass of what tests expect a submission to raise."""


class SandboxUnavailable(GraderFault):
    """The sandbox could not be started with the limits it must have."""


class MachineBusy(GraderFault):
    """A call was starved of CPU by other work on the machine for longer than the limits allow in
    wall time, before it had used its own time: it cannot be judged now."""


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
    """Chapter modules present in a submission folder (:func:`grading.intake.submitted_module_file`:
    regular files only, never a link)."""
    found = {}
    for module in exercises.CHAPTER_MODULES:
        path = intake.submitted_module_file(submission, module)
        if path is not None:
            found[module] = path
    return found


def reference_folder() -> Path | None:
    """The folder of the reference solutions, or None where they are absent (the student handout)."""
    package = exercises.reference_package()
    return Path(package.__file__).parent if package is not None else None


class SandboxDoor:
    """Forwards calls to a child process that runs the submitted code.

    The child starts in a fresh folder holding the trusted ``course_lib`` with the submitted chapter
    modules swapped in, the reference solutions of the chapters they build on (the earlier ones) only,
    and the runner. It runs with ``python -I``, a scrubbed environment and a session of its own,
    confined before any submitted code is imported: as root, inside bubblewrap (its own PID,
    network, IPC and mount namespaces: it sees only its processes and reaches no socket; a file
    system of the system, Python and that folder, read-only, and a size-limited tmpfs ``work/``, the
    only writable place), then by :func:`grading.sandbox.confine` (resource limits, Landlock, a uid
    of its own). The door watches the memory of all the sandbox's processes, shared-memory files
    included, and times each call by what it would take on an idle machine
    (:func:`grading.sandbox.charged_seconds`): a call charged more than ``limits.call_timeout``
    seconds, or any call once the exercise's entry point has been charged
    ``limits.exercise_timeout`` seconds, or the submission ``limits.submission_timeout`` seconds in
    all, fails; a call starved by the machine past ``limits.load_factor`` times its limit in wall
    time raises :class:`MachineBusy` (the grader's fault). A stopped child is replaced by a new one
    at the next call, but not for the entry point whose call was stopped (it ran past its time, ended
    the process, used too much memory or sent back what the door refuses): its later calls fail at
    once, since an exercise scores only when all its tests pass. ``require`` lists the layers
    (:data:`grading.sandbox.LAYERS`) that must apply, default :func:`required_layers`. After a :class:`GraderFault` every later call raises it again.
    """

    def __init__(self, submission: Path | str, call_timeout: float | None = None,
                 limits: sandbox.Limits | None = None, require: tuple[str, ...] | None = None):
        self.submission = Path(submission).resolve()
        self.modules = submitted_modules(self.submission)
        if not self.modules:
            raise SubmissionError(f"no chapter module ({', '.join(exercises.CHAPTER_MODULES)}) "
                                  f"found in {self.submission} (links and special files are not read)")
        self.limits = limits or sandbox.Limits.from_env(call_timeout=call_timeout)
        self.require = tuple(required_layers() if require is None else require)
        self.spent = 0.0  # seconds charged to calls into this submission so far
        self.spent_on: dict[str, float] = {}  # the same per entry point
        self.stopped: dict[str, str] = {}  # entry point -> how one of its calls was stopped
        self.confinement: dict | None = None  # what the last child reported having applied
        self.fault: GraderFault | None = None  # the grader's failure that stops every later call
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._folder: Path | None = None
        self._slot: sandbox.UidSlot | None = None
        self._stopped_because: str | None = None
        self._reaper: int | None = None
        self._bwrap = False
        self._start_charged = 0.0
        self._sample: tuple[int, float, sandbox.Usage] = (0, 0.0, sandbox.Usage(0, 0.0, 0.0))  # (child, when, what)

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
        for module, path in self.modules.items():  # the bytes of a regular file, never a link's target
            (folder / "course_lib" / f"{module}.py").write_bytes(intake.read_regular(path))
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

        bwrap = sandbox.bwrap_executable() if sandbox.privileged() else None
        if "pid" in self.require and bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap is not installed (apt-get install bubblewrap): without it the sandbox has no PID "
                f"namespace, so the grader refuses to run as root; set {sandbox.BWRAP_ENV}=off to grade with "
                "the older layers only (uid, Landlock, network namespace, limits)")
        if self._folder is None:
            self._folder = self._prepare_folder()
        folder, work = self._folder, self._folder / "work"
        gpu = torch.cuda.is_available()
        read = sandbox.read_paths()
        spec = {
            "uid": self._slot.uid if self._slot else None,
            "gid": self._slot.uid if self._slot else None,
            "read": read + [str(folder)],
            "write": [str(work)],
            "devices": sandbox.device_paths(gpu),
            "hide": self._hidden_paths(),
            "mask": sandbox.masked_paths(read, reference_folder()),
            "limits": self.limits.as_dict(),
            "gpu": gpu,
            "fs": os.environ.get(sandbox.FS_ENV) or "auto",
            "require": list(self.require),
            "parent": os.getpid(),
            "work": str(work),
            "work_bytes": self.limits.disk_bytes,
            "staging": str(folder / ".mounts"),
            "host": sandbox.namespaces(),
            "bwrap": bwrap is not None,
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
        command = [sys.executable, "-I", str(folder / "door_runner.py"), str(folder)]
        if bwrap is not None:
            command = sandbox.bwrap_command(bwrap, spec["read"], str(work), self.limits.disk_bytes,
                                            spec["devices"], spec["mask"], command)
        self._log = open(folder / "child.log", "wb")
        self._stopped_because = None
        self._reaper = None
        # umask 022: bwrap makes the folders above its mount points with it, and the sandbox's uid
        # must be able to enter them
        try:
            self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                          cwd=folder, env=env, start_new_session=True, umask=0o022)
        except OSError as err:
            self._log.close()
            raise SandboxUnavailable(f"the sandbox could not be started: {err}") from None
        self._bwrap = bwrap is not None
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self._proc, self._replies, self.limits.reply_bytes),
                         daemon=True).start()
        threading.Thread(target=self._watch_memory, args=(self._proc,), daemon=True).start()
        limit = max(60.0, self.limits.call_timeout)  # no student code runs before the hello
        proc = self._proc
        try:
            hello, self._start_charged = self._await(limit)
        except (SubmissionTimeout, MachineBusy) as err:  # the child is stopped already
            hello = err
        ready = None
        if isinstance(hello, bytes):
            try:
                ready = codec.decode(hello)
            except Exception:
                ready = None
        if not isinstance(ready, dict) or not ready.get("ready"):
            status = proc.poll()
            self._stop_child()
            log = (folder / "child.log").read_bytes()[-2000:].decode(errors="replace")
            if status == 71:
                raise SandboxUnavailable(log.strip().splitlines()[-1] if log.strip() else "confinement failed")
            if isinstance(hello, GraderFault | SubmissionTimeout):
                raise SandboxUnavailable(f"the sandbox's process did not start in time ({hello})")
            raise SandboxUnavailable(f"the sandbox's process did not start (exit status {status}): {log[-1500:]}")
        self.confinement = ready["confinement"]

    def start(self) -> dict:
        """Start the child now (else the first call does); return its confinement report."""
        if self.fault is not None:
            raise type(self.fault)(str(self.fault))
        if self._proc is None or self._proc.poll() is not None:
            self._stop_child()
            try:
                self._start()
            except GraderFault as err:
                self.fault = err
                raise
        return self.confinement

    @staticmethod
    def _read_replies(proc: subprocess.Popen, replies: queue.Queue, max_bytes: int) -> None:
        while True:
            try:
                replies.put(codec.read_message(proc.stdout, max_bytes=max_bytes))
            except Exception as err:  # EOF, a malformed or an oversized message: the door is closed
                replies.put(err)
                return

    def _sandbox_pids(self, proc: subprocess.Popen) -> list[int]:
        if self._slot is not None:
            return sandbox.pids(uid=self._slot.uid)
        return sandbox.pids(session=proc.pid)

    def _usage(self, proc: subprocess.Popen, memory: bool = True) -> sandbox.Usage:
        """What the sandbox's processes hold (with ``memory``) and have used; inside bwrap, bwrap's
        init (the only process of its PID namespace not of the sandbox's uid) reaps the orphans, so
        what they used is counted through it."""
        if self._bwrap and self._reaper is None:
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    self._reaper = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return sandbox.usage(self._sandbox_pids(proc), reaper=self._reaper, memory=memory)

    def _await(self, limit: float) -> tuple[Any, float]:
        """The child's next message and the seconds charged for waiting on it
        (:func:`grading.sandbox.charged_seconds`). :class:`SubmissionTimeout` once more than
        ``limit`` seconds are charged, :class:`MachineBusy` after ``limits.load_factor * limit``
        seconds of wall time with less charged (the child is stopped in both cases)."""
        proc = self._proc
        wall0, before = time.monotonic(), self._usage(proc, memory=False)  # the watchdog reads the memory
        while True:
            try:
                item = self._replies.get(timeout=0.25)
            except queue.Empty:
                item = None
            wall = time.monotonic() - wall0
            pid, taken, sample = self._sample  # the watchdog's latest reading while waiting; a fresh one to charge
            now = sample if item is None and pid == proc.pid and taken > wall0 else self._usage(proc, memory=False)
            waited = min(max(now.waited - before.waited, 0.0), wall)
            charged = sandbox.charged_seconds(max(now.cpu - before.cpu, 0.0), wall, waited)
            if item is not None:
                return item, charged
            if charged > limit:
                self._stop_child()
                raise SubmissionTimeout(f"ran longer than {limit:g} s and was stopped")
            if wall > limit * self.limits.load_factor:
                self._stop_child()
                raise MachineBusy(f"the machine was too busy to time the call: {wall:.0f} s of wall time, "
                                  f"{charged:.1f} s of its own ({waited:.0f} s waiting for a CPU); grade it again")

    def _watch_memory(self, proc: subprocess.Popen) -> None:
        """Kill the sandbox when all its processes together hold more than ``limits.memory_bytes``,
        shared-memory files included (the bound that also holds on a GPU, where RLIMIT_DATA is not
        set, and for memory that no process maps)."""
        while proc.poll() is None:
            self._sample = (proc.pid, time.monotonic(), self._usage(proc))
            if self._sample[2].memory > self.limits.memory_bytes:
                self._stopped_because = f"used more than {self.limits.memory_bytes / 2**30:.3g} GiB of memory"
                self._signal_all(proc)
                return
            time.sleep(0.25)

    def _signal_all(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the child's process group (bwrap: its PID namespace goes with it), then to
        every process of the sandbox's uid, checked; processes that survive are the grader's fault."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._slot is not None:  # also what left the process group (setsid, double fork)
            try:
                sandbox.kill_uid(self._slot.uid)
            except sandbox.LeftoverProcesses as err:
                self.fault = SandboxUnavailable(str(err))

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
            try:
                self._slot.release()
            except sandbox.LeftoverProcesses as err:  # the uid's next holder kills (or skips it)
                print(f"grading sandbox: {err}", file=sys.stderr)
            self._slot = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # -- calls --------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run entry point ``name`` in the child; return its result or raise its error here."""
        request = {"name": name, "args": list(args), "kwargs": kwargs}
        message = codec.encode(request)  # fail on the trusted side if the test sends bad data
        if name in self.stopped:
            raise SubmissionError(f"{name} was not run again: an earlier call {self.stopped[name]}")
        left = self.limits.submission_timeout - self.spent
        if left <= 0:
            raise SubmissionTimeout(f"{name} was not run: the submission used up its total time "
                                    f"({self.limits.submission_timeout:g} s)")
        left_here = self.limits.exercise_timeout - self.spent_on.get(name, 0.0)
        if left_here <= 0:
            raise SubmissionTimeout(f"{name} was not run: its calls used up the exercise's time "
                                    f"({self.limits.exercise_timeout:g} s)")
        left = min(left, left_here)
        self._start_charged = 0.0
        self.start()
        startup = self._start_charged  # a restart after a crash counts against the exercise too
        try:
            self._proc.stdin.write(codec.frame(message))
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._stop_child()
            raise SubmissionError("the submission's process ended before the call") from None
        limit = min(self.limits.call_timeout, left)
        charged = 0.0
        try:
            reply, charged = self._await(limit)
        except SubmissionTimeout:
            charged = limit
            self.stopped[name] = f"ran longer than {limit:g} s and was stopped"
            raise SubmissionTimeout(f"{name} {self.stopped[name]}") from None
        except MachineBusy as err:
            self.fault = err
            raise
        finally:
            self.spent += startup + charged
            self.spent_on[name] = self.spent_on.get(name, 0.0) + startup + charged
        if isinstance(reply, Exception):  # the reply channel closed, or carried something refused
            try:
                status = self._proc.wait(timeout=2) if self._proc is not None else None
            except subprocess.TimeoutExpired:
                self._stop_child()
                self.stopped[name] = "sent back an invalid reply"
                raise SubmissionError(f"{name} sent back an invalid reply ({reply})") from None
            why = self._stopped_because or _describe_exit(status) or str(reply)
            self._stop_child()
            self.stopped[name] = f"ended the submission's process ({why})"
            raise SubmissionError(f"the submission's process ended during {name} ({why})")
        try:
            result = codec.decode(reply)
        except Exception as err:
            self._stop_child()
            self.stopped[name] = "sent back malformed data"
            raise SubmissionError(f"{name} sent back malformed data ({err})") from None
        if not isinstance(result, dict) or "ok" not in result:
            raise SubmissionError(f"{name} sent back malformed data")
        if result["ok"]:
            return result.get("value")
        kind, text = str(result.get("type")), str(result.get("message"))[:4000]
        if kind in RERAISED:
            raise getattr(builtins, kind)(text)
        raise SubmissionError(f"{name} raised {kind}: {text}")


def required_layers() -> tuple[str, ...]:
    """The layers a sandbox must have: all of :data:`grading.sandbox.LAYERS` as root, all but the PID
    namespace where bubblewrap is switched off on purpose (``COURSE_SANDBOX_BWRAP=off``), none for
    an ordinary user (a student's own machine: what the user may apply)."""
    if not sandbox.privileged():
        return ()
    if os.environ.get(sandbox.BWRAP_ENV, "").lower() in ("off", "0", "no", "false"):
        return tuple(layer for layer in sandbox.LAYERS if layer != "pid")
    return sandbox.LAYERS


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
