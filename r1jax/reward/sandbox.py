"""Runs one untrusted Python program under kernel-enforced limits (see _launcher.py and docs/reward.md).

The parent (a reward worker) starts the launcher in a new session, feeds the program and its stdin,
reads stdout/stderr with a byte cap and a wall-clock deadline, and SIGKILLs the whole process group
on any overrun. Expected outputs never enter the child: callers compare in this process.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_launcher.py")
EXIT_NO_NAMESPACE, EXIT_SETUP_FAILED, EXIT_MEMORY = 90, 91, 101


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_s: int = 5  # RLIMIT_CPU (SIGXCPU, then SIGKILL one second later)
    wall_s: float = 10.0  # parent-side wall clock, covers sleeping and blocking
    memory_mb: int = 1024  # RLIMIT_AS
    nproc: int = 32  # RLIMIT_NPROC for the sandbox uid (fork and thread bombs)
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    nofile: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout + stderr cap, enforced by the reader
    tmpfs_mb: int = 64  # size of the private /tmp (caps total disk use)
    uid: int | None = 100_000  # unprivileged uid the program runs as (None: keep ours; weak mode)
    namespaces: bool = True  # new net + mount + pid namespaces; False only in weak mode
    # site-packages importable by the program; off by default: `site` costs ~0.2 s per run here
    # (.pth files), and contest / HumanEval programs need only the standard library
    site_packages: bool = False

    def __post_init__(self):
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
    timed_out: bool
    output_exceeded: bool
    wall_s: float

    @property
    def signal(self) -> int | None:
        return self.exit_code - 128 if self.exit_code is not None and self.exit_code > 128 else None


class SandboxUnavailable(RuntimeError):
    """The kernel refused the isolation this sandbox promises; nothing was run."""


def run_python(source: str, stdin: str, limits: Limits) -> RunResult:
    cfg = dataclasses.asdict(limits)
    workdir = None
    if not limits.namespaces:
        workdir = tempfile.mkdtemp(prefix="r1jax-sbx-")
        if limits.uid is not None:
            os.chown(workdir, limits.uid, limits.uid)
    cfg["workdir"] = workdir
    cfg["parent_pid"] = os.getpid()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", *(() if limits.site_packages else ("-S",)), _LAUNCHER, _format_config(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd="/",
        close_fds=True,
    )
    try:
        src_b, in_b = source.encode(), stdin.encode()
        payload = f"{len(src_b)} {len(in_b)}\n".encode() + src_b + in_b
        out, err, timed_out, exceeded = _communicate(proc, payload, limits, t0)
    finally:
        _kill_group(proc)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    code = None if (timed_out or exceeded) else proc.returncode
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
    )


def _format_config(cfg: dict) -> str:
    """The launcher's argv: "key=value,..." (parsed without json to keep its start-up short)."""
    for k, v in cfg.items():
        if isinstance(v, str) and ("," in v or "=" in v):
            raise ValueError(f"sandbox config {k}={v!r} may not contain ',' or '='")
    return ",".join(f"{k}={v}" for k, v in cfg.items())


def _communicate(proc, data: bytes, limits: Limits, t0: float):
    """Writes the payload, reads both pipes until EOF, the byte cap or the deadline."""
    try:
        proc.stdin.write(data)  # the launcher reads all stdin before running anything
        proc.stdin.close()
    except BrokenPipeError:
        pass
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    timed_out = exceeded = False
    open_pipes = 2
    while open_pipes:
        left = limits.wall_s - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = key.fileobj.read(65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_pipes -= 1
                continue
            bufs[key.fileobj] += chunk
        if sum(len(b) for b in bufs.values()) > limits.output_bytes:
            exceeded = True
            break
    sel.close()
    if not (timed_out or exceeded):
        try:
            proc.wait(timeout=max(0.1, limits.wall_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out, exceeded


def _kill_group(proc):
    """SIGKILL the launcher's whole process group; the pid namespace takes the rest with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()


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
