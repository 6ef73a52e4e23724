"""Sandbox limits against the real server: one status per limit, a memory cap over all processes of a run
(cgroup), a dead zygote restarted at once, stale cgroups removed at start, the documented fallback."""

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from sandbox_watch import (
    descendants,
    host_has_memory_cgroup,
    run_cgroups,
    sandbox_processes,
    wait_until,
    zygotes,
)

from r1jax.reward import RewardClient, start_local_server

FENCE = "```"
MATH_OK = {"completion": "</think> \\boxed{\\frac{1}{2}}", "task": "math", "answer": "0.5", "template": "chat"}
needs_cgroup = pytest.mark.skipif(not host_has_memory_cgroup(), reason="no writable memory cgroup on this host")


def code(program: str, expected: str = "ok") -> dict:
    return {
        "completion": f"<think>plan</think>\n{FENCE}python\n{program}\n{FENCE}",
        "task": "code",
        "template": "chat",
        "meta": {"tests": {"type": "stdio", "cases": [{"input": "", "output": expected}]}},
    }


# The shared test server runs with --memory-mb 512 (per process and per run), --cpu-s 2, --wall-s 4.
# 16 children x 64 MB = 1 GiB: each child is far under RLIMIT_AS, all together twice the run's cap.
SPLIT_ALLOCATION = code(
    "import os, time\n"
    "kids = []\n"
    "for _ in range(16):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        block = b'\\x01' * (64 << 20)  # touched, so it is really held\n"
    "        time.sleep(3)\n"
    "        os._exit(0)\n"
    "    kids.append(pid)\n"
    "for pid in kids:\n"
    "    os.waitpid(pid, 0)\n"
    "print('ok')"
)

# name -> (item, status, words the detail must contain: one of them when a tuple). A CPU-bound program on a
# busy 2-core host may reach the wall clock before its CPU limit: the status is timeout either way.
CPU_OR_WALL = ("CPU time", "wall clock")
LIMITS = {
    "output_flood": (code("while True:\n    print('x' * 10000)"), "output_limit", "bytes of stdout"),
    "file_size": (code("f = open('big', 'wb')\nwhile True:\n    f.write(b'0' * 2 ** 20)"), "file_limit", "EFBIG"),
    "segfault": (code("import ctypes\nctypes.string_at(0)"), "signal", "SIGSEGV"),
    "sigkill_self": (code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"), "signal", "SIGKILL"),
    "abort": (code("import os\nos.abort()"), "signal", "SIGABRT"),
    "too_long": (code("x = 1\n" * 20_000), "program_refused", "over 100000"),
    "memory_one_process": (code("x = bytearray(8 * 1024 ** 3)"), "memory_limit", "MemoryError"),
    "cpu": (code("while True:\n    pass"), "timeout", CPU_OR_WALL),
    "cpu_ignoring_sigxcpu": (
        code("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"),
        "timeout",
        CPU_OR_WALL,
    ),
    "wall": (code("import time\ntime.sleep(60)"), "timeout", "wall clock"),
    "runtime_error": (code("raise ValueError('no')"), "runtime_error", "ValueError"),
}


def test_each_limit_has_its_own_status(client):
    names = list(LIMITS)
    b = client.score([LIMITS[n][0] for n in names])
    bad = []
    for k, name in enumerate(names):
        _, status, words = LIMITS[name]
        detail = b.details[k]["details"]["accuracy"]
        words = words if isinstance(words, tuple) else (words,)
        if b.status[k] != status or not any(w in detail for w in words) or b.rewards[k] != 0.0 or not b.valid[k]:
            bad.append((name, status, b.status[k], detail[:300]))
    assert not bad, "\n".join(map(repr, bad))


@needs_cgroup
def test_allocation_split_over_processes_is_killed_with_memory_status(client):
    b = client.score([SPLIT_ALLOCATION])
    # memory_limit, not timeout: the run was killed when it reached the cap, not at the end of its time
    assert b.status == ["memory_limit"], b.details
    assert "memory cap" in b.details[0]["details"]["accuracy"]
    assert b.valid.all() and b.rewards[0] == 0.0
    health = client.health()
    assert health["sandbox"]["cgroup"]["enabled"], health["sandbox"]
    server_pid = client.metrics()["server_pid"]
    assert wait_until(lambda: not sandbox_processes(server_pid) and not run_cgroups(health), 3)
    # the server stays healthy: same process, every worker alive, math and code still graded
    m = client.metrics()
    assert m["server_pid"] == server_pid and m["alive_workers"] == m["workers"]
    after = client.score([MATH_OK, code("print('ok')")])
    assert after.status == ["ok", "ok"], after.details


def test_dead_zygote_is_restarted_at_once(client):
    """Each code worker keeps a zygote; one killed while idle is replaced without waiting for a code item."""
    m = client.metrics()
    server_pid, code_workers = m["server_pid"], set(m["lanes"]["code"]["worker_pids"])
    per_worker = lambda: {w: z for z, w in zygotes(server_pid).items() if w in code_workers}
    assert wait_until(lambda: len(per_worker()) == len(code_workers), 10), (per_worker(), code_workers)
    worker, old = sorted(per_worker().items())[0]
    os.kill(old, signal.SIGKILL)
    # without any code item: the worker notices its zygote's death by itself
    new = wait_until(lambda: per_worker().get(worker) not in (None, old) and per_worker()[worker], 5, 0.02)
    assert new, "the zygote was not restarted"
    assert client.metrics()["worker_pids"] == m["worker_pids"]  # the worker itself lived on
    b = client.score([code("print('ok')")] * len(code_workers))
    assert b.status == ["ok"] * len(code_workers), b.details


@needs_cgroup
def test_stale_cgroups_of_a_dead_server_are_removed_at_start_and_own_at_exit():
    # a server of this cgroup that died with SIGKILL: its srv-* tree still holds a process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    bases = []
    for ctl in ("memory", "pids"):
        with open("/proc/self/cgroup") as f:
            own = next(line.split(":", 2)[2].strip() for line in f if line.split(":")[1] == ctl)
        bases.append(os.path.join(f"/sys/fs/cgroup/{ctl}", own.lstrip("/"), "r1jax-reward"))
    stale = [os.path.join(b, f"srv-{dead.pid}-0", "run-s0-1-1") for b in bases]
    leftover = subprocess.Popen(["sleep", "60"])
    try:
        for d in stale:
            os.makedirs(d)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(leftover.pid))
        with start_local_server(workers=1) as url:
            health = RewardClient([url]).health()
            assert health["sandbox"]["cgroup"]["stale_removed"] >= 2
            assert not any(os.path.exists(os.path.dirname(d)) for d in stale)
            assert leftover.wait(timeout=5) == -signal.SIGKILL
            own = health["sandbox"]["cgroup"]
            assert os.path.isdir(own["memory"]) and os.path.isdir(own["pids"])
        assert not os.path.exists(own["memory"]) and not os.path.exists(own["pids"])  # removed at exit
    finally:
        leftover.kill()
        leftover.wait()
        for d in stale:
            for x in (d, os.path.dirname(d)):
                if os.path.isdir(x):
                    os.rmdir(x)


def test_without_cgroup_the_server_falls_back_and_says_so(tmp_path):
    from r1jax.reward import cgroups

    # a "cgroup" mount that is a plain directory: detected, refused with the reason, no directory left
    fake = tmp_path / "memory"
    fake.mkdir()
    (tmp_path / "mountinfo").write_text(f"35 31 0:32 / {fake} rw,relatime - cgroup cgroup rw,memory\n")
    (tmp_path / "cgroup").write_text("4:memory:/\n")
    parent, report = cgroups.setup(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup"))
    assert parent is None and not report["enabled"]
    assert "not a cgroup filesystem" in report["detail"]
    assert list(fake.iterdir()) == []
    (tmp_path / "mountinfo").write_text("")
    parent, report = cgroups.setup(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup"))
    assert parent is None and "no cgroup v1 hierarchy with the memory controller" in report["detail"]

    with start_local_server(workers=1, extra_args=("--cgroup", "off")) as url:
        c = RewardClient([url], timeout_s=60)
        sb = c.health()["sandbox"]
        assert sb["ok"] and sb["cgroup"] == {"enabled": False, "detail": "disabled (--cgroup off)"}
        assert c.score([code("print('ok')"), MATH_OK]).status == ["ok", "ok"]
    r = subprocess.run(
        [sys.executable, "-m", "r1jax.reward.server", "--port", "0", "--workers", "1", "--cgroup", "off",
         "--require-cgroup"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0 and "refusing to start without a per-run memory cgroup" in r.stderr
    r = subprocess.run([sys.executable, "-m", "r1jax.reward.server", "--sandbox-nice", "40"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Limits.nice must be an int in [0, 19]" in r.stderr


@pytest.mark.parametrize("deadline", [-1, 0, "10", True, 1e9])
def test_bad_deadline_is_a_clear_error(server_url, client, deadline):
    body = json.dumps({"items": [MATH_OK], "deadline_s": deadline}).encode()
    status, _, data = client._request(server_url, "POST", "/score", body, 10)
    assert status == 400 and "field 'deadline_s' must be a number of seconds" in json.loads(data)["error"]


def test_descendants_helper_sees_the_server_tree(client):
    """Guards the helpers above: they would pass vacuously if they saw nothing."""
    m = client.metrics()
    assert set(m["worker_pids"]) <= set(descendants(m["server_pid"]))


def test_cpu_limit_is_a_timeout_not_a_signal():
    """With a wall clock far away, the CPU limit must end the run: SIGXCPU, or the SIGKILL of RLIMIT_CPU's hard
    limit for a program that ignores SIGXCPU, are both `timeout` -- a SIGKILL the program sends itself is not."""
    from r1jax.reward import codecheck, sandbox

    limits = sandbox.Limits(cpu_s=1, wall_s=60)
    for program in ("while True:\n    pass",
                    "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"):
        r = sandbox.run_python(program, "", limits)
        assert r.cpu_exceeded and not r.timed_out, r
        assert codecheck.run_failure(r, limits) == ("timeout", "CPU time over 1 s")
    r = sandbox.run_python("import os\nos.kill(os.getpid(), 9)", "", limits)
    assert codecheck.run_failure(r, limits) == ("signal", "killed by SIGKILL (signal 9)")


def _host_shm_segments() -> list[str]:
    with open("/proc/sysvipc/shm") as f:
        return f.read().splitlines()[1:]


def test_nothing_a_run_writes_outlives_it_on_the_host(client):
    """SysV shared memory lives in an IPC namespace (not freed at exit) and /run/lock is world-writable on
    many hosts: both would let a run leave memory or files behind. Each run has its own of both."""
    before = _host_shm_segments()
    marker = f"r1jax_left_behind_{uuid.uuid4().hex}"
    places = ("/run/lock", "/var/crash", "/dev/mqueue")
    program = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "sid = libc.shmget(0, 32 << 20, 0o1000 | 0o600)\n"
        "ctypes.memset(libc.shmat(sid, None, 0), 1, 32 << 20)\n"
        f"for d in {places!r}:\n"
        "    if os.path.isdir(d):\n"
        "        try:\n"
        f"            open(d + '/{marker}', 'w').write('x')\n"
        "        except OSError:\n"
        "            pass\n"
        "print('ok' if sid >= 0 else 'no shm')"
    )
    b = client.score([code(program)])
    assert b.status == ["ok"], b.details
    assert _host_shm_segments() == before
    assert not [d for d in places if os.path.exists(f"{d}/{marker}")]
