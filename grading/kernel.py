"""A confined notebook kernel for the batch grader's ``nbgrader autograde`` run.

nbgrader executes a submitted notebook in a kernel with the grader's rights: a cell the student added,
or the student's module imported by the notebook, could read the reference solutions, rewrite the
gradebook (a ``manual_score`` would beat the sandbox's ``auto_score``) or another student's files.
:func:`write_kernelspec` installs a kernel ``course-sandbox`` whose launcher (:func:`main`, running
as root) confines the kernel process with :func:`grading.sandbox.confine` before ipykernel starts:
a uid of its own, Landlock (read-only: the system, Python, the notebook's folder, the course's
``course_lib`` and ``grading`` packages; writable: a scratch folder of its own; TCP: bind only the
kernel's five ports from the connection file, no connect), resource limits. It stays in the host's
network namespace because its client talks to it over 127.0.0.1. The notebook's scores for code
exercises are not trusted anyway (:mod:`grading.autograde` rewrites them); this keeps the kernel from
touching anything else.

The kernel imports ``course_lib`` from a copy made for the notebook (:func:`course_library`): the
student's module of the assignment's chapter and the earlier chapters completed by the reference, as
on the laptop of a student who finished them. So the experiments of Chapter 4, which run the course's
language model, run it with the reference blocks of Chapter 3 and the student's generation code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "course-sandbox"
ROOT = Path(__file__).resolve().parent.parent


def write_kernelspec(jupyter_path: Path) -> Path:
    """Write ``kernels/course-sandbox/kernel.json`` under ``jupyter_path`` (put it on $JUPYTER_PATH)."""
    folder = jupyter_path / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    # -I: neither the notebook's folder (the student's files) nor $PYTHONPATH comes before this tree.
    launcher = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from grading.kernel import main; main()"
    spec = {"argv": [sys.executable, "-I", "-c", launcher, "-f", "{connection_file}"],
            "display_name": "Python 3 (course sandbox)", "language": "python",
            "env": {}, "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


def course_library(target: Path, notebook_dir: Path) -> Path:
    """Write ``target/course_lib``: the trusted package with the chapters before the notebook's one
    (its folder's name, the assignment) completed by the reference and the student's own module of
    that chapter where the folder holds one (:func:`grading.autograde.submitted_module_file`).
    Returns ``target``."""
    from course_lib import exercises
    from grading.autograde import submitted_module_file
    from grading.submissions import solved_module

    package = target / "course_lib"
    shutil.copytree(ROOT / "course_lib", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    chapter = notebook_dir.name
    if chapter in exercises.CHAPTER_MODULES:
        for module in exercises.chapters_before(chapter):
            (package / f"{module}.py").write_text(solved_module(module))
        student = submitted_module_file(notebook_dir, chapter)
        if student is not None:
            shutil.copyfile(student, package / f"{chapter}.py")
    return target


def main(argv: list[str] | None = None) -> None:
    from grading import sandbox

    args = list(sys.argv[1:] if argv is None else argv)
    connection = Path(args[args.index("-f") + 1])
    info = json.loads(connection.read_text())
    ports = [int(info[k]) for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port") if k in info]
    notebook_dir = os.getcwd()
    limits = sandbox.Limits.from_env()
    slot = sandbox.acquire_uid() if sandbox.privileged() else None
    scratch = Path(tempfile.mkdtemp(prefix="course-kernel-", dir=sandbox.sandbox_dir() if slot else None))
    os.chmod(scratch, 0o755)
    work = scratch / "work"
    work.mkdir(mode=0o700)
    (scratch / ".mounts").mkdir(mode=0o700)
    library = scratch / "lib"
    # In a fresh interpreter: this process must not import course_lib before the copy is on sys.path.
    subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from pathlib import Path; from grading.kernel import course_library; "
                    f"course_library(Path({str(library)!r}), Path({notebook_dir!r}))"], check=True, timeout=300)
    copy = work / "connection.json"
    shutil.copyfile(connection, copy)
    os.chmod(copy, 0o600)
    if slot is not None:
        os.chown(work, slot.uid, slot.uid)
        os.chown(copy, slot.uid, slot.uid)
    spec = {
        "uid": slot.uid if slot else None, "gid": slot.uid if slot else None,
        "read": sandbox.read_paths() + [notebook_dir, str(library), str(ROOT / "grading")],
        "write": [str(work)], "devices": sandbox.device_paths(False), "hide": [],
        "limits": {**limits.as_dict(), "processes": max(limits.processes, 256)},  # zmq and IPython threads
        "gpu": False, "netns": False, "bind_ports": ports + [0],  # 0: ephemeral ports (IOPub pipe)
        "fs": "landlock",
        "require": ["uid", "fs", "limits"] if slot else [], "parent": os.getppid(), "staging": str(scratch / ".mounts"),
    }
    try:
        report = sandbox.confine(spec)
    except Exception as err:
        print(f"course-sandbox kernel: {err}", file=sys.stderr, flush=True)
        os._exit(71)
    os.environ.update(HOME=str(work), TMPDIR=str(work), IPYTHONDIR=str(work / ".ipython"),
                      MPLCONFIGDIR=str(work), JUPYTER_RUNTIME_DIR=str(work), COURSE_KERNEL_CONFINEMENT=json.dumps(report))
    os.chdir(notebook_dir)
    sys.path[:0] = [notebook_dir, str(library), str(ROOT)]  # the student's module, course_lib, grading.check
    rest = [a for i, a in enumerate(args) if a != "-f" and (i == 0 or args[i - 1] != "-f")]
    sys.argv = ["ipykernel_launcher", "-f", str(copy), *rest]
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()
