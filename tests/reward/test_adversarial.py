"""Adversarial programs, inputs and requests against the real server: right status, server stays up,
nothing left behind (sandbox processes, files), no memory growth in the server."""

import json
import os
import socket
import threading
import time
import urllib.parse

import pytest

from r1jax.reward import RewardClient
from r1jax.reward.pool import SANDBOX_UID_BASE

FENCE = "```"
SLOW = {"timeout"}


def stdio_item(program: str, expected: str = "ok", stdin: str = "") -> dict:
    completion = f"<think>plan</think>\n{FENCE}python\n{program}\n{FENCE}"
    return {
        "completion": completion,
        "task": "code",
        "template": "chat",
        "meta": {"tests": {"type": "stdio", "cases": [{"input": stdin, "output": expected}]}},
    }


def assert_item(program: str, entry: str, test: str) -> dict:
    completion = f"<think>plan</think>\n{FENCE}python\n{program}\n{FENCE}"
    meta = {"tests": {"type": "assert", "program": test}, "entry_point": entry}
    return {"completion": completion, "task": "code", "template": "chat", "meta": meta}


CHECK_ADD = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"

# name -> (item, allowed statuses)
PROGRAMS = {
    "infinite_loop": (stdio_item("while True:\n    pass"), {"timeout"}),
    "sleep": (stdio_item("import time\ntime.sleep(120)"), {"timeout"}),
    "ignore_sigterm": (
        stdio_item("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)"),
        {"timeout"},
    ),
    "fork_bomb": (
        stdio_item("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        {"timeout", "runtime_error"},
    ),
    "thread_bomb": (
        stdio_item(
            "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()"
        ),
        {"runtime_error", "memory_limit", "timeout"},
    ),
    "memory_bomb": (stdio_item("x = bytearray(8 * 1024 ** 3)"), {"memory_limit"}),
    # 10 MB steps: reaches the 512 MB limit in ~50 steps, well inside the wall limit even on a loaded host
    "memory_creep": (stdio_item("a = []\nwhile True:\n    a.append(' ' * 10 ** 7)"), {"memory_limit"}),
    "output_flood": (stdio_item("while True:\n    print('x' * 10000)"), {"output_limit"}),
    "disk_fill_one_file": (
        stdio_item("f = open('big', 'wb')\nwhile True:\n    f.write(b'0' * 2 ** 20)"),
        {"file_limit"},
    ),
    "disk_fill_many_files": (
        stdio_item("i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'0' * 2 ** 20)\n    i += 1"),
        {"file_limit"},  # the private tmpfs fills up (ENOSPC)
    ),
    "write_outside_sandbox": (stdio_item("open('/work/r1jax_pwned.txt', 'w').write('x')"), {"runtime_error"}),
    "write_root": (stdio_item("open('/root/r1jax_pwned.txt', 'w').write('x')"), {"runtime_error"}),
    "write_tmp_is_private": (stdio_item("open('/tmp/r1jax_pwned.txt', 'w').write('x')\nprint('ok')"), {"ok"}),
    "network": (
        stdio_item(
            "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
            "    print('connected')\n"
            "except OSError:\n    print('ok')"
        ),
        {"ok"},
    ),
    "read_env": (stdio_item("import os\nprint(os.environ.get('R1JAX_TEST_SECRET', 'ok'))"), {"ok"}),
    "read_test_data": (
        # look for the expected output everywhere it could leak: /proc, cwd, the inherited fds
        stdio_item(
            "import os, glob\nfound = ''\n"
            "for p in glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ') + glob.glob('*'):\n"
            "    try:\n        t = open(p, 'rb').read().decode(errors='ignore')\n"
            "    except OSError:\n        continue\n"
            "    if 'EXPECTED-7f3a' in t:\n        found = 'EXPECTED-7f3a'\n"
            "print(found or 'nothing')",
            expected="EXPECTED-7f3a",
        ),
        {"wrong"},
    ),
    "kill_everything": (
        stdio_item(
            "import os\nme = os.getpid()\nfor pid in [os.getppid(), 1] + list(range(2, 5000)):\n"
            "    if pid != me:\n        try:\n            os.kill(pid, 9)\n"
            "        except OSError:\n            pass\n"
            "print('ok')"
        ),
        {"ok"},
    ),
    "exit_early_zero": (
        assert_item("import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b", "add", CHECK_ADD),
        {"wrong"},
    ),
    "os_exit_zero_in_call": (
        assert_item("import os\ndef add(a, b):\n    os._exit(0)", "add", CHECK_ADD),
        {"wrong"},
    ),
    "eq_always_true": (
        assert_item(
            "class Any:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
            "        return False\ndef add(a, b):\n    return Any()",
            "add",
            CHECK_ADD,
        ),
        {"wrong"},
    ),
    "int_subclass_eq": (
        assert_item(
            "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
            "def add(a, b):\n    return I(0)",
            "add",
            CHECK_ADD,
        ),
        {"wrong"},
    ),
    "megabyte_stdin": (
        stdio_item("import sys\nprint(len(sys.stdin.read()))", expected=str(2**20), stdin="x" * 2**20),
        {"ok"},
    ),
    "megabyte_completion_math": (
        {"completion": "word " * 200_000 + "</think> \\boxed{3}", "task": "math", "answer": "3", "template": "chat"},
        {"ok"},
    ),
    "megabyte_of_braces": (
        {"completion": "</think> \\boxed{" * 100_000, "task": "math", "answer": "3", "template": "chat"},
        {"no_answer", "wrong"},
    ),
    "sympy_bomb_power": (
        {"completion": "</think> \\boxed{9^{9^{9^{9}}}}", "task": "math", "answer": "1", "template": "chat"},
        {"wrong"},
    ),
    "sympy_bomb_simplify": (
        {"completion": "</think> \\boxed{(x^2+2x+1)^{400}}", "task": "math", "answer": "(x+1)^{800}",
         "template": "chat"},
        {"timeout"},
    ),
}


def sandbox_processes() -> list:
    """Live processes owned by a sandbox uid (anything a program left behind)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 1000:
            found.append(int(pid))
    return found


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024


@pytest.fixture(scope="module")
def adversarial_results(client, server_url):
    before = client.metrics()
    rss_before = rss_mb(before["server_pid"])
    names = list(PROGRAMS)
    results = {}

    def one(name):  # one request per program so that each gets its own answer
        results[name] = client.score([PROGRAMS[name][0]])

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results, before, rss_before


def test_each_adversarial_program_gets_the_right_status(adversarial_results):
    results, _, _ = adversarial_results
    bad = []
    for name, (_, allowed) in PROGRAMS.items():
        batch = results.get(name)
        if (
            batch is None
            or batch.status[0] not in allowed
            or (allowed == {"ok"}) != (batch.rewards[0] == 1.0)
        ):
            bad.append((name, allowed, batch and (batch.status, batch.details)))
        elif not batch.valid.all():
            bad.append((name, "masked as infra", batch.details))
    assert not bad, "\n".join(map(repr, bad))


def test_nothing_left_behind(adversarial_results, client):
    _, before, rss_before = adversarial_results
    for _ in range(100):  # the kernel tears pid namespaces down asynchronously
        if not sandbox_processes():
            break
        time.sleep(0.1)
    assert sandbox_processes() == []
    assert not os.path.exists("/work/r1jax_pwned.txt")
    assert not os.path.exists("/root/r1jax_pwned.txt")
    assert not os.path.exists("/tmp/r1jax_pwned.txt")
    assert not [d for d in os.listdir("/tmp") if d.startswith("r1jax-sbx-")]
    after = client.metrics()
    assert after["server_pid"] == before["server_pid"]
    assert after["alive_workers"] == after["workers"]
    assert rss_mb(after["server_pid"]) - rss_before < 64, "server memory grew"


def test_server_still_correct_after_attacks(adversarial_results, client):
    item = {"completion": "</think> \\boxed{\\frac{4}{8}}", "task": "math", "answer": "0.5", "template": "chat"}
    b = client.score([item])
    assert b.status == ["ok"] and b.rewards[0] == 1.0


# ------------------------------------------------------------------------ malformed requests (raw HTTP)


def raw_request(url: str, data: bytes, headers: dict | None = None, close_early: bool = False):
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    head = ["POST /score HTTP/1.1", f"Host: {u.hostname}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {"Content-Length": str(len(data))}).items()]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    if close_early:
        s.close()
        return None, None
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    length = int(
        next(
            (ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")),
            b"0",
        )
    )
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "body, code, words",
    [
        (b"{not json", 400, "Expecting"),
        (b'{"items": 3}', 400, "items"),
        (b'{"items": [{"completion": "x", "task": "math", "answer": "1", "colour": 1}]}', 400, "colour"),
        (b'{"items": [{"completion": 5, "task": "math", "answer": "1", "template": "chat"}]}', 400, "completion"),
        (b'{"items": [{"completion": "x", "task": "math", "answer": "1"}]}', 400, "item 0: missing field 'template'"),
        (
            b'{"items": [{"completion": "x", "task": "math", "answer": "1", "template": "r2"}]}',
            400,
            "item 0: field 'template' is 'r2'",
        ),
        (b'{"items": [{"completion": "x", "task": "chess"}]}', 400, "task"),
        (
            b'{"items": [{"completion": "x", "task": "math", "answer": "1", "template": "chat", '
            b'"weights": {"accuracy": "a"}}]}',
            400,
            "weights",
        ),
        (
            b'{"items": [{"completion": "x", "task": "math", "answer": "1", "template": "chat", '
            b'"weights": {"nope": 1}}]}',
            400,
            "nope",
        ),
        (
            b'{"items": [{"completion": "x", "task": "code", "template": "chat", '
            b'"meta": {"tests": {"type": "stdio"}}}]}',
            400,
            "meta.tests",
        ),
        (
            b'{"items": [{"completion": "x", "task": "countdown", "template": "chat", "meta": {"numbers": [1]}}]}',
            400,
            "meta.target",
        ),
        (b'{"items": [{"completion": "ok", "task": "math", "answer": "1", "template": "chat"}, 7]}', 400, "item 1"),
        (b"[" * 100_000 + b"]" * 100_000, 400, ""),
        (
            b'{"items": [{"completion": "x", "task": "none", "template": "chat", "meta": {"language": ["en"]}, '
            b'"weights": {"language": 1}}]}',
            400,
            "meta.language",
        ),
        (
            b'{"items": [{"completion": "x", "task": "code", "template": "chat", "meta": {"tests": {"type": "assert", '
            b'"program": "p"}, "entry_point": "f", "prefix": 3}}]}',
            400,
            "meta.prefix",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(server_url, body, code, words):
    status, resp = raw_request(server_url, body)
    assert status == code
    assert words in json.loads(resp)["error"]


def test_oversized_and_truncated_requests(server_url, client):
    status, resp = raw_request(server_url, b"", {"Content-Length": str(200 * 1024 * 1024)})
    assert status == 413
    status, _ = raw_request(server_url, b"", {"X-Nothing": "1"})
    assert status == 411
    # a client that disconnects mid-body, and one that leaves before the answer
    raw_request(server_url, b'{"items": [', {"Content-Length": "5000"}, close_early=True)
    slow = json.dumps({"items": [PROGRAMS["sleep"][0]]}).encode()
    raw_request(server_url, slow, close_early=True)
    assert client.health()["ok"]
    b = client.score([{"completion": "\\boxed{2}", "task": "math", "answer": "2", "template": "chat"}])
    assert b.status == ["ok"]


def test_worker_killed_with_kill_9(server_url):
    c = RewardClient([server_url], timeout_s=120, retries=0)
    pids = c.metrics()["lanes"]["code"]["worker_pids"]  # the workers that run sandboxed programs
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("b", c.score([PROGRAMS["sleep"][0]] * 3)))
    t.start()
    for _ in range(100):  # wait until the workers are busy with the sleeping programs
        if c.metrics()["lanes"]["code"]["running"] == len(pids):
            break
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, 9)
    t.join(timeout=120)
    b = box["b"]
    # items running on a killed worker are grader failures (masked by the trainer, not a reward of 0);
    # an item that had not started yet runs on a respawned worker and times out as usual
    assert set(b.status) <= {"infra_error", "timeout"} and "infra_error" in b.status, b.status
    assert list(b.valid) == [s != "infra_error" for s in b.status]
    after = c.score([{"completion": "\\boxed{2}", "task": "math", "answer": "2", "template": "chat"}] * 4)
    assert after.status == ["ok"] * 4
    m = c.metrics()
    assert m["alive_workers"] == m["workers"]
    assert not set(m["worker_pids"]) & set(pids)
    for _ in range(150):  # the orphaned sandboxes end themselves (parent-death signal, pid-1 alarm)
        if not sandbox_processes():
            break
        time.sleep(0.1)
    assert sandbox_processes() == []
