"""Per-run cgroups for the code sandbox: one memory cap and one pids cap over every process of a run.

RLIMIT_AS is per process, so a program that forks and splits its allocation over its children could hold
many times the limit. The kernel's memory cgroup counts all processes of a run together (and the tmpfs
pages they write); the pids cgroup caps the number of processes of the run (not of a uid).

Layout, created by the server at start and removed at shutdown (docs/reward.md § The sandbox):

  cgroup v1 (one tree per controller; here /sys/fs/cgroup/memory and /sys/fs/cgroup/pids):
    <tree>/<the server's own cgroup in that tree>/r1jax-reward/srv-<server pid>-<start ticks>/
        run-<slot>-<worker pid>-<n>            one per sandboxed run, made and removed by the worker
  cgroup v2 (one tree): the same names under the nearest cgroup at or above the server's own whose
    cgroup.subtree_control enables memory (a cgroup with processes cannot enable controllers for its
    children, so this is usually a parent slice or the root).

A run's cgroup gets memory.limit_in_bytes (+ memsw: no swapping past it) or memory.max (+ swap.max 0,
oom.group 1) and pids.max, the launcher process moves itself in before it reads the program, and at the
end every process left in it is SIGKILLed and the directory removed. A server that was SIGKILLed leaves
its srv-* directory behind: the next server started in the same cgroup removes every srv-* whose server
process is gone (pid and start time). Where no writable cgroup exists, `setup` returns None with the
reason and the sandbox falls back to per-process rlimits (RLIMIT_AS, RLIMIT_NPROC per sandbox uid).

Never imports jax; used by the server (setup / teardown) and the workers (RunCgroup).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import time

ROOT_NAME = "r1jax-reward"
MEMORY, PIDS = "memory", "pids"


@dataclasses.dataclass(frozen=True)
class CgroupParent:
    """The server's own directory in each hierarchy (srv-<pid>-<ticks>); run cgroups go inside."""

    version: int  # 1 or 2
    memory: str  # directory in the memory hierarchy (v2: in the one tree)
    pids: str | None  # directory in the pids hierarchy (v2: == memory when pids is enabled); None: no pids cap

    def dirs(self) -> list[str]:
        return list(dict.fromkeys(d for d in (self.memory, self.pids) if d))

    def describe(self) -> dict:
        return {"enabled": True, "version": self.version, "memory": self.memory, "pids": self.pids}


# ------------------------------------------------------------------ discovery


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside the hierarchy, fstype, super options) of every cgroup mount."""
    out = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            point = fields[4].replace("\\040", " ")
            out.append((point, fields[3], rfields[0], set(rfields[2].split(","))))
    return out


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 tree)."""
    out = {}
    with open(proc_cgroup) as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if controllers == "":
                out[""] = path
            for c in controllers.split(","):
                if c:
                    out[c] = path
    return out


def _join(point: str, root: str, path: str) -> str | None:
    """Where the cgroup `path` lives under a mount of the hierarchy's `root` (None: not visible there)."""
    root = root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None
    rel = path[len(root):].lstrip("/")
    return os.path.join(point, rel) if rel else point


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _v1_base(mounts, own, controller) -> tuple[str | None, str]:
    for point, root, fstype, opts in mounts:
        if fstype == "cgroup" and controller in opts:
            if controller not in own:
                return None, f"{controller}: this process is in no {controller} cgroup"
            d = _join(point, root, own[controller])
            if d is None or not os.path.isdir(d):
                return None, f"{controller}: own cgroup {own[controller]} not visible under {point}"
            return d, ""
    return None, f"no cgroup v1 hierarchy with the {controller} controller"


def _v2_base(mounts, own) -> tuple[str | None, bool, str]:
    """The nearest cgroup at or above ours that gives its children memory (and pids?) -> (dir, pids, why)."""
    for point, root, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        d = _join(point, root, own[""])
        if d is None:
            continue
        while True:
            try:
                enabled = set(_read(os.path.join(d, "cgroup.subtree_control")).split())
            except OSError:
                enabled = set()
            if MEMORY in enabled:
                return d, PIDS in enabled, ""
            if os.path.normpath(d) == os.path.normpath(point):
                break
            d = os.path.dirname(d)
        return None, False, f"cgroup v2 at {point}: no cgroup at or above ours enables the memory controller"
    return None, False, "no cgroup v2 mount"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def server_dir_name(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"srv-{pid}-{_start_ticks(pid)}"


def _alive(name: str) -> bool:
    """Is the server that owns srv-<pid>-<ticks> still running?"""
    try:
        _, pid, ticks = name.split("-", 2)
        return _start_ticks(int(pid)) == int(ticks)
    except (ValueError, TypeError):
        return False


# ------------------------------------------------------------------ removal


def _procs(d: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def kill_tree(d: str) -> None:
    """SIGKILL every process in cgroup `d` and its descendants (cgroup.kill where the kernel has it)."""
    for sub, _, _ in os.walk(d, topdown=False):
        if os.path.exists(os.path.join(sub, "cgroup.kill")):
            with contextlib.suppress(OSError):
                _write(os.path.join(sub, "cgroup.kill"), 1)
        for pid in _procs(sub):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def remove_tree(d: str, timeout_s: float = 2.0) -> bool:
    """Kills everything in cgroup `d` and removes it and its descendants, bottom-up. True when gone."""
    if not os.path.isdir(d):
        return True
    give_up = time.monotonic() + timeout_s
    while True:
        kill_tree(d)
        busy = False
        for sub, _dirs, _ in os.walk(d, topdown=False):
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
            except OSError as e:  # EBUSY while killed processes finish exiting
                busy = busy or e.errno in (errno.EBUSY, errno.ENOTEMPTY)
        if not os.path.isdir(d):
            return True
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01 if busy else 0.05)


def runs_of(parent: CgroupParent, prefix: str = "run-") -> list[str]:
    """The run cgroups (directories) under the server's parent whose name starts with prefix."""
    out = []
    for d in parent.dirs():
        with contextlib.suppress(OSError):
            out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(prefix)]
    return out


def purge_runs(parent: CgroupParent | None, prefix: str = "run-") -> int:
    """Kills and removes run cgroups (e.g. those of a worker that was killed mid-run) -> how many."""
    if parent is None:
        return 0
    dirs = runs_of(parent, prefix)
    for d in dirs:
        remove_tree(d)
    return len(dirs)


def cleanup_stale(base: str) -> list[str]:
    """Removes every srv-* under base (<own cgroup>/r1jax-reward) whose server is gone -> their paths."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            d = os.path.join(base, name)
            if name.startswith("srv-") and os.path.isdir(d) and not _alive(name) and remove_tree(d):
                removed.append(d)
    return removed


def teardown(parent: CgroupParent | None) -> None:
    """Server shutdown: kill and remove this server's tree, and r1jax-reward when nobody else uses it."""
    if parent is None:
        return
    for d in parent.dirs():
        remove_tree(d)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(d))  # fails while another server's srv-* lives there: fine


# ------------------------------------------------------------------ server start


def setup(mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup",
          pid: int | None = None) -> tuple[CgroupParent | None, dict]:
    """Finds a writable memory cgroup for this server, removes stale trees of dead servers, creates
    this server's srv-* directory -> (parent or None, report for /health). Never raises."""
    report: dict = {"enabled": False, "stale_removed": 0}
    try:
        mounts, own = _mounts(mountinfo), _own_cgroups(proc_cgroup)
        name = server_dir_name(pid)
        mem, why = _v1_base(mounts, own, MEMORY)
        if mem is not None:
            version = 1
            pids_base, pids_why = _v1_base(mounts, own, PIDS)
            bases = {MEMORY: mem, PIDS: pids_base}
        else:
            v2, has_pids, why2 = _v2_base(mounts, own)
            if v2 is None:
                report["detail"] = f"{why}; {why2}"
                return None, report
            version, pids_why = 2, "" if has_pids else "cgroup v2: the pids controller is not enabled"
            bases = {MEMORY: v2, PIDS: v2 if has_pids else None}
        made: dict[str, str | None] = {}
        for ctl, base in bases.items():
            if base is None:
                made[ctl] = None
                continue
            root = os.path.join(base, ROOT_NAME)
            if version == 2 and base in made.values():
                made[ctl] = made[MEMORY]
                continue
            report["stale_removed"] += len(cleanup_stale(root))
            d = os.path.join(root, name)
            for attempt in range(3):  # another server may remove an empty r1jax-reward between our mkdirs
                try:
                    os.makedirs(d, exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            if not os.path.exists(os.path.join(d, "cgroup.procs")):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
                    os.rmdir(root)
                raise OSError(f"{base} is not a cgroup filesystem (no cgroup.procs in a new directory)")
            if version == 2:  # let the run cgroups below use the controllers
                for level in (root, d):
                    _write(os.path.join(level, "cgroup.subtree_control"),
                           "+memory +pids" if bases[PIDS] else "+memory")
            made[ctl] = d
        parent = CgroupParent(version, made[MEMORY], made[PIDS])
        report.update(parent.describe())
        report["detail"] = pids_why or "memory and pids capped per run"
        return parent, report
    except (OSError, ValueError) as e:
        report["detail"] = f"no writable cgroup: {type(e).__name__}: {e}"
        return None, report


# ------------------------------------------------------------------ one run (in the worker)


class RunCgroup:
    """The cgroup(s) of one sandboxed run: created with its limits, joined by the launcher, then closed
    (everything in it killed, directories removed). `oom_fd` (v1) becomes readable when the run hits
    its memory cap; on v2 the kernel kills the whole group itself (memory.oom.group)."""

    def __init__(self, parent: CgroupParent, name: str, memory_bytes: int, pids_max: int):
        self.parent = parent
        self.dirs: list[str] = []
        self.oom_fd: int | None = None
        self._control_fd: int | None = None
        self._hit = False  # the v1 OOM event fired
        try:
            mem = os.path.join(parent.memory, name)
            os.mkdir(mem)
            self.dirs.append(mem)
            if parent.version == 1:
                _write(os.path.join(mem, "memory.limit_in_bytes"), memory_bytes)
                memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):  # no swapping past the cap (only where swap accounting is on)
                    _write(memsw, memory_bytes)
                self.oom_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._control_fd = os.open(os.path.join(mem, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
                _write(os.path.join(mem, "cgroup.event_control"), f"{self.oom_fd} {self._control_fd}")
            else:
                _write(os.path.join(mem, "memory.max"), memory_bytes)
                for fname, value in (("memory.swap.max", 0), ("memory.oom.group", 1)):
                    if os.path.exists(os.path.join(mem, fname)):
                        _write(os.path.join(mem, fname), value)
            if parent.pids:
                pd = os.path.join(parent.pids, name)
                if pd != mem:
                    os.mkdir(pd)
                    self.dirs.append(pd)
                _write(os.path.join(pd, "pids.max"), pids_max)
        except BaseException:
            self.close()
            raise

    def oom_event(self) -> bool:
        """Consumes the v1 OOM eventfd: True (and remembered) when the run reached its cap."""
        if self.oom_fd is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._hit = self._hit or os.eventfd_read(self.oom_fd) > 0
        return self._hit

    def oom_killed(self) -> bool:
        """Did the run reach its memory cap (the kernel's OOM handling ran in this cgroup)?"""
        mem = self.dirs[0] if self.dirs else None
        if mem is None:
            return False
        if self.oom_event() or self._hit:
            return True
        try:
            text = _read(os.path.join(mem, "memory.oom_control" if self.parent.version == 1 else "memory.events"))
        except OSError:
            return False
        counts = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)
        keys = ("oom_kill",) if self.parent.version == 1 else ("oom", "oom_kill", "oom_group_kill")
        return any(int(counts.get(k, 0) or 0) > 0 for k in keys)

    def kill(self) -> None:
        for d in self.dirs:
            kill_tree(d)

    def kill_left(self) -> None:
        """Kills what is left in the run's cgroup(s), if anything (one read each when empty)."""
        for d in self.dirs:
            if _procs(d):
                kill_tree(d)

    def close(self) -> bool:
        """Kills what is left and removes the directories -> True when removed."""
        ok = True
        for d in self.dirs:  # usually empty already (the pid namespace died with the run): one rmdir
            try:
                if not _procs(d):
                    os.rmdir(d)
                    continue
            except FileNotFoundError:
                continue
            except OSError:
                pass
            ok = remove_tree(d, timeout_s=1.0) and ok
        for fd in (self.oom_fd, self._control_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.oom_fd = self._control_fd = None
        self.dirs = [] if ok else self.dirs
        return ok
