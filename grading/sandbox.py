"""Operating-system limits of the grading sandbox: what confines the processes that run student code.

As root the sandbox is two layers deep. The outer one is Debian's ``bubblewrap`` (:func:`bwrap_command`,
run by the trusted side): new PID, network, IPC and UTS namespaces, so the sandbox sees only its own
processes (not the grader's command lines with other students' ids), reaches no socket (TCP, UDP,
UNIX sockets by path and abstract ones alike), and its whole process tree dies with it; a file system
made only of what it may read (the system, the Python install, its own folder, bound read-only;
the reference solutions masked wherever they lie inside those), a fresh ``/proc`` and ``/dev``, and one
size-limited tmpfs as its only writable place. The inner layer is :func:`confine`, run *in the
child* first thing, before any student code is imported (the child gets a copy of this file beside
its runner and needs only the standard library): SysV shared memory and message queues off in its
IPC namespace, resource limits (CPU seconds, data segment, processes, file size, open files, no core
dumps), Landlock (read-only: the same paths; writable: the tmpfs), then an unprivileged uid of its
own with no groups. Without bwrap (``COURSE_SANDBOX_BWRAP=off``, or not installed) the child builds
what it can itself: a network and an IPC namespace, Landlock or, without Landlock, a mount namespace
with the course tree covered, a size-limited tmpfs as its work folder; there is no PID namespace
then, and the grader refuses to run as root that way unless told to (the ``pid`` layer is missing).
Without root it applies what an ordinary user may (Landlock, limits, a socket-blocking audit hook).
:func:`confine` returns a report of the layers that took effect, measured (a namespace counts when
``/proc/self/ns`` differs from the grader's); ``require`` makes a missing layer an error.

The trusted side's helpers: :class:`Limits`; a uid of its own per sandbox (:func:`acquire_uid`, one
lock file per uid, so parallel graders never share one); :func:`kill_uid` (``kill(-1, SIGKILL)``
from a helper process running as that uid, which reaches every process of it in any session or
namespace below the grader's, then a check that none is left); :func:`usage` (what a sandbox's
processes hold and have used: memory, counting shared-memory files too, and CPU time, and how long
its first process waited for a CPU: the door's watchdog and time limits); and
:func:`gpu_processes` / :func:`wait_gpu_free` (one submission at a time per GPU, the GPU checked
free before the next). GPU machines keep ``/dev/nvidia*`` reachable inside the sandbox and bound
memory with the watchdog, since ``RLIMIT_AS`` and ``RLIMIT_DATA`` break CUDA's address-space
reservations.

Nothing here is a substitute for a VM. Measured on Linux 6.18 (Landlock ABI 7) as root, with
bubblewrap 0.8: every layer applies.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

UID_BASE_ENV = "COURSE_SANDBOX_UID_BASE"  # first uid of the sandbox range (default 61000)
UID_SLOTS = 256
DIR_ENV = "COURSE_SANDBOX_DIR"  # where sandbox folders live when the child runs as another uid
FS_ENV = "COURSE_SANDBOX_FS"  # "auto" (Landlock, else mounts), "landlock", "mount", "none"
BWRAP_ENV = "COURSE_SANDBOX_BWRAP"  # unset: bwrap from PATH; "off": without it (no PID namespace); a path
LAYERS = ("uid", "fs", "net", "pid", "limits")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (same on every arch)


@dataclass(frozen=True)
class Limits:
    """Limits of one submission's sandbox. Environment variables ``COURSE_SANDBOX_<FIELD>`` (upper
    case) override the defaults; the batch grader passes its own."""

    # Time limits count the time a call would take on an idle machine (see charged_seconds): the CPU
    # time of the sandbox's processes, or the wall time minus what its first process waited for a
    # CPU, whichever is more. So a busy machine does not cost a student points, and sleeping does.
    call_timeout: float = 60.0  # seconds of one call into the submission
    exercise_timeout: float = 180.0  # seconds of all calls into one exercise's entry point
    submission_timeout: float = 600.0  # seconds of all calls into one submission together
    load_factor: float = 10.0  # a call still running after load_factor times its limit in wall time
    #                            (a machine too busy to judge it) is stopped and graded again later
    cpu_seconds: int = 900  # RLIMIT_CPU of each child process
    memory_bytes: int = 4 << 30  # memory of all the sandbox's processes together, shared-memory files
    #                              included (watchdog), and RLIMIT_DATA of each process where there is no GPU
    processes: int = 128  # RLIMIT_NPROC (threads count); binds because the uid is the sandbox's own
    file_bytes: int = 256 << 20  # RLIMIT_FSIZE: largest file the child may write
    disk_bytes: int = 512 << 20  # all it may write together: the size of its one writable tmpfs
    open_files: int = 512  # RLIMIT_NOFILE
    reply_bytes: int = 256 << 20  # largest reply the trusted side reads from the child

    @classmethod
    def from_env(cls, **overrides) -> "Limits":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"COURSE_SANDBOX_{f.name.upper()}")
            if raw:
                values[f.name] = float(raw) if f.type in (float, "float") else int(float(raw))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)


# -- the child's side ----------------------------------------------------------------------------
class ConfinementError(RuntimeError):
    """A layer the caller required could not be applied."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is absent or disabled."""
    try:
        abi = _libc().syscall(_SYS_LANDLOCK[0], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


def _landlock(read: list[str], write: list[str], devices: list[str], bind_ports: list[int] = ()) -> int:
    """Allow only ``read`` (read, list, execute), ``write`` (everything) and ``devices`` (read,
    write, ioctl); deny all TCP (ABI 4+), signals and abstract sockets outside the sandbox (ABI 6+).
    Returns the ABI used, 0 if Landlock is unavailable."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    libc = _libc()
    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    execute, write_file, read_file, read_dir = 1, 2, 4, 8
    file_rights = (execute | write_file | read_file | (1 << 14 if abi >= 3 else 0)
                   | (1 << 15 if abi >= 5 else 0))
    if abi >= 6:
        attr = struct.pack("=QQQ", handled, 3, 3)  # all fs; TCP bind+connect; abstract unix + signal
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, 3)
    else:
        attr = struct.pack("=Q", handled)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(_SYS_LANDLOCK[0], buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _fail("landlock_create_ruleset")
    try:
        rules = ([(p, execute | read_file | read_dir) for p in read] + [(p, handled) for p in write]
                 + [(p, read_file | write_file | (1 << 15 if abi >= 5 else 0)) for p in devices])
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= file_rights
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access & handled, fd), 12)
                if libc.syscall(_SYS_LANDLOCK[1], ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)):
                    raise _fail(f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        for port in bind_ports if abi >= 4 else ():  # LANDLOCK_RULE_NET_PORT: bind only
            rule = ctypes.create_string_buffer(struct.pack("=QQ", 1, int(port)), 16)
            if libc.syscall(_SYS_LANDLOCK[1], ctypes.c_int(ruleset), ctypes.c_int(2), rule, ctypes.c_uint32(0)):
                raise _fail(f"landlock_add_rule port {port}")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise _fail("prctl(NO_NEW_PRIVS)")
        if libc.syscall(_SYS_LANDLOCK[2], ctypes.c_int(ruleset), ctypes.c_uint32(0)):
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


_MOUNT_NS = []  # set once this process has a mount namespace of its own


def _own_mount_namespace(libc) -> None:
    """Move this process into a mount namespace of its own (once), with nothing propagating out."""
    if _MOUNT_NS:
        return
    if libc.unshare(_CLONE_NEWNS):
        raise _fail("unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None):
        raise _fail("mount --make-rprivate /")
    _MOUNT_NS.append(True)


def _hide(paths: list[str]) -> int:
    """In a mount namespace of our own: an empty read-only folder (or /dev/null) over each path."""
    libc = _libc()
    _own_mount_namespace(libc)
    hidden = 0
    for path in paths:
        if not os.path.lexists(path) or os.path.islink(path):
            continue
        target = path.encode()
        if os.path.isdir(path):
            ok = libc.mount(b"tmpfs", target, b"tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                            b"size=4k,mode=0555") == 0
        else:
            ok = libc.mount(b"/dev/null", target, None, _MS_BIND, None) == 0
        if not ok:
            raise _fail(f"mount over {path}")
        hidden += 1
    return hidden


def _work_tmpfs(path: str, size: int) -> None:
    """In a mount namespace of our own: a tmpfs of ``size`` bytes over ``path`` (the only place the
    child writes, so this caps all it writes together)."""
    libc = _libc()
    _own_mount_namespace(libc)
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                  f"size={int(size)},mode=0700".encode()):
        raise _fail(f"tmpfs over {path}")


def _make_reachable(paths: list[str], staging: str) -> int:
    """In a mount namespace of our own: make each of ``paths`` reachable by any uid although an
    ancestor folder is closed to others (Python under ``/root``, mode 0700). The closed ancestor is
    covered by an empty tmpfs that holds only the path, bind-mounted back, so the rest of it stays
    out of reach. ``staging``: a root-only folder to park the mounts in."""
    libc = _libc()
    _own_mount_namespace(libc)
    parked: dict[str, list[tuple[str, str]]] = {}
    for i, path in enumerate(paths):
        closed = closed_ancestor(path)
        if closed is None:
            continue
        park = os.path.join(staging, str(i))
        os.makedirs(park, mode=0o700, exist_ok=True)
        if libc.mount(path.encode(), park.encode(), None, _MS_BIND | _MS_REC, None):
            raise _fail(f"bind {path}")
        parked.setdefault(closed, []).append((path, park))
    for closed, items in parked.items():
        if libc.mount(b"tmpfs", closed.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=64k,mode=0755"):
            raise _fail(f"tmpfs over {closed}")
        for path, park in items:
            os.makedirs(path, mode=0o755, exist_ok=True)
            if libc.mount(park.encode(), path.encode(), None, _MS_BIND | _MS_REC, None):
                raise _fail(f"bind back {path}")
    return sum(len(v) for v in parked.values())


def closed_ancestor(path: str) -> str | None:
    """The highest folder above ``path`` that others may not enter (no o+x), or None."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    current = ""
    for part in parts[:-1] if not os.path.isdir(path) else parts:
        current += os.sep + part
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return current if current != os.path.realpath(path) else None
        except OSError:
            return None
    return None


def _block_sockets() -> None:
    """Python-level fallback where no network namespace is possible: refuse every socket."""
    def hook(event, args):
        if event.startswith("socket.") and event not in ("socket.getaddrinfo", "socket.gethostname"):
            raise PermissionError(f"network access is not allowed in the grading sandbox ({event})")
    sys.addaudithook(hook)


def _close_sysv_ipc() -> bool:
    """In an IPC namespace of our own (root only): no SysV shared memory or message queues, memory
    that no process would hold and the watchdog could not see. True if the limits took."""
    try:
        for name, value in (("shmmax", "0"), ("shmall", "0"), ("shmmni", "0"), ("msgmni", "0"),
                            ("shm_rmid_forced", "1")):
            with open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write(value)
    except OSError:
        return False
    return True


def namespaces() -> dict[str, str]:
    """This process's namespaces (``/proc/self/ns``): the grader passes its own, and the child reports
    a layer as a namespace only where its own differs."""
    found = {}
    for kind in ("net", "pid", "ipc", "mnt"):
        try:
            found[kind] = os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            pass
    return found


def confine(spec: dict) -> dict:
    """Apply the limits of ``spec`` to this process (see the module docstring); return a report.

    ``spec``: ``uid``/``gid`` (None: stay), ``read``, ``write``, ``devices``, ``hide`` (covered where
    Landlock is missing), ``mask`` (always covered: the reference solutions inside a readable
    tree) (path lists), ``work`` (the writable folder) and ``work_bytes`` (its size, a tmpfs made here
    unless bwrap made it), ``limits`` (a :class:`Limits` as dict), ``netns`` (False: stay in the
    network namespace this process is in), ``bind_ports`` (the only TCP ports it may bind, under
    Landlock ABI 4+), ``gpu`` (no RLIMIT_DATA), ``fs`` ("auto", "landlock", "mount", "none"),
    ``require`` (layers that must apply, from :data:`LAYERS`), ``host`` (the grader's
    :func:`namespaces`), ``bwrap`` (True when bubblewrap built the outer layer), ``parent`` (the pid
    that must still be the parent, without bwrap).
    """
    report: dict = {"uid": None, "fs": None, "net": None, "pid": None, "limits": None}
    root = os.geteuid() == 0
    libc = _libc()
    host, mine = spec.get("host") or {}, namespaces()
    for kind in ("net", "pid", "ipc"):
        if host.get(kind) and mine.get(kind) and mine[kind] != host[kind]:
            report[kind] = "namespace"
    if root and spec.get("netns", True) and report["net"] is None:
        # a network namespace with no interface up: every connect fails, 127.0.0.1 included
        if libc.unshare(_CLONE_NEWNET) == 0:
            report["net"] = "namespace"
    if report["net"] is None and spec.get("netns", True):
        _block_sockets()
        report["net"] = "audit-hook"  # weaker: code that calls libc itself is not stopped
    if root and report.get("ipc") is None and libc.unshare(_CLONE_NEWIPC) == 0:
        report["ipc"] = "namespace"
    if root and report.get("ipc") and _close_sysv_ipc():
        report["ipc"] += "-no-sysv"

    limits = spec.get("limits") or {}
    pairs = {
        resource.RLIMIT_CPU: limits.get("cpu_seconds"),
        resource.RLIMIT_FSIZE: limits.get("file_bytes"),
        resource.RLIMIT_NOFILE: limits.get("open_files"),
        resource.RLIMIT_CORE: 0,
    }
    if not spec.get("gpu"):
        pairs[resource.RLIMIT_DATA] = limits.get("memory_bytes")
    if spec.get("uid") is not None:
        # Counted per real uid: binds because the uid is the sandbox's own.
        pairs[resource.RLIMIT_NPROC] = limits.get("processes")
    applied = []
    for which, value in pairs.items():
        if value is None:
            continue
        value = int(value)
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
        applied.append(which)
    report["limits"] = len(applied)

    work, uid, gid = spec.get("work"), spec.get("uid"), spec.get("gid")
    if root and work and spec.get("work_bytes") and not spec.get("bwrap"):
        _work_tmpfs(work, spec["work_bytes"])
    if work:
        try:
            disk = os.statvfs(work)
            if os.stat(work).st_dev != os.stat(os.path.dirname(work)).st_dev:  # a tmpfs of its own
                report["disk"] = disk.f_blocks * disk.f_frsize
        except OSError:
            pass
        if root and uid is not None:
            os.chown(work, uid, gid)
    if root and spec.get("mask") and not spec.get("bwrap"):
        report["masked"] = _hide(spec["mask"])
    if root and uid is not None and not spec.get("bwrap"):
        closed = [p for p in spec.get("read", []) if closed_ancestor(p)]
        if closed:
            report["reachable"] = _make_reachable(closed, spec["staging"])
    mode = spec.get("fs") or "auto"
    if mode in ("auto", "landlock"):
        abi = _landlock(spec.get("read", []), spec.get("write", []), spec.get("devices", []),
                        spec.get("bind_ports", []))
        if abi:
            report["fs"] = f"landlock-abi{abi}"
            if abi >= 4 and report["net"] != "namespace":
                report["net"] = "landlock-tcp" + (f"+{report['net']}" if report["net"] else "")
    if report["fs"] is None and mode in ("auto", "mount") and root and not spec.get("bwrap"):
        report["fs"] = f"mount-hide-{_hide(spec.get('hide', []))}"
    if spec.get("bwrap") and mine.get("mnt") != host.get("mnt"):
        report["fs"] = "bwrap-binds" + (f"+{report['fs']}" if report["fs"] else "")

    if uid is not None and root:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        report["uid"] = uid
    elif not root:
        report["uid"] = "unprivileged-caller"
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # A change of credentials clears the parent-death signal: set it now, then make sure the parent
    # did not die in between (inside bwrap the parent is bwrap's own init, which takes the whole
    # namespace with it).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if not spec.get("bwrap") and os.getppid() != spec.get("parent", os.getppid()):
        os._exit(70)

    missing = [layer for layer in spec.get("require", []) if not report.get(layer)
               or (layer == "net" and report["net"] == "audit-hook")]
    if missing:
        raise ConfinementError(f"sandbox layers unavailable: {', '.join(missing)} (report {json.dumps(report)})")
    return report


# -- the trusted side ----------------------------------------------------------------------------
def privileged() -> bool:
    """Whether sandboxes run as a uid of their own (the grader runs as root)."""
    return os.geteuid() == 0


def sandbox_dir() -> Path:
    """Root-owned folder of the sandbox folders (mode 0711: a child can enter its own folder, not
    list the others). Refuses a folder that someone else owns or can write."""
    base = Path(os.environ.get(DIR_ENV) or "/tmp/course-sandbox")
    try:
        base.mkdir(mode=0o711)
    except FileExistsError:
        pass
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(f"{base} must be a folder owned by uid {os.geteuid()} and writable by no one "
                              f"else (set ${DIR_ENV} to use another)")
    os.chmod(base, 0o711)
    return base


class LeftoverProcesses(RuntimeError):
    """Processes of a sandbox uid survived SIGKILL (the grader's problem, not the submission's)."""


class UidSlot:
    """A uid of the sandbox range held by this process (an exclusive lock on its lock file) until
    :meth:`release`; leftovers of an earlier holder are killed when it is acquired."""

    def __init__(self, uid: int, lock):
        self.uid, self._lock = uid, lock

    def release(self) -> None:
        """Kill what is left of the uid and give it back; :class:`LeftoverProcesses` if something
        survives (the uid is given back all the same: its next holder kills again first)."""
        if self._lock is not None:
            try:
                kill_uid(self.uid)
            finally:
                self._lock.close()
                self._lock = None


def acquire_uid() -> UidSlot:
    """A free uid of the range, cleared of any process an earlier holder left (a uid that cannot be
    cleared is skipped)."""
    import fcntl

    base = int(os.environ.get(UID_BASE_ENV) or 61000)
    if base < 1000:
        raise ValueError(f"${UID_BASE_ENV}={base}: the sandbox's uids must lie above the system's (>= 1000)")
    locks = sandbox_dir()
    stuck = []
    for uid in range(base, base + UID_SLOTS):
        lock = open(locks / f".uid-{uid}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            kill_uid(uid)
        except LeftoverProcesses:
            stuck.append(uid)
            lock.close()
            continue
        return UidSlot(uid, lock)
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids from {base} are in use"
                       + (f" (processes of {stuck} survive SIGKILL)" if stuck else ""))


def sweep() -> dict[int, str]:
    """Kill what is left of sandboxes whose holder has gone (a kernel, a killed grader): every uid
    of the range with a lock file that nobody holds; remove their folders. Never raises: returns
    the uids that had processes left, each with "killed" or why they could not be."""
    import fcntl

    swept = {}
    base = sandbox_dir()
    folders: dict[int, list[Path]] = {}  # a sandbox's folder has a work/ owned by its uid
    for folder in base.glob("course-*"):
        try:
            folders.setdefault(os.lstat(folder / "work").st_uid, []).append(folder)
        except OSError:
            continue
    for lock_path in sorted(base.glob(".uid-*.lock")):
        uid = int(lock_path.name.split("-")[1].split(".")[0])
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if pids(uid=uid):
                try:
                    kill_uid(uid)
                    swept[uid] = "killed"
                except LeftoverProcesses as err:
                    swept[uid] = str(err)
            for folder in folders.get(uid, []):
                shutil.rmtree(folder, ignore_errors=True)
    return swept


def pids(uid: int | None = None, session: int | None = None, zombies: bool = True) -> list[int]:
    """Processes whose real uid is ``uid`` or whose session is ``session`` (from /proc); without
    ``zombies``, only those not yet dead."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if uid is not None:
                with open(f"/proc/{entry.name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if line[:4] in ("Stat", "Uid:"))
                if int(fields["Uid"].split()[0]) == uid and (zombies or fields["State"].split()[0] != "Z"):
                    found.append(int(entry.name))
            elif session is not None:
                stat_fields = _stat(int(entry.name))
                if stat_fields[3] == session and (zombies or stat_fields[0] != "Z"):
                    found.append(int(entry.name))
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return found


def _stat(pid: int) -> list:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, ... (as
    proc(5) numbers them from 3); numbers as int."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    rest = text[text.rfind(")") + 2:].split()
    return [rest[0]] + [int(x) for x in rest[1:]]


def rss_bytes(pid_list: list[int]) -> int:
    """Memory of ``pid_list`` together: proportional set sizes (pages shared after a fork count
    once), or resident sizes where the kernel has no ``smaps_rollup``. Processes gone count 0."""
    total = 0
    for pid in pid_list:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            continue
        except (OSError, StopIteration, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def shared_file_bytes(pid_list: list[int]) -> int:
    """Memory held in files that live in memory and that ``pid_list`` hold open: ``memfd_create``
    files and POSIX shared memory (``/dev/shm``), each counted once. A process's resident size
    misses them while they are not mapped."""
    seen: dict[tuple[int, int], int] = {}
    for pid in pid_list:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(path)
                if not target.startswith(("/memfd:", "/dev/shm/")):
                    continue
                info = os.stat(path)
            except OSError:
                continue
            seen[(info.st_dev, info.st_ino)] = info.st_blocks * 512
    return sum(seen.values())


@dataclass(frozen=True)
class Usage:
    """What a sandbox's processes hold and have used so far (read from /proc by the trusted side)."""

    memory: int | None  # bytes: proportional set sizes plus shared-memory files held open (None: not read)
    cpu: float  # seconds of CPU of its live processes and of the ones they (or its reaper) waited for
    waited: float  # seconds its first process was ready to run but waited for a CPU (schedstat)


_TICK = os.sysconf("SC_CLK_TCK")


def usage(pid_list: list[int], reaper: int | None = None, memory: bool = True) -> Usage:
    """:class:`Usage` of the processes ``pid_list`` (one sandbox's). ``reaper``: a process outside
    that list whose waited-for children were the sandbox's (bubblewrap's init in its PID namespace),
    so that processes which ended count too. The first process is the oldest of ``pid_list``.
    Without ``memory`` the memory is not read (``None``): reading a large process's
    ``smaps_rollup`` walks its page tables, milliseconds that timing a call does not need."""
    cpu, first = 0, None
    for pid in pid_list:
        try:
            fields = _stat(pid)
        except (OSError, ValueError, IndexError):
            continue
        cpu += sum(fields[11:15])  # utime, stime, cutime, cstime
        if first is None or fields[19] < first[1]:  # starttime
            first = (pid, fields[19])
    if reaper is not None:
        try:
            cpu += sum(_stat(reaper)[13:15])
        except (OSError, ValueError, IndexError):
            pass
    waited = 0.0
    if first is not None:
        try:
            with open(f"/proc/{first[0]}/schedstat") as f:
                waited = int(f.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    held = rss_bytes(pid_list) + shared_file_bytes(pid_list) if memory else None
    return Usage(memory=held, cpu=cpu / _TICK, waited=waited)


def charged_seconds(cpu: float, wall: float, waited: float) -> float:
    """The time a stretch of a sandbox's work is charged: what it would have taken on an idle
    machine. CPU time where it computed (several processes add up), wall time less the time its
    first process waited for a CPU where it slept or blocked (sleeping counts; a busy machine does
    not)."""
    return max(cpu, wall - waited)


def kill_uid(uid: int, timeout: float = 10.0) -> None:
    """Kill every process of ``uid`` and check that none is left (zombies aside: they are dead
    and hold nothing but a pid until their parent reaps them). The kill comes from a forked helper
    that becomes ``uid`` and calls ``kill(-1, SIGKILL)``, which reaches exactly that uid's
    processes, whatever session, group or PID namespace below ours they are in (the helper is
    spared). Raises :class:`LeftoverProcesses` if some survive ``timeout`` seconds."""
    if not privileged():
        return
    deadline = time.monotonic() + timeout
    while pids(uid=uid, zombies=False):
        helper = os.fork()
        if helper == 0:  # only system calls here: the grader may have threads
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
        if time.monotonic() > deadline:
            left = pids(uid=uid, zombies=False)
            if left:
                raise LeftoverProcesses(f"processes of sandbox uid {uid} survive SIGKILL: {left}")
        time.sleep(0.02)


def read_paths() -> list[str]:
    """What a child may read besides its own folder: the system, the Python install and the
    libraries' folders (``LD_LIBRARY_PATH``, CUDA's). Never the course tree itself. Paths as they
    are named (``/lib`` may be a link to ``/usr/lib``)."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/opt"]
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))):
        paths.append(p)
    paths += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    # Library folders reached through .pth files (a venv that borrows another's packages).
    paths += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(os.path.abspath(p) for p in paths if os.path.exists(p)))


def masked_paths(read: list[str], reference: Path | None) -> list[str]:
    """Copies of the reference solutions inside the readable trees ``read``: a ``solutions`` package
    that an install put into a site-packages folder, and ``reference`` (the grader's own) if a read
    path holds it. The sandbox covers them with an empty folder."""
    found = [os.path.join(p, "solutions") for p in read
             if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(os.path.join(p, "solutions"))]
    if reference is not None:
        folder = os.path.abspath(reference)
        if any(folder == p or folder.startswith(p.rstrip(os.sep) + os.sep) for p in read):
            found.append(folder)
    return list(dict.fromkeys(found))


def bwrap_executable() -> str | None:
    """bubblewrap's path: ``$COURSE_SANDBOX_BWRAP``, or ``bwrap`` from PATH; None where it is
    missing or switched off (``off``)."""
    choice = os.environ.get(BWRAP_ENV, "")
    if choice.lower() in ("off", "0", "no", "false"):
        return None
    return choice or shutil.which("bwrap")


def bwrap_command(bwrap: str, read: list[str], work: str, work_bytes: int, devices: list[str],
                  mask: list[str], argv: list[str]) -> list[str]:
    """The command that runs ``argv`` inside bubblewrap: new PID, network, IPC and UTS namespaces
    (the tree dies with bwrap, which dies with its parent); a root holding only ``read`` (read-only;
    a link such as ``/lib`` stays a link), a new ``/proc`` and a minimal ``/dev`` with ``devices``
    added (``/dev/nvidia*`` on a GPU machine), ``mask`` covered by empty folders, and ``work`` as a
    tmpfs of ``work_bytes`` bytes, the only writable place, where it starts."""
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    bound: list[str] = ["/proc", "/dev"]
    made: set[str] = set()

    def inside(path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip(os.sep) + os.sep) for b in bound)

    def parents(path: str) -> list[str]:
        # bwrap makes missing folders above a mount point with mode 0700: make them 0755 first
        extra = []
        for parent in reversed(Path(path).parents[:-1] if Path(path).parents else []):
            if str(parent) not in made and not inside(str(parent)):
                extra += ["--dir", str(parent)]
                made.add(str(parent))
        return extra

    for path in sorted(dict.fromkeys(read), key=lambda p: (p.count(os.sep), p)):
        if inside(path):
            continue
        if os.path.islink(path):
            args += parents(path) + ["--symlink", os.readlink(path), path]
            bound.append(path)
            target = os.path.realpath(path)
            if not inside(target):
                args += parents(target) + ["--ro-bind", target, target]
                bound.append(target)
        else:
            args += parents(path) + ["--ro-bind", path, path]
            bound.append(path)
    for device in devices:
        if device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random") or not os.path.exists(device):
            continue  # the minimal /dev has these
        args += ["--dev-bind", device, device]
    for path in mask:
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    args += parents(work) + ["--perms", "0700", "--size", str(int(work_bytes)), "--tmpfs", work, "--chdir", work]
    return args + ["--", *argv]


def device_paths(gpu: bool) -> list[str]:
    devices = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
    if gpu:
        devices += sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    return devices


def gpu_processes(index: int | str) -> list[tuple[int, int]]:
    """(pid, MiB) of the compute processes on GPU ``index`` (nvidia-smi); [] without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            rows.append((int(parts[0]), int(parts[1]) if parts[1].isdigit() else 0))
    return rows


def wait_gpu_free(index: int | str, timeout: float = 60.0, ignore: set[int] = frozenset()) -> None:
    """Return once GPU ``index`` runs no compute process (but ``ignore``); raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [(p, m) for p, m in gpu_processes(index) if p not in ignore]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GPU {index} is still in use after {timeout:g} s: {busy}")
        time.sleep(0.5)


__all__ = ["Limits", "confine", "ConfinementError", "landlock_abi", "privileged", "sandbox_dir", "acquire_uid",
           "UidSlot", "LeftoverProcesses", "kill_uid", "sweep", "pids", "usage", "Usage", "charged_seconds",
           "rss_bytes", "shared_file_bytes", "read_paths", "masked_paths", "device_paths", "bwrap_executable",
           "bwrap_command", "namespaces", "gpu_processes", "wait_gpu_free", "LAYERS"]
