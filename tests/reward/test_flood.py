"""Scheduling against a real server: math in its own lane stays fast while code items that use their full CPU
budget flood the server; every request is answered or refused with 503 + Retry-After; queued and running
work of a departed client or of a passed deadline is dropped; no sandbox outlives its request.

Loopback only, bounded: a 10 s flood from 8 clients (about 25 s for the module)."""

import http.client
import json
import socket
import statistics
import threading
import time

import pytest
from sandbox_watch import run_cgroups, sandbox_processes, wait_until

from r1jax.reward import RewardClient, start_local_server

FENCE = "```"
FLOOD_S = 10.0
FLOOD_CLIENTS = 8  # x 3 items in flight: more than 2 code workers can finish by the deadline, even as
FLOOD_ITEMS = 3  # estimated before any item finished (0.5 s each), so admission control must refuse some
FLOOD_DEADLINE_S = 5.0
LATENCY_FLOOR_S = 0.25  # scheduler noise on a busy 2-core host: below this, latency ratios mean nothing


def code(program: str) -> dict:
    return {
        "completion": f"</think>\n{FENCE}python\n{program}\n{FENCE}",
        "task": "code",
        "template": "chat",
        "meta": {"tests": {"type": "stdio", "cases": [{"input": "", "output": "ok"}]}},
    }


BURN = code("while True:\n    pass")  # uses its whole CPU budget (1 s here), then timeout
SLEEP = code("import time\ntime.sleep(60)")  # would hold a sandbox for the 10 s wall clock
MATH = {"completion": "</think> \\boxed{\\frac{2}{4}}", "task": "math", "answer": "0.5", "template": "chat"}


@pytest.fixture(scope="module")
def flood_server():
    # 1 fast-lane worker, 2 code-lane workers (one per core here); programs: 1 s CPU, 10 s wall clock
    args = ("--code-workers", "2", "--cpu-s", "1", "--wall-s", "10", "--memory-mb", "256")
    with start_local_server(workers=1, extra_args=args) as url:
        yield url


def post(url: str, items: list, deadline_s: float | None, timeout: float = 60.0):
    """-> (HTTP status, headers, decoded body, seconds)."""
    payload = {"items": items} if deadline_s is None else {"items": items, "deadline_s": deadline_s}
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/score", body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read()), time.monotonic() - t0
    finally:
        conn.close()


def send_and_leave(url: str, items: list, deadline_s: float) -> socket.socket:
    """Sends a /score request and returns the open socket without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"items": items, "deadline_s": deadline_s}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def test_queued_item_past_its_deadline_is_not_run(flood_server):
    c = RewardClient([flood_server])
    blockers = send_and_leave(flood_server, [SLEEP, SLEEP], 30)  # both code workers busy for 10 s
    try:
        assert wait_until(lambda: c.metrics()["lanes"]["code"]["running"] == 2, 5)
        lane = c.metrics()["lanes"]["code"]
        deadline = max(1.5, 1.0 + 3 * lane["mean_service_s"] / 2)  # admitted: expected < deadline
        status, _, body, took = post(flood_server, [code("print('ok')")], deadline)
        assert status == 200, body
        (res,) = body["results"]
        assert res["status"] == "infra_error" and "request deadline passed" in res["details"]["error"], res
        assert deadline - 0.1 < took < deadline + 1.0  # answered at the deadline, not when a worker frees up
        assert c.metrics()["expired"] >= 1
    finally:
        blockers.close()  # its two sandboxes are cancelled; wait for that, so the next test starts idle
        assert wait_until(lambda: c.metrics()["lanes"]["code"]["running"] == 0, 3)


def test_client_disconnect_cancels_queued_and_running_work(flood_server):
    c = RewardClient([flood_server])
    server_pid = c.metrics()["server_pid"]
    before = c.metrics()["cancelled"]
    s = send_and_leave(flood_server, [SLEEP] * 4, 30)  # two run, two wait
    code_lane = lambda: c.metrics()["lanes"]["code"]
    assert wait_until(lambda: code_lane()["running"] == 2 and code_lane()["queued"] == 2, 5), code_lane()
    assert wait_until(lambda: len(sandbox_processes(server_pid)) >= 2, 5)
    s.close()
    gone = lambda: (not sandbox_processes(server_pid) and not run_cgroups(c.health())
                    and code_lane()["running"] == code_lane()["queued"] == 0)
    # well before the programs' own 10 s wall clock would have ended them: they were cancelled
    assert wait_until(gone, 8), (sandbox_processes(server_pid), code_lane())
    assert c.metrics()["cancelled"] - before == 4
    assert c.score([code("print('ok')")]).status == ["ok"]  # the workers and their zygotes lived on


def test_math_stays_fast_while_code_floods(flood_server):
    c = RewardClient([flood_server])
    server_pid = c.metrics()["server_pid"]

    def canary_latencies(n: int, stop: threading.Event | None = None) -> list[float]:
        lat = []
        while (stop is None and len(lat) < n) or (stop is not None and not stop.is_set()):
            status, _, body, took = post(flood_server, [MATH], 10)
            assert status == 200 and body["results"][0]["status"] == "ok", body
            lat.append(took)
            time.sleep(0.05)
        return lat

    canary_latencies(5)  # warm-up
    unloaded = canary_latencies(40)

    outcomes, errors = [], []
    t_end = time.monotonic() + FLOOD_S

    def flooder():
        while time.monotonic() < t_end:
            try:
                status, headers, body, took = post(flood_server, [BURN] * FLOOD_ITEMS, FLOOD_DEADLINE_S, timeout=30)
            except Exception as e:  # noqa: BLE001 - a request without an answer is what this test catches
                errors.append(repr(e))
                continue
            outcomes.append((status, headers, body, took))
            if status == 503:
                time.sleep(0.2)

    def leaver():  # clients that give up: their sandboxes must not outlive them
        while time.monotonic() < t_end - 1:
            s = send_and_leave(flood_server, [SLEEP], 20)
            time.sleep(0.5)
            s.close()
            time.sleep(0.5)

    threads = [threading.Thread(target=flooder) for _ in range(FLOOD_CLIENTS)] + [threading.Thread(target=leaver)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let the flood build up
    stop = threading.Event()
    box = {}
    canary = threading.Thread(target=lambda: box.setdefault("lat", canary_latencies(0, stop)))
    canary.start()
    for t in threads:
        t.join(timeout=FLOOD_S + 40)
    stop.set()
    canary.join(timeout=30)
    loaded = box["lat"]

    # every request answered (200) or refused (503 + Retry-After), the 200s by their deadline
    assert not errors, errors[:3]
    assert {o[0] for o in outcomes} == {200, 503}, {o[0] for o in outcomes}
    assert all(o[1].get("Retry-After", "").isdigit() for o in outcomes if o[0] == 503)
    late = [o[3] for o in outcomes if o[0] == 200 and o[3] > FLOOD_DEADLINE_S + 1.5]
    assert not late, late
    statuses = {r["status"] for o in outcomes if o[0] == 200 for r in o[2]["results"]}
    assert statuses <= {"timeout", "infra_error"} and "timeout" in statuses, statuses

    # the math canary: p99 within 2x its unloaded p99 (or of a floor for tiny latencies)
    limit = 2 * max(p99(unloaded), LATENCY_FLOOR_S)
    summary = (f"unloaded p50 {statistics.median(unloaded):.3f}s p99 {p99(unloaded):.3f}s, flood p50 "
               f"{statistics.median(loaded):.3f}s p99 {p99(loaded):.3f}s over {len(loaded)} requests")
    print(summary)
    assert len(loaded) >= 20, summary
    assert p99(loaded) <= limit, summary

    # nothing outlives its request: no sandbox process, no run cgroup, empty lanes
    m = c.metrics()
    idle = lambda: (not sandbox_processes(server_pid) and not run_cgroups(c.health())
                    and c.metrics()["queue_depth"] == 0)
    assert wait_until(idle, 3), (sandbox_processes(server_pid), c.metrics()["lanes"])
    assert m["cancelled"] >= 1 and m["refused"]["expected_wait"] >= 1, m
    assert m["queue_wait_s"]["code"]["p99"] > m["queue_wait_s"]["fast"]["p99"], m["queue_wait_s"]
    assert m["alive_workers"] == m["workers"]
