"""What a reward server has running right now, read from /proc and the cgroup tree (helpers for the tests).

Other sessions on the same host may run their own reward servers (and sandbox uids), so everything here
is scoped to one server: its process tree and its own cgroup directory (from /health).
"""

import os
import time


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":
                out[int(entry)] = int(fields[1])
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def descendants(root: int) -> list[int]:
    ppid = _ppids()
    children: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def zygotes(server_pid: int) -> dict[int, int]:
    """zygote pid -> its worker's pid, for one server."""
    ppid = _ppids()
    return {p: ppid[p] for p in descendants(server_pid) if b"--zygote" in _cmdline(p) and p in ppid}


def sandbox_processes(server_pid: int) -> list[int]:
    """Launchers, namespace inits and programs (with their children) of one server: everything below a
    zygote. The zygotes themselves stay (one per code worker)."""
    out = []
    for z in zygotes(server_pid):
        out += descendants(z)
    return out


def run_cgroups(health: dict) -> list[str]:
    """The per-run cgroup directories under one server's cgroup parent (docs/reward.md § The sandbox)."""
    cg = health["sandbox"].get("cgroup") or {}
    out = []
    for d in {cg.get("memory"), cg.get("pids")} - {None}:
        out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith("run-")]
    return out


def wait_until(cond, timeout_s: float, step_s: float = 0.05):
    """Polls cond() until it is truthy or timeout_s passed -> its last value."""
    give_up = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value or time.monotonic() > give_up:
            return value
        time.sleep(step_s)


def host_has_memory_cgroup() -> bool:
    """Can root here make memory cgroups (v1 memory hierarchy, or v2 with the memory controller)?
    Decided from the host alone, so that a server that does not use cgroups fails the tests instead."""
    if os.access("/sys/fs/cgroup/memory", os.W_OK):
        return True
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "memory" in f.read().split() and os.access("/sys/fs/cgroup", os.W_OK)
    except OSError:
        return False
