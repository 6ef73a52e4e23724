"""Runs one untrusted Python program under kernel-enforced limits (see _launcher.py and docs/reward.md).

The parent (a reward worker) asks its zygote for a launcher in a new session, moves the launcher into a
fresh per-run cgroup (memory + pids cap over all processes of the run, cgroups.py; where the server has
none, per-process rlimits only), feeds the program and its stdin, reads stdout/stderr with a byte cap
and a wall-clock deadline, and SIGKILLs the whole process group and cgroup on any overrun, on the
cgroup's OOM event, or when the pool cancels the item (a byte on the cancel fd). Expected outputs never
enter the child: callers compare in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from r1jax.reward import cgroups

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_launcher.py")
EXIT_NO_NAMESPACE, EXIT_SETUP_FAILED, EXIT_MEMORY, EXIT_CPU = 90, 91, 101, 102
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_s: int = 5  # RLIMIT_CPU (SIGXCPU, then SIGKILL one second later)
    wall_s: float = 10.0  # parent-side wall clock, covers sleeping and blocking
    memory_mb: int = 1024  # RLIMIT_AS per process, and the run's memory cgroup cap over all its processes
    nproc: int = 32  # processes + threads of a run: pids cgroup (+2: launcher, pid 1), else RLIMIT_NPROC per uid
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    nofile: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout + stderr cap, enforced by the reader
    tmpfs_mb: int = 64  # size of the private /tmp (caps total disk use)
    uid: int | None = 100_000  # unprivileged uid the program runs as (None: keep ours; weak mode)
    namespaces: bool = True  # new net + mount + pid namespaces; False only in weak mode
    # site-packages importable by the program; off by default: `site` costs ~0.2 s per run here
    # (.pth files), and contest / HumanEval programs need only the standard library
    site_packages: bool = False
    nice: int = 0  # niceness of the program (0-19): >0 lets graders and the trainer win CPU contention

    def __post_init__(self):
        if not isinstance(self.nice, int) or not 0 <= self.nice <= 19:
            raise ValueError(f"Limits.nice must be an int in [0, 19], got {self.nice!r}")
        for name in (
            "cpu_s",
            "wall_s",
            "memory_mb",
            "nproc",
            "fsize_mb",
            "nofile",
            "output_bytes",
            "tmpfs_mb",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when we killed it
    stdout: str
    stderr: str
    timed_out: bool  # killed on the parent's wall clock
    output_exceeded: bool  # killed for writing more than limits.output_bytes
    wall_s: float
    memory_exceeded: bool = False  # the run's memory cgroup reached its cap (the run was killed)
    cgroup: bool = False  # the run had its own cgroup (memory + pids cap over all its processes)

    @property
    def signal(self) -> int | None:
        return self.exit_code - 128 if self.exit_code is not None and self.exit_code > 128 else None

    @property
    def cpu_exceeded(self) -> bool:
        return self.exit_code == EXIT_CPU


class SandboxUnavailable(RuntimeError):
    """The kernel refused the isolation this sandbox promises; nothing was run."""


class Cancelled(BaseException):  # noqa: N818 - control flow, like KeyboardInterrupt: nothing may swallow it
    """The pool cancelled the item (its client left or its deadline passed); the run was killed."""


# Set once per worker process by configure(): the server's cgroup parent, a name for run cgroups, and the
# fd on which the pool signals a cancel (any readable byte or EOF).
_run_cgroups: cgroups.CgroupParent | None = None
_slot_name = "main"
_cancel_fd: int | None = None
_run_seq = 0
_defer_cleanup = False
_pending: list[cgroups.RunCgroup] = []  # finished runs' cgroups (empty of processes) still to remove


def configure(cgroup_parent: cgroups.CgroupParent | None, slot_name: str, cancel_fd: int | None = None,
              defer_cleanup: bool = False):
    """Per worker process: runs get cgroups under cgroup_parent (None: rlimits only), named
    run-<slot_name>-<pid>-<n>; a readable cancel_fd cancels the current run (raises Cancelled);
    defer_cleanup: a run's (emptied) cgroup is removed by finish_pending(), which the worker calls right
    after sending the verdict, instead of before returning."""
    global _run_cgroups, _slot_name, _cancel_fd, _defer_cleanup
    _run_cgroups, _slot_name, _cancel_fd, _defer_cleanup = cgroup_parent, slot_name, cancel_fd, defer_cleanup


def finish_pending() -> None:
    """Removes the cgroups of finished runs (see configure)."""
    while _pending:
        _pending.pop().close()


def _readable(fd: int | None) -> bool:
    if fd is None:
        return False
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


class _Zygote:
    """This process's sandbox zygote (see _launcher.py): started on first use, restarted if it dies."""

    def __init__(self, site_packages: bool):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        flags = ("-I",) if site_packages else ("-I", "-S")
        self.proc = subprocess.Popen(
            [sys.executable, *flags, _LAUNCHER, "--zygote", str(child.fileno()), str(os.getpid())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/",
        )
        child.close()
        self.sock, self.owner, self.site_packages = parent, os.getpid(), site_packages
        self.buf = b""

    def usable(self, site_packages: bool) -> bool:
        # between runs the zygote never speaks: a readable socket means it died (EOF) or is confused
        return (
            self.owner == os.getpid()
            and self.proc.poll() is None
            and self.site_packages == site_packages
            and not (self.buf or _readable(self.sock.fileno()))
        )

    def read_int(self, timeout_s: float) -> int:
        """The next "<int>\\n" from the zygote; TimeoutError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("sandbox zygote did not answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(256)
            if not chunk:
                raise ConnectionError("sandbox zygote closed its socket")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return int(line)

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self.sock.close()


_zygote: _Zygote | None = None


def _get_zygote(site_packages: bool) -> _Zygote:
    global _zygote
    if _zygote is None or not _zygote.usable(site_packages):
        if _zygote is not None and _zygote.owner == os.getpid():
            _zygote.close()
        _zygote = _Zygote(site_packages)
    return _zygote


def ensure_zygote(site_packages: bool = False) -> socket.socket:
    """Starts (or restarts, if it died) this process's zygote now -> its socket, which becomes readable
    only if the zygote dies while idle: a worker waits on it to restart a dead zygote at once."""
    return _get_zygote(site_packages).sock


def zygote_pid() -> int | None:
    return _zygote.proc.pid if _zygote is not None and _zygote.owner == os.getpid() else None


def run_python(source: str, stdin: str, limits: Limits) -> RunResult:
    """Runs source with stdin under limits. Raises SandboxUnavailable (no isolation, nothing run),
    RuntimeError (the sandbox itself failed: a grader error), Cancelled (the pool cancelled the item)."""
    global _zygote, _run_seq
    if _readable(_cancel_fd):
        raise Cancelled("cancelled before the run started")
    cfg = dataclasses.asdict(limits)
    workdir = None
    if not limits.namespaces:
        workdir = tempfile.mkdtemp(prefix="r1jax-sbx-")
        if limits.uid is not None:
            os.chown(workdir, limits.uid, limits.uid)
    cfg["workdir"] = workdir
    cfg["parent_pid"] = 0  # set by the zygote
    cfg["nproc_rlimit"] = _run_cgroups is None or _run_cgroups.pids is None
    cfg["cgroup_procs"] = None
    finish_pending()
    src_b, in_b = source.encode(), stdin.encode()
    payload = f"{len(src_b)} {len(in_b)}\n".encode() + src_b + in_b
    t0 = time.monotonic()
    cg = None
    if _run_cgroups is not None:
        _run_seq += 1
        try:
            cg = cgroups.RunCgroup(
                _run_cgroups, f"run-{_slot_name}-{os.getpid()}-{_run_seq}", limits.memory_mb * MB, limits.nproc + 2
            )
        except OSError as e:  # the promised cap cannot be set: a grader failure, never an uncapped run
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"sandbox cgroup failed: {type(e).__name__}: {e}") from e
        # the launcher joins it itself, first thing, before it reads the program
        cfg["cgroup_procs"] = ";".join(os.path.join(d, "cgroup.procs") for d in cg.dirs)
    zyg = _get_zygote(limits.site_packages)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = None
    memory_exceeded = False
    stdin_open = True  # in_w until _communicate takes (and closes) it
    try:
        try:
            socket.send_fds(zyg.sock, [_format_config(cfg).encode()], [in_r, out_w, err_w])
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        pid = zyg.read_int(10.0)
        stdin_open = False
        out, err, why = _communicate(in_w, out_r, err_r, payload, limits, t0, cg)
        timed_out, exceeded = why == "wall", why == "output"
        if why:
            _kill_group(pid)
            if cg is not None:
                cg.kill()
        left = 10.0 if why else limits.wall_s - (time.monotonic() - t0)
        try:
            code = zyg.read_int(left)
        except TimeoutError:  # pipes closed but the program lingers (e.g. closed its stdout): over time
            timed_out = True
            _kill_group(pid)
            if cg is not None:
                cg.kill()
            code = zyg.read_int(10.0)
        if cg is not None:
            memory_exceeded = why == "memory" or cg.oom_killed()
        if why == "cancel":
            raise Cancelled("cancelled while running; the run was killed")
    except (OSError, ValueError) as e:
        if pid is not None:
            _kill_group(pid)
        zyg.close()
        _zygote = None
        raise RuntimeError(f"sandbox zygote failed: {type(e).__name__}: {e}") from e
    finally:
        for fd in (out_r, err_r) + ((in_w,) if stdin_open else ()):
            with contextlib.suppress(OSError):
                os.close(fd)
        if cg is not None:
            if _defer_cleanup:  # removed once the verdict is sent (finish_pending); nothing may run meanwhile
                cg.kill_left()
                _pending.append(cg)
            else:
                cg.close()  # kills anything left (weak mode has no pid namespace) and removes the cgroup
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if timed_out or exceeded:
        code = None
    if code == EXIT_NO_NAMESPACE:
        raise SandboxUnavailable(err.decode(errors="replace").strip())
    if code == EXIT_SETUP_FAILED:
        raise RuntimeError(f"sandbox setup failed: {err.decode(errors='replace').strip()}")
    return RunResult(
        code,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        timed_out,
        exceeded,
        time.monotonic() - t0,
        memory_exceeded=memory_exceeded,
        cgroup=cg is not None,
    )


def _format_config(cfg: dict) -> str:
    """The launcher's argv: "key=value,..." (parsed without json to keep its start-up short)."""
    for k, v in cfg.items():
        if isinstance(v, str) and ("," in v or "=" in v):
            raise ValueError(f"sandbox config {k}={v!r} may not contain ',' or '='")
    return ",".join(f"{k}={v}" for k, v in cfg.items())


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes, limits: Limits, t0: float, cg):
    """Writes the payload, reads both pipes until EOF or a reason to stop -> (stdout, stderr, why) with
    why "" (both pipes closed), "wall", "output", "memory" (the cgroup's OOM event) or "cancel"."""
    try:
        with open(in_w, "wb", closefd=True) as f:  # the launcher reads all stdin before running anything
            f.write(data)
    except BrokenPipeError:
        pass
    sel = selectors.DefaultSelector()
    bufs = {out_r: bytearray(), err_r: bytearray()}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    events = {}
    if cg is not None and cg.oom_fd is not None:
        events[cg.oom_fd] = "memory"
    if _cancel_fd is not None:
        events[_cancel_fd] = "cancel"
    for fd in events:
        sel.register(fd, selectors.EVENT_READ)
    why = ""
    open_pipes = 2
    while open_pipes and not why:
        left = limits.wall_s - (time.monotonic() - t0)
        if left <= 0:
            why = "wall"
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            if key.fd in events:
                if events[key.fd] == "cancel" or cg.oom_event():
                    why = events[key.fd]
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                open_pipes -= 1
                continue
            bufs[key.fd] += chunk
        if not why and sum(len(b) for b in bufs.values()) > limits.output_bytes:
            why = "output"
    sel.close()
    return bytes(bufs[out_r]), bytes(bufs[err_r]), why


def _kill_group(pid: int):
    """SIGKILL the launcher's whole process group; the pid namespace takes the rest with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def probe(limits: Limits) -> dict:
    """Start-up check: can we isolate? Returns {"ok": bool, "network": bool, "detail": str}."""
    src = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(1)\n"
        "try:\n"
        "    s.connect(('1.1.1.1', 53)); print('NET')\n"
        "except OSError:\n"
        "    print('NONET')\n"
    )
    try:
        r = run_python(src, "", limits)
    except SandboxUnavailable as e:
        return {"ok": False, "network": True, "detail": str(e)}
    except Exception as e:  # noqa: BLE001 - any failure here means code tasks cannot run safely
        return {"ok": False, "network": True, "detail": f"{type(e).__name__}: {e}"}
    ok = r.exit_code == 0 and "NONET" in r.stdout
    return {"ok": ok, "network": "NET" in r.stdout.split(), "detail": (r.stdout + r.stderr).strip()[-500:]}
