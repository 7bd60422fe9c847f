"""What the grader takes from a submission folder: regular files, nothing else.

A submission is untrusted data that the grader reads as root. Every entry is judged without
following links (``lstat``), and refused when it is

- a symbolic link, in any part of its path below the submission folder (a ``course_lib`` folder
  linked to a classmate's submission, a module linked to the reference solutions, a ``leak.txt``
  linked to the hidden tests that a later copy would fill with their text);
- a regular file with a second hard link (the same inode as a file elsewhere: the same leak);
- a special file (a FIFO blocks its reader forever, a device such as ``/dev/zero`` never ends,
  a socket is no file at all).

:func:`regular_file` finds one file that may be read (:func:`submitted_module_file`: a chapter
module), :func:`read_regular` reads it (checked again
on the open file, so a swap between the check and the read is caught), and :func:`quarantine` moves
every refused entry of a folder aside before a tool that follows links (nbgrader's copy into the
autograded folder) sees it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_MODULE_BYTES = 2 << 20  # a chapter module larger than this is not graded


def _acceptable(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink == 1)


def regular_file(folder: Path, relative: str, max_bytes: int = MAX_MODULE_BYTES) -> Path | None:
    """``folder/relative`` if it is a regular file with a single link and at most ``max_bytes``,
    reached through folders (not links) below ``folder``; else None. ``folder`` itself is the
    grader's choice and may be reached any way."""
    path = Path(folder)
    parts = Path(relative).parts
    for i, part in enumerate(parts):
        path = path / part
        try:
            info = path.lstat()
        except OSError:
            return None
        last = i == len(parts) - 1
        if stat.S_ISLNK(info.st_mode) or not _acceptable(info) or stat.S_ISDIR(info.st_mode) == last:
            return None
    return path if info.st_size <= max_bytes else None


def submitted_module_file(folder: Path, module: str) -> Path | None:
    """A submission's chapter module ``<module>.py``, beside the notebook or under ``course_lib/``,
    as :func:`regular_file` accepts it; None if there is none."""
    for relative in (f"{module}.py", f"course_lib/{module}.py"):
        found = regular_file(Path(folder), relative)
        if found is not None:
            return found
    return None


def read_regular(path: Path, max_bytes: int = MAX_MODULE_BYTES) -> bytes:
    """The bytes of ``path``, opened without following a final link and checked again on the open
    file (regular, one link, at most ``max_bytes``); ``PermissionError`` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_size <= max_bytes):
            raise PermissionError(f"{path} is not a regular file of at most {max_bytes} bytes with one link")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def refused_entries(folder: Path) -> list[Path]:
    """Every entry below ``folder`` (``folder`` itself included) that is a link, a hard-linked file
    or a special file; links are not followed, so nothing beyond them is visited."""
    folder = Path(folder)
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return [] if _acceptable(info) and not stat.S_ISLNK(info.st_mode) else [folder]
    refused, todo = [], [folder]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode) or not _acceptable(info):
                    refused.append(Path(entry.path))
                elif stat.S_ISDIR(info.st_mode):
                    todo.append(Path(entry.path))
    return sorted(refused)


def quarantine(folder: Path, store: Path) -> list[str]:
    """Move every refused entry of ``folder`` (see :func:`refused_entries`) to the same relative
    place under ``store`` (a root-only folder), as it is: a link stays a link and is never followed.
    Returns their paths relative to ``folder`` (``"."`` when ``folder`` itself was refused)."""
    folder = Path(folder)
    moved = []
    for entry in refused_entries(folder):
        relative = entry.relative_to(folder) if entry != folder else Path(folder.name)
        target = Path(store) / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists() or target.is_symlink():
            target = target.with_name(f"{target.name}.{os.getpid()}-{len(moved)}")
        os.rename(entry, target)
        moved.append("." if entry == folder else str(relative))
    return moved
