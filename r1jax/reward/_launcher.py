"""Sandbox launcher. Each worker starts one *zygote* (`python -I -S _launcher.py --zygote FD PPID`, as
root) that holds no test data and forks one launcher per run, so a run costs forks, not an interpreter
start. The worker sends the run's config plus its stdin/stdout/stderr pipe ends over a unix socket; the
zygote answers with the launcher's pid and, when it ends, its exit code.

The launcher reads "<len source> <len stdin>\n" + source + stdin (utf-8 bytes) on stdin, then:
  launcher (outside) --unshare(net, mount, pid)--> fork A (pid 1 of the new pid namespace: private
  tmpfs /tmp, /var/tmp, /dev/shm; interpreter made readable) --fork--> B (rlimits, unprivileged uid,
  parent-death SIGKILL, minimal env) runs the untrusted source.
When A exits the kernel kills every process left in the pid namespace, so nothing forked by the
program outlives the run. Exit code: B's exit code, or 128 + signal; EXIT_* below for our own cases.
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

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


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
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
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
        elif key == "workdir":
            cfg[key] = value
        else:
            cfg[key] = float(value) if "." in value else int(value)
    return cfg


def _launch(cfg):
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent_pid"]:  # the worker died before the line above: nobody will kill us
        os._exit(EXIT_SETUP_FAILED)
    raw = sys.stdin.buffer.read()
    head, _, body = raw.partition(b"\n")
    n_src, n_in = (int(x) for x in head.split())
    payload = {"source": body[:n_src].decode(), "stdin": body[n_src : n_src + n_in].decode()}
    del raw, body
    if cfg["namespaces"]:
        if _libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            sys.stderr.write(f"r1jax sandbox: unshare(net|mount|pid) failed: {os.strerror(err)}\n")
            os._exit(EXIT_NO_NAMESPACE)
    pid_a = os.fork()
    if pid_a:
        _, status = os.waitpid(pid_a, 0)
        os._exit(_wait_status_to_code(status))
    # A: pid 1 of the new namespace (or a plain child when namespaces are off)
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if cfg["namespaces"]:
            _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
            for d in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(d):
                    _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=1777")
            # a /proc of the new pid namespace: the program sees only its own processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | 8, None)
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
        pid, status = os.wait()
        if pid == pid_b:
            os._exit(_wait_status_to_code(status))


def zygote(sock_fd, parent_pid):
    import socket

    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(EXIT_SETUP_FAILED)
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
