"""Operating-system limits of the grading sandbox: what confines the child that runs student code.

Two halves, one file (the child gets a copy of it beside its runner; it needs only the standard
library):

- :func:`confine` runs *in the child*, first thing, before any student code is imported. As root it
  moves the child into a network namespace of its own (no interface is up: no network, not even
  127.0.0.1), restricts the file system with Landlock (read-only: the system, the Python install,
  the sandbox's own code folder; writable: its work folder and ``/dev/null``; nothing else, so not
  the course tree with its hidden tests and reference solutions, the gradebook or other students'
  submissions), or where Landlock is missing mounts empty folders over those paths in a mount
  namespace of its own; sets resource limits (CPU seconds, data segment, processes, file size, open
  files, no core dumps); then drops to an unprivileged uid of its own with no groups. Without root
  it applies what an ordinary user may (Landlock, limits, a socket-blocking audit hook). It returns a
  report of the layers that took effect; ``require`` makes a missing layer an error.
- The trusted side's helpers: :class:`Limits`, a uid of its own per sandbox (:func:`acquire_uid`,
  one lock file per uid, so parallel graders never share one), :func:`kill_uid` (every process of
  that uid, including those that left the process group), :func:`pids` and :func:`rss_bytes` (the
  door's memory watchdog, which is what bounds memory on a GPU, where ``RLIMIT_AS`` and
  ``RLIMIT_DATA`` would break CUDA's address-space reservations), and :func:`gpu_processes` /
  :func:`wait_gpu_free` (one submission at a time per GPU, the GPU checked free before the next).

Nothing here is a substitute for a container or a VM; it is what one Linux host offers without
extra software. Measured on Linux 6.18 (Landlock ABI 7) as root: every layer applies.
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
LAYERS = ("uid", "fs", "net", "limits")

_CLONE_NEWNS = 0x00020000
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

    call_timeout: float = 60.0  # wall seconds of one call into the submission
    exercise_timeout: float = 180.0  # wall seconds of all calls into one exercise's entry point
    submission_timeout: float = 600.0  # wall seconds of all calls into one submission together
    cpu_seconds: int = 900  # RLIMIT_CPU of each child process
    memory_bytes: int = 4 << 30  # resident memory of all the sandbox's processes (watchdog), and
    #                              RLIMIT_DATA of each process where there is no GPU
    processes: int = 128  # RLIMIT_NPROC (threads count); binds because the uid is the sandbox's own
    file_bytes: int = 256 << 20  # RLIMIT_FSIZE: largest file the child may write
    open_files: int = 512  # RLIMIT_NOFILE

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


def _hide(paths: list[str]) -> int:
    """Mount namespace of our own with an empty read-only folder (or /dev/null) over each path."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS):
        raise _fail("unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None):
        raise _fail("mount --make-rprivate /")
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


def _make_reachable(paths: list[str], staging: str) -> int:
    """In a mount namespace of our own: make each of ``paths`` reachable by any uid although an
    ancestor folder is closed to others (Python under ``/root``, mode 0700). The closed ancestor is
    covered by an empty tmpfs that holds only the path, bind-mounted back, so the rest of it stays
    out of reach. ``staging``: a root-only folder to park the mounts in."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS):
        raise _fail("unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None):
        raise _fail("mount --make-rprivate /")
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


def confine(spec: dict) -> dict:
    """Apply the limits of ``spec`` to this process (see the module docstring); return a report.

    ``spec``: ``uid``/``gid`` (None: stay), ``read``, ``write``, ``devices``, ``hide`` (path lists),
    ``limits`` (a :class:`Limits` as dict), ``netns`` (False: stay in the host's network namespace,
    as a notebook kernel must to reach its client on 127.0.0.1), ``bind_ports`` (the only TCP ports
    it may bind, under Landlock ABI 4+), ``gpu`` (no RLIMIT_DATA), ``fs`` ("auto", "landlock",
    "mount", "none"), ``require`` (layers that must apply, from :data:`LAYERS`).
    """
    report: dict = {"uid": None, "fs": None, "net": None, "limits": None}
    root = os.geteuid() == 0
    libc = _libc()
    if root and spec.get("netns", True):
        # a network namespace with no interface up: every connect fails, 127.0.0.1 included
        if libc.unshare(_CLONE_NEWNET) == 0:
            report["net"] = "namespace"
    if report["net"] is None and spec.get("netns", True):
        _block_sockets()
        report["net"] = "audit-hook"  # weaker: code that calls libc itself is not stopped

    limits = spec.get("limits") or {}
    pairs = {
        resource.RLIMIT_CPU: limits.get("cpu_seconds"),
        resource.RLIMIT_FSIZE: limits.get("file_bytes"),
        resource.RLIMIT_NOFILE: limits.get("open_files"),
        resource.RLIMIT_CORE: 0,
    }
    if not spec.get("gpu"):
        pairs[resource.RLIMIT_DATA] = limits.get("memory_bytes")
    if spec.get("uid") is not None or not root:
        # Counted per real uid: binds the sandbox's own uid; for an ordinary user it counts all of
        # their processes, so there it only caps runaway forking far above normal use.
        if spec.get("uid") is not None:
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

    if root and spec.get("uid") is not None:
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
    if report["fs"] is None and mode in ("auto", "mount") and root:
        report["fs"] = f"mount-hide-{_hide(spec.get('hide', []))}"

    uid, gid = spec.get("uid"), spec.get("gid")
    if uid is not None and root:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        report["uid"] = uid
    elif not root:
        report["uid"] = "unprivileged-caller"
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # A change of credentials clears the parent-death signal: set it now, then make sure the door
    # did not die in between.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec.get("parent", os.getppid()):
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


class UidSlot:
    """A uid of the sandbox range held by this process (an exclusive lock on its lock file) until
    :meth:`release`; leftovers of an earlier holder are killed when it is acquired."""

    def __init__(self, uid: int, lock):
        self.uid, self._lock = uid, lock

    def release(self) -> None:
        if self._lock is not None:
            kill_uid(self.uid)
            self._lock.close()
            self._lock = None


def acquire_uid() -> UidSlot:
    import fcntl

    base = int(os.environ.get(UID_BASE_ENV) or 61000)
    locks = sandbox_dir()
    for uid in range(base, base + UID_SLOTS):
        lock = open(locks / f".uid-{uid}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        kill_uid(uid)
        return UidSlot(uid, lock)
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids from {base} are in use")


def sweep() -> int:
    """Kill what is left of sandboxes whose holder has gone (a kernel, a killed grader): every uid
    of the range with a lock file that nobody holds; remove their folders. Returns how many uids
    had processes left."""
    import fcntl

    swept = 0
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
                kill_uid(uid)
                swept += 1
            for folder in folders.get(uid, []):
                shutil.rmtree(folder, ignore_errors=True)
    return swept


def pids(uid: int | None = None, session: int | None = None) -> list[int]:
    """Processes whose real uid is ``uid`` or whose session is ``session`` (from /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if uid is not None:
                with open(f"/proc/{entry.name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                found.append(int(entry.name))
                            break
            elif session is not None:
                with open(f"/proc/{entry.name}/stat") as f:
                    text = f.read()
                if int(text[text.rfind(")") + 2:].split()[3]) == session:
                    found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


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


def kill_uid(uid: int, timeout: float = 10.0) -> None:
    """Kill every process of ``uid``: from a helper running as that uid, ``kill(-1, SIGKILL)``
    reaches exactly them, including any that left the process group. Repeats until none is left."""
    if not privileged():
        return
    deadline = time.monotonic() + timeout
    kill = shutil.which("kill", path="/usr/bin:/bin") or "/bin/kill"
    while pids(uid=uid):
        # kill(-1) from a helper of that uid: exactly that uid's processes (not the helper itself)
        subprocess.run([kill, "-s", "KILL", "--", "-1"],
                       user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of sandbox uid {uid} survive SIGKILL: {pids(uid=uid)}")
        time.sleep(0.05)


def read_paths() -> list[str]:
    """What a child may read besides its own folder: the system, the Python install and the
    libraries' folders (``LD_LIBRARY_PATH``, CUDA's). Never the course tree itself."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/opt"]
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))):
        paths.append(p)
    paths += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    # Library folders reached through .pth files (a venv that borrows another's packages).
    paths += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(os.path.realpath(p) for p in paths if os.path.exists(p)))


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
           "UidSlot", "kill_uid", "pids", "rss_bytes", "read_paths", "device_paths", "gpu_processes",
           "wait_gpu_free", "LAYERS"]
