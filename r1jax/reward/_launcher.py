"""Sandbox launcher. Each worker starts one *zygote* (`python -I -S _launcher.py --zygote FD PPID`, as
root) that holds no test data and forks one launcher per run, so a run costs forks, not an interpreter
start. The worker sends the run's config plus its stdin/stdout/stderr pipe ends over a unix socket; the
zygote answers with the launcher's pid and, when it ends, its exit code.

The launcher reads "<len source> <len stdin>\n" + source + stdin (utf-8 bytes) on stdin, then:
  launcher (outside; in the zygote's own empty network namespace) --unshare(mount, pid, ipc)--> fork A
  (pid 1 of the new pid namespace: private tmpfs /tmp, /var/tmp, /dev/shm and over the host's other
  world-writable directories; interpreter made readable) --fork--> B (rlimits, unprivileged uid,
  parent-death SIGKILL, minimal env) runs the source.
When A exits the kernel kills every process left in the pid namespace, so nothing forked by the
program outlives the run. Exit code: B's exit code, or 128 + signal; EXIT_* below for our own cases
(EXIT_CPU: B was killed by SIGXCPU or by the SIGKILL of RLIMIT_CPU's hard limit, judged by its rusage).
The launcher first moves itself into the run's cgroup (cgroup_procs, made by the worker: sandbox.py,
cgroups.py), before it reads the program, so A, B and everything B forks are inside it; with a pids
cgroup, RLIMIT_NPROC is not set (nproc_rlimit).
Kept small (no json, no re: ~10 ms of imports saved per run): it starts for every program run.
"""

import ctypes
import os
import resource
import signal
import stat
import sys

EXIT_NO_NAMESPACE = 90  # the kernel refused unshare: no isolation, nothing was run
EXIT_SETUP_FAILED = 91
EXIT_MEMORY = 101  # MemoryError raised inside the program
EXIT_CPU = 102  # the program was killed for CPU time (SIGXCPU, or SIGKILL with its CPU time over the limit)

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC = 0x00020000, 0x20000000, 0x40000000, 0x08000000
# World-writable places get a private tmpfs: these sized tmpfs_mb, the others (where they exist and are
# world-writable on the host) 1 MiB, so nothing the program writes outlives the run or reaches the host.
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")
OTHER_WRITABLE = ("/run/lock", "/var/lock", "/run/shm", "/var/crash", "/dev/mqueue")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)
# Set in the zygote: it entered one empty network namespace of its own at start, which every run forked
# from it inherits. Runs of one zygote are sequential and no process outlives its run, so nothing carries
# over between runs; a fresh network namespace per run would cost ~6 ms of wall time per run.
_ZYGOTE_NET = False
# Set in the zygote: its own private mount namespace, in which the interpreter is already readable by the
# sandbox uid (_expose_interpreter). Each run's mount namespace is a copy of it, so a run only mounts its
# tmpfs and /proc (4-5 mounts, not 11). _TMPFS_TARGETS: the host's world-writable dirs, looked up once.
_ZYGOTE_MOUNTS = False
_TMPFS_TARGETS = None


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data):
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _blocked_ancestor(path):
    """The top-most ancestor of path that 'other' users cannot traverse, or None."""
    parts = path.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        a = "/" + "/".join(parts[:k])
        if not os.stat(a).st_mode & stat.S_IXOTH:
            return a
    return None


def _expose_interpreter(staging):
    """Make the interpreter readable by the sandbox uid when it lives under e.g. /root (mode 700).

    A tmpfs covers the blocked ancestor (hiding everything else in it) and the interpreter tree is
    bind-mounted back read-only at its own path."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)})
    covered = {}
    for k, p in enumerate(needed):
        a = _blocked_ancestor(p)
        if a is None:
            continue
        stage = f"{staging}/{k}"
        os.makedirs(stage)
        _mount(p, stage, None, MS_BIND | MS_REC, None)
        if a not in covered:
            _mount("tmpfs", a, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            covered[a] = True
        os.makedirs(p, exist_ok=True)
        _mount(stage, p, None, MS_BIND | MS_REC, None)
        _mount("", p, None, MS_BIND | MS_REC | MS_RDONLY | 32, None)  # 32 = MS_REMOUNT
        _libc.umount2(stage.encode(), MNT_DETACH)


def _tmpfs_targets():
    """[(directory, is_scratch)]: where a run mounts its private tmpfs (see PRIVATE_TMPFS)."""
    out, covered = [], set()
    for d in PRIVATE_TMPFS + OTHER_WRITABLE:
        real = os.path.realpath(d)
        if real in covered or not os.path.isdir(real):
            continue
        if d in OTHER_WRITABLE and not os.stat(real).st_mode & stat.S_IWOTH:
            continue
        covered.add(real)
        out.append((real, d in PRIVATE_TMPFS))
    return out


def _zygote_mounts():
    """Once per zygote: a private mount namespace of its own with the interpreter exposed. False when the
    kernel refuses the namespace (each run then tries, and reports, itself)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        return False
    try:
        _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=700")  # staging only
        os.makedirs("/tmp/.expose")
        _expose_interpreter("/tmp/.expose")
        _check(_libc.umount2(b"/tmp", MNT_DETACH), "umount /tmp")
    except OSError as e:  # a half-made namespace: better no zygote (runs fail loudly) than a wrong one
        sys.stderr.write(f"r1jax sandbox zygote: mount setup failed: {e}\n")
        os._exit(EXIT_SETUP_FAILED)
    return True


def _wait_status_to_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the program may have closed or replaced its streams
            pass


def _run_untrusted(cfg, source, workdir, stdin_path):
    fd = os.open(stdin_path, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    os.unlink(stdin_path)
    mb = 1024 * 1024
    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb, cfg["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_mb"] * mb, cfg["fsize_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], cfg["nofile"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["nice"] > 0:
        os.nice(cfg["nice"])
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if cfg["nproc_rlimit"]:  # per uid; only without a per-run pids cgroup
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
    os.chdir(workdir)
    sys.argv = ["main.py"]
    code = compile(source, "main.py", "exec")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    del source, cfg
    try:
        exec(code, namespace)
    except MemoryError:
        os._exit(EXIT_MEMORY)
    except SystemExit as e:  # exit like the interpreter would (we are deep inside a forked zygote)
        code = e.code
        if code is not None and not isinstance(code, int):
            sys.stderr.write(f"{code}\n")
            code = 1
        _flush()
        os._exit((code or 0) & 0xFF)
    except BaseException:
        import traceback

        traceback.print_exc()
        _flush()
        os._exit(1)


def _parse_config(arg):
    """ "key=value,..." with int / float / None / True / False values (see sandbox.Limits)."""
    cfg = {}
    for pair in arg.split(","):
        key, value = pair.split("=", 1)
        if value in ("None", "True", "False"):
            cfg[key] = {"None": None, "True": True, "False": False}[value]
        elif key in ("workdir", "cgroup_procs"):
            cfg[key] = value
        else:
            cfg[key] = float(value) if "." in value else int(value)
    return cfg


def _launch(cfg):
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent_pid"]:  # the worker died before the line above: nobody will kill us
        os._exit(EXIT_SETUP_FAILED)
    if cfg.get("cgroup_procs"):  # join the run's cgroup(s) first: all we fork and run is inside
        try:
            for path in cfg["cgroup_procs"].split(";"):
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"%d" % os.getpid())
                finally:
                    os.close(fd)
        except OSError as e:
            sys.stderr.write(f"r1jax sandbox: cannot join the run's cgroup: {e}\n")
            os._exit(EXIT_SETUP_FAILED)
    raw = sys.stdin.buffer.read()
    head, _, body = raw.partition(b"\n")
    n_src, n_in = (int(x) for x in head.split())
    payload = {"source": body[:n_src].decode(), "stdin": body[n_src : n_src + n_in].decode()}
    del raw, body
    if cfg["namespaces"]:
        # a private IPC namespace: SysV shared memory / semaphores / message queues die with the run
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | (0 if _ZYGOTE_NET else CLONE_NEWNET)
        if _libc.unshare(flags) != 0:
            err = ctypes.get_errno()
            sys.stderr.write(f"r1jax sandbox: unshare(net|mount|pid|ipc) failed: {os.strerror(err)}\n")
            os._exit(EXIT_NO_NAMESPACE)
    pid_a = os.fork()
    if pid_a:
        _, status = os.waitpid(pid_a, 0)
        os._exit(_wait_status_to_code(status))
    # A: pid 1 of the new namespace (or a plain child when namespaces are off)
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cfg["namespaces"]:
            if not _ZYGOTE_MOUNTS:  # else the zygote's namespace (copied by unshare) is private already
                _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
            for real, scratch in _TMPFS_TARGETS if _TMPFS_TARGETS is not None else _tmpfs_targets():
                size = cfg["tmpfs_mb"] if scratch else 1
                _mount("tmpfs", real, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
            # a /proc of the new pid namespace: the program sees only its own processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | 8, None)
            if not _ZYGOTE_MOUNTS:
                os.makedirs("/tmp/.expose")
                _expose_interpreter("/tmp/.expose")
            workdir = "/tmp/work"
            os.makedirs(workdir, mode=0o700)
        else:
            workdir = cfg["workdir"]  # weak mode: a private directory made (and removed) by the parent
        stdin_path = os.path.join(workdir, ".stdin")
        with open(stdin_path, "w") as f:
            f.write(payload["stdin"])
        if cfg["uid"] is not None:
            os.chown(workdir, cfg["uid"], cfg["uid"])
            os.chown(stdin_path, cfg["uid"], cfg["uid"])
    except Exception as e:  # noqa: BLE001 - reported to the parent as a setup failure
        sys.stderr.write(f"r1jax sandbox: setup failed: {e}\n")
        os._exit(EXIT_SETUP_FAILED)
    source = payload.pop("source")
    del payload
    pid_b = os.fork()
    if pid_b == 0:
        _run_untrusted(cfg, source, workdir, stdin_path)
        _flush()
        os._exit(0)
    del source
    # Backstop for the parent's wall clock: if the worker is gone (and with it the deadline), pid 1
    # still ends the namespace shortly after the wall limit.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(128 + signal.SIGALRM))
    signal.alarm(int(cfg["wall_s"]) + 3)
    while True:  # as pid 1, reap everything; stop when the program itself has exited
        pid, status, usage = os.wait3(0)
        if pid == pid_b:
            if os.WIFSIGNALED(status) and (
                os.WTERMSIG(status) == signal.SIGXCPU
                or (os.WTERMSIG(status) == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cfg["cpu_s"])
            ):
                os._exit(EXIT_CPU)
            os._exit(_wait_status_to_code(status))


def zygote(sock_fd, parent_pid):
    import socket

    global _ZYGOTE_NET, _ZYGOTE_MOUNTS, _TMPFS_TARGETS
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(EXIT_SETUP_FAILED)
    _TMPFS_TARGETS = _tmpfs_targets()  # the host's view, before our own mounts
    _ZYGOTE_NET = _libc.unshare(CLONE_NEWNET) == 0  # else each run unshares its own (or reports failure)
    _ZYGOTE_MOUNTS = _zygote_mounts()
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 65536, 3)
        except OSError:
            os._exit(0)
        if not msg or len(fds) != 3:
            os._exit(0)  # the worker is gone (or confused): end, it will start a fresh zygote
        cfg = _parse_config(msg.decode())
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                os.setsid()  # own process group: the worker SIGKILLs it as a whole
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                cfg["parent_pid"] = os.getppid()
                _launch(cfg)
            finally:
                os._exit(EXIT_SETUP_FAILED)
        for fd in fds:
            os.close(fd)
        sock.sendall(b"%d\n" % pid)
        _, status = os.waitpid(pid, 0)
        sock.sendall(b"%d\n" % _wait_status_to_code(status))


if __name__ == "__main__":
    zygote(int(sys.argv[2]), int(sys.argv[3]))
