"""The course's one cache folder, for artefacts that are built once and reused (corpus, tokenizer, models).

The folder is ``$COURSE_CACHE`` when that is set, else ``~/.cache/llm-course``. Everything in it can
be deleted at any time: whatever needs it is rebuilt on first use. ``$COURSE_CACHE_SHARED`` may name a
second, read-only cache looked in first (:func:`cache_entry`): the batch grader lends its own to the
notebooks' confined kernels, so that they load the corpus, tokenizer and models instead of building
them again in every notebook. Files are written atomically
(to a temporary name, then renamed), so an interrupted build never leaves a half-written artefact,
and an entry is built under its lock (:func:`building`), so processes that need the same entry at
the same time (the book build and the tests of one CI run) build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CACHE_ENV = "COURSE_CACHE"
SHARED_ENV = "COURSE_CACHE_SHARED"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a subfolder of it, ``cache_dir("corpus")``), created if missing."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "llm-course")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_entry(*parts: str) -> Path:
    """Where the cache entry ``parts`` (folders, then the entry's file or folder name) is: in the
    shared read-only cache (``$COURSE_CACHE_SHARED``) when that holds it, else in :func:`cache_dir`
    (built or not)."""
    *folders, name = parts
    shared = os.environ.get(SHARED_ENV)
    if shared:
        found = Path(shared).joinpath(*parts)
        try:
            if found.exists():
                return found
        except OSError:  # a folder this process may not enter: as good as missing
            pass
    return cache_dir(*folders) / name


def _is_shared(path: Path) -> bool:
    shared = os.environ.get(SHARED_ENV)
    return bool(shared) and path.resolve().is_relative_to(Path(shared).resolve())


def cache_key(*values) -> str:
    """A short, stable hex digest of ``values`` (anything ``json`` can write) for file names."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is readable like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def stage_directory(directory: Path | str):
    """Build a folder atomically: yields an empty staging folder beside ``directory`` to fill; when the
    block ends without an error it replaces ``directory`` (an empty or half-written one from an
    interrupted build included), else it is deleted. Readers see no folder or the whole new one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json(path: Path | str):
    """The JSON value cached in ``path``, or ``None`` when it is missing or damaged (then rebuild it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def building(path: Path | str) -> Iterator[None]:
    """Hold the build lock of the cache entry ``path`` (a file or a folder) for the ``with`` block.

    Look for the entry inside the block and build it there if it is missing: a second process that
    wants the same entry waits for the first and then finds it built. The lock is a file beside the
    entry (``.<name>.lock``), released when the block ends or the process dies. Where ``fcntl`` is
    missing (Windows) there is no lock and concurrent builders only repeat each other's work.
    """
    path = Path(path)
    if _is_shared(path):  # read-only, and complete: its entries were written whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
