"""A confined notebook kernel for the batch grader's ``nbgrader autograde`` run.

nbgrader executes a submitted notebook in a kernel with the grader's rights: a cell the student added,
or the student's module imported by the notebook, could read the reference solutions, rewrite the
gradebook (a ``manual_score`` would beat the sandbox's ``auto_score``), another student's files, or
the grader's environment (a gradebook URL with its password). :func:`write_kernelspec` installs a
kernel ``course-sandbox`` whose launcher (:func:`main`, running as the grader) starts ipykernel in a
sandbox like the code sandbox's (:mod:`grading.sandbox`):

- a minimal environment, listed in :data:`KERNEL_ENVIRONMENT` (nothing else of the grader's);
- as root, inside bubblewrap: its own PID namespace (it sees no other process, so no other
  student's id on a command line), its own network namespace (no socket of the host: TCP, UDP and
  UNIX sockets by path alike) and IPC namespace, a file system of the system, Python, the notebook's
  folder, the course's ``course_lib`` copy and ``grading`` package, the grader's course cache
  (read-only: the corpus, tokenizer and models are loaded, not built again) and a size-limited
  tmpfs; then :func:`grading.sandbox.confine`: limits, Landlock and a uid of its own. The kernel
  still talks to its client over TCP on 127.0.0.1: the launcher opens the five listening sockets of
  the connection file in the host's network namespace and hands them over, and the kernel's ZeroMQ
  sockets take them (``ZMQ_USE_FD``) instead of binding their own;
- without bubblewrap (``COURSE_SANDBOX_BWRAP=off``), the older layers: uid, Landlock (TCP: bind only
  the kernel's ports, connect nowhere), limits, in the host's network namespace.

The notebook's scores for code exercises are not trusted anyway (:mod:`grading.autograde` rewrites
them); this keeps the kernel from touching anything else.

The kernel imports ``course_lib`` from a copy made for the notebook (:func:`course_library`): the
student's module of the assignment's chapter and the earlier chapters completed by the reference, as
on the laptop of a student who finished them. So the experiments of Chapter 4, which run the course's
language model, run it with the reference blocks of Chapter 3 and the student's generation code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_NAME = "course-sandbox"
ROOT = Path(__file__).resolve().parent.parent
# What the kernel gets of the grader's environment when set (nothing else: no gradebook URL, no token).
KERNEL_ENVIRONMENT = ("LANG", "LC_ALL", "TZ", "MPLBACKEND", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                      "COURSE_CHECK_DEFER", "COURSE_CHECK_TIMEOUT")
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def write_kernelspec(jupyter_path: Path) -> Path:
    """Write ``kernels/course-sandbox/kernel.json`` under ``jupyter_path`` (put it on $JUPYTER_PATH)."""
    folder = jupyter_path / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    # -I: neither the notebook's folder (the student's files) nor $PYTHONPATH comes before this tree.
    launcher = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from grading.kernel import main; main()"
    spec = {"argv": [sys.executable, "-I", "-c", launcher, "-f", "{connection_file}"],
            "display_name": "Python 3 (course sandbox)", "language": "python",
            "interrupt_mode": "message", "env": {}, "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


def course_library(target: Path, notebook_dir: Path) -> Path:
    """Write ``target/course_lib``: the trusted package with the chapters before the notebook's one
    (its folder's name, the assignment) completed by the reference and the student's own module of
    that chapter where the folder holds one (:func:`grading.intake.submitted_module_file`).
    Returns ``target``."""
    from course_lib import exercises
    from grading.intake import submitted_module_file
    from grading.submissions import solved_module

    package = target / "course_lib"
    shutil.copytree(ROOT / "course_lib", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    chapter = notebook_dir.name
    if chapter in exercises.CHAPTER_MODULES:
        copies = {}
        for module in exercises.chapters_before(chapter):
            text = solved_module(module)
            (package / f"{module}.py").write_text(text)
            copies[module] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        # what these chapters build is keyed as the reference's, so the kernel finds it in the grader's cache
        (package / exercises.REFERENCE_COPIES).write_text(json.dumps(copies))
        student = submitted_module_file(notebook_dir, chapter)
        if student is not None:
            shutil.copyfile(student, package / f"{chapter}.py")
    return target


def main(argv: list[str] | None = None) -> None:
    """The kernel's launcher: prepare the sandbox, run the confined kernel (:func:`run_confined`) in
    it as a child, wait for it, clean up. Exits with the kernel's status."""
    import ctypes
    import signal

    from course_lib.cache import SHARED_ENV, cache_dir
    from grading import sandbox

    # PR_SET_PDEATHSIG: a killed nbgrader takes its kernels with it (bwrap follows this process)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    args = list(sys.argv[1:] if argv is None else argv)
    connection = Path(args[args.index("-f") + 1])
    info = json.loads(connection.read_text())
    notebook_dir = os.getcwd()
    limits = sandbox.Limits.from_env()
    bwrap = sandbox.bwrap_executable() if sandbox.privileged() else None
    slot = sandbox.acquire_uid() if sandbox.privileged() else None
    scratch = Path(tempfile.mkdtemp(prefix="course-kernel-", dir=sandbox.sandbox_dir() if slot else None))
    status = 71
    try:
        os.chmod(scratch, 0o755)
        work = scratch / "work"
        work.mkdir(mode=0o700)
        (scratch / ".mounts").mkdir(mode=0o700)
        library = scratch / "lib"
        # In a fresh interpreter: this process must not import course_lib before the copy is on sys.path.
        subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from pathlib import Path; from grading.kernel import course_library; "
                        f"course_library(Path({str(library)!r}), Path({notebook_dir!r}))"], check=True, timeout=300)
        private = scratch / "private"  # the connection file (its key signs the messages): the kernel's uid only
        private.mkdir(mode=0o700)
        copy = private / "connection.json"
        shutil.copyfile(connection, copy)
        os.chmod(copy, 0o600)
        if slot is not None:
            for path in (work, private, copy):
                os.chown(path, slot.uid, slot.uid)
        ports = [int(info[k]) for k in CHANNELS if k in info]
        listening = {}
        if bwrap is not None:  # the client reaches the kernel through sockets opened out here
            for port in ports:
                listener = socket.socket(socket.AF_INET6 if ":" in info.get("ip", "") else socket.AF_INET)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((info.get("ip") or "127.0.0.1", port))
                listener.listen(128)
                listening[port] = listener
        read = sandbox.read_paths()
        shared_cache = str(cache_dir())  # the grader's course cache, lent read-only (course_lib.cache.cache_entry)
        spec = {
            "uid": slot.uid if slot else None, "gid": slot.uid if slot else None,
            "read": read + [notebook_dir, str(library), str(ROOT / "grading"), str(private), shared_cache],
            "write": [str(work)], "devices": sandbox.device_paths(False), "hide": [],
            "mask": sandbox.masked_paths(read, _reference_folder()),
            "limits": {**limits.as_dict(), "processes": max(limits.processes, 256)},  # zmq and IPython threads
            "gpu": False, "netns": bwrap is not None, "bind_ports": ports + [0],  # 0: ephemeral ports (IOPub pipe)
            "fs": "landlock", "work": str(work), "work_bytes": limits.disk_bytes,
            "require": list(_required(slot, bwrap)), "parent": os.getpid(), "staging": str(scratch / ".mounts"),
            "host": sandbox.namespaces(), "bwrap": bwrap is not None,
            "listening": {str(port): s.fileno() for port, s in listening.items()},
            "notebook_dir": notebook_dir, "library": str(library), "connection": str(copy),
            "kernel_args": [a for i, a in enumerate(args) if a != "-f" and (i == 0 or args[i - 1] != "-f")],
        }
        (scratch / "spec.json").write_text(json.dumps(spec))
        os.chmod(scratch / "spec.json", 0o644)
        command = [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                   f"from grading.kernel import run_confined; run_confined({str(scratch / 'spec.json')!r})"]
        if bwrap is not None:
            command = sandbox.bwrap_command(bwrap, spec["read"] + [str(scratch / "spec.json")], str(work),
                                            limits.disk_bytes, spec["devices"], spec["mask"], command)
        env = {k: os.environ[k] for k in KERNEL_ENVIRONMENT if k in os.environ}
        env.update(PATH=os.defpath, HOME=str(work), TMPDIR=str(work), IPYTHONDIR=str(work / ".ipython"),
                   MPLCONFIGDIR=str(work), JUPYTER_RUNTIME_DIR=str(work), PYTHONDONTWRITEBYTECODE="1",
                   **{SHARED_ENV: shared_cache})
        kernel = subprocess.Popen(command, env=env, cwd=notebook_dir, pass_fds=[s.fileno() for s in listening.values()],
                                  umask=0o022)
        for listener in listening.values():
            listener.close()
        signal.signal(signal.SIGTERM, lambda *_: kernel.terminate())
        while (status := kernel.poll()) is None:  # the memory watchdog: shared-memory files count too
            if slot is not None and sandbox.usage(sandbox.pids(uid=slot.uid)).memory > limits.memory_bytes:
                print(f"course-sandbox kernel: stopped: more than {limits.memory_bytes / 2**30:.3g} GiB of memory",
                      file=sys.stderr, flush=True)
                kernel.kill()
            time.sleep(0.5)
    finally:
        if slot is not None:
            try:
                slot.release()
            except sandbox.LeftoverProcesses as err:
                print(f"course-sandbox kernel: {err}", file=sys.stderr, flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(status)


def _required(slot, bwrap) -> tuple[str, ...]:
    """Layers the kernel must have: as root the uid, file system and limits, and with bubblewrap
    also the network and PID namespaces."""
    if slot is None:
        return ()
    return ("uid", "fs", "limits") + (("net", "pid") if bwrap else ())


def _reference_folder() -> Path | None:
    from course_lib import exercises

    package = exercises.reference_package()
    return Path(package.__file__).parent if package is not None else None


def run_confined(spec_file: str) -> None:
    """Inside the sandbox: confine this process (:func:`grading.sandbox.confine`), make the kernel's
    ZeroMQ sockets take the listening sockets handed over for their ports, start ipykernel."""
    from grading import sandbox

    spec = json.loads(Path(spec_file).read_text())
    try:
        report = sandbox.confine(spec)
    except Exception as err:
        print(f"course-sandbox kernel: {err}", file=sys.stderr, flush=True)
        os._exit(71)
    import zmq

    handed = {int(port): fd for port, fd in spec["listening"].items()}
    bind = zmq.Socket.bind

    def bind_handed(self, address: str):
        port = address.rsplit(":", 1)[-1]
        if address.startswith("tcp://") and port.isdigit() and int(port) in handed:
            self.setsockopt(zmq.USE_FD, handed.pop(int(port)))
        return bind(self, address)

    zmq.Socket.bind = bind_handed
    os.environ["COURSE_KERNEL_CONFINEMENT"] = json.dumps(report)
    os.chdir(spec["notebook_dir"])
    # the student's module, course_lib, grading.check
    sys.path[:0] = [spec["notebook_dir"], spec["library"], str(ROOT)]
    sys.argv = ["ipykernel_launcher", "-f", spec["connection"], *spec["kernel_args"]]
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()
