"""An auto-started reward server leaves with its trainer, even when the trainer is killed with -9."""

import os
import signal
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import time
    from r1jax.reward import start_local_server
    with start_local_server(workers=1) as url:
        print(url, flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _servers_of(parent_pid: int) -> list[int]:
    marker = f"--parent-pid\0{parent_pid}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_server_exits_when_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().startswith("http://")
    servers = _servers_of(parent.pid)
    assert servers, "the auto-started server should carry --parent-pid"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(map(_alive, servers)):
        time.sleep(0.2)
    assert not [p for p in servers if _alive(p)], "the reward server outlived its killed parent"
