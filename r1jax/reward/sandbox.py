"""Runs one untrusted Python program under kernel-enforced limits (see _launcher.py and docs/reward.md).

The parent (a reward worker) asks its zygote for a launcher in a new session, feeds the program and
its stdin, reads stdout/stderr with a byte cap and a wall-clock deadline, and SIGKILLs the whole
process group on any overrun. Expected outputs never enter the child: callers compare in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shutil
import signal
import socket
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
        return self.owner == os.getpid() and self.proc.poll() is None and self.site_packages == site_packages

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


def run_python(source: str, stdin: str, limits: Limits) -> RunResult:
    global _zygote
    cfg = dataclasses.asdict(limits)
    workdir = None
    if not limits.namespaces:
        workdir = tempfile.mkdtemp(prefix="r1jax-sbx-")
        if limits.uid is not None:
            os.chown(workdir, limits.uid, limits.uid)
    cfg["workdir"] = workdir
    cfg["parent_pid"] = 0  # set by the zygote
    src_b, in_b = source.encode(), stdin.encode()
    payload = f"{len(src_b)} {len(in_b)}\n".encode() + src_b + in_b
    t0 = time.monotonic()
    zyg = _get_zygote(limits.site_packages)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = None
    try:
        try:
            socket.send_fds(zyg.sock, [_format_config(cfg).encode()], [in_r, out_w, err_w])
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        pid = zyg.read_int(10.0)
        out, err, timed_out, exceeded = _communicate(in_w, out_r, err_r, payload, limits, t0)
        if timed_out or exceeded:
            _kill_group(pid)
        left = 10.0 if (timed_out or exceeded) else limits.wall_s - (time.monotonic() - t0)
        try:
            code = zyg.read_int(left)
        except TimeoutError:  # pipes closed but the program lingers (e.g. closed its stdout): over time
            timed_out = True
            _kill_group(pid)
            code = zyg.read_int(10.0)
    except (OSError, ValueError) as e:
        if pid is not None:
            _kill_group(pid)
        zyg.close()
        _zygote = None
        raise RuntimeError(f"sandbox zygote failed: {type(e).__name__}: {e}") from e
    finally:
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
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
    )


def _format_config(cfg: dict) -> str:
    """The launcher's argv: "key=value,..." (parsed without json to keep its start-up short)."""
    for k, v in cfg.items():
        if isinstance(v, str) and ("," in v or "=" in v):
            raise ValueError(f"sandbox config {k}={v!r} may not contain ',' or '='")
    return ",".join(f"{k}={v}" for k, v in cfg.items())


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes, limits: Limits, t0: float):
    """Writes the payload, reads both pipes until EOF, the byte cap or the deadline."""
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
    timed_out = exceeded = False
    open_pipes = 2
    while open_pipes:
        left = limits.wall_s - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                open_pipes -= 1
                continue
            bufs[key.fd] += chunk
        if sum(len(b) for b in bufs.values()) > limits.output_bytes:
            exceeded = True
            break
    sel.close()
    return bytes(bufs[out_r]), bytes(bufs[err_r]), timed_out, exceeded


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
