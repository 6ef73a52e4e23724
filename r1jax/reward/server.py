"""The reward HTTP/JSON service (stdlib ThreadingHTTPServer; never imports jax).

POST /score    {"items": [item, ...]}  ->  {"results": [{"reward", "status", "components", "details",
               "answer"}]} in input order ("answer": the extracted final answer, or null). 400 malformed
               request (message names the item and field), 413 body too large, 503 + Retry-After when
               the bounded queue cannot take the batch.
POST /equivalence  {"groups": [[answer or null, ...], ...]}  ->  {"classes": [[class id, ...], ...],
               "comparisons", "failed_comparisons"}: per group, answers with the same id are
               mathematically equivalent (-1 = null). Each comparison runs in the worker pool under the
               math deadline (r1jax/reward/equivalence.py). Same refusals as /score.
GET  /health   {"ok", "workers", "alive_workers", "queue_depth", "sandbox": {...}}
GET  /metrics  counts by status, latency percentiles, respawns, queue depth

  r1jax-reward-server --host 127.0.0.1 --port 8470 --workers 4
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from r1jax.reward import sandbox
from r1jax.reward.equivalence import COMPARE, assign_classes, validate_groups
from r1jax.reward.pool import Overloaded, PoolConfig, WorkerPool, failure
from r1jax.reward.scoring import check_item
from r1jax.reward.types import INFRA_ERROR, ItemError

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_ITEMS = 16_384  # scoring items, or answers over all groups of an /equivalence request
MAX_GROUP_ANSWERS = 1024  # answers of one /equivalence group (k samples of one problem)
QUEUE_WAIT_S = 30.0  # an /equivalence round waits this long for queue room before answering 503
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT_S = 30.0  # a client that stops sending mid-request does not hold a thread forever


def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    xs = sorted(values)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, pool: WorkerPool, sandbox_report: dict):
        super().__init__(address, _Handler)
        self.pool = pool
        self.sandbox_report = sandbox_report
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.t_start = time.monotonic()

    def health(self) -> dict:
        return {
            "ok": self.pool.alive_workers() > 0,
            "workers": self.pool.cfg.workers,
            "alive_workers": self.pool.alive_workers(),
            "queue_depth": self.pool.queue_depth(),
            "sandbox": self.sandbox_report,
        }

    def metrics(self) -> dict:
        p = self.pool
        return {
            **self.health(),
            "busy_workers": p.busy,
            "counts": dict(p.counts),
            "latency_s": _percentiles(list(p.latencies_s)),
            "service_s": _percentiles(list(p.service_s)),
            "comparisons": dict(p.comparison_counts),
            "respawns": p.respawns,
            "worker_pids": p.worker_pids(),
            "server_pid": os.getpid(),
            "uptime_s": time.monotonic() - self.t_start,
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    server: RewardServer

    def log_message(self, fmt, *args):  # quiet: the trainer logs metrics, not access lines
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # client went away; its jobs already finished or will

    def do_GET(self):
        if self.path == "/health":
            self._send(200, self.server.health())
        elif self.path == "/metrics":
            self._send(200, self.server.metrics())
        else:
            self._send(404, {"error": f"no route {self.path}; use POST /score, POST /equivalence, GET /health, "
                                      "GET /metrics"})

    def do_POST(self):
        routes = {"/score": self._score, "/equivalence": self._equivalence}
        if self.path not in routes:
            self._send(404, {"error": f"no route {self.path}; use POST /score or POST /equivalence"})
            return
        if not self.server.connections.acquire(blocking=False):
            self._send(503, {"error": "too many concurrent requests"}, {"Retry-After": "1"})
            self.close_connection = True
            return
        try:
            body = self._read_body()
            if body is not None:
                routes[self.path](body)
        finally:
            self.server.connections.release()

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering (411 / 413) or losing the client."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "Content-Length header required"})
            self.close_connection = True
            return None
        if length > MAX_BODY_BYTES:
            self._send(413, {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"})
            self.close_connection = True
            return None
        try:
            body = self.rfile.read(length)
            if len(body) < length:
                raise ConnectionError("client sent fewer bytes than Content-Length")
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True  # disconnected mid-request: nothing was queued
            return None
        return body

    def _refuse_malformed(self, e: Exception):
        if isinstance(e, (ValueError, RecursionError)):  # JSONDecodeError and ItemError are ValueErrors
            self._send(400, {"error": str(e)[:2000]})
        else:  # a validator surprised by odd input: still the client's fault
            self._send(400, {"error": f"malformed request: {type(e).__name__}: {e}"[:2000]})

    def _score(self, body: bytes):
        try:
            payload = json.loads(body)
            items = payload.get("items") if isinstance(payload, dict) else None
            if not isinstance(items, list):
                raise ItemError("body must be a JSON object with a list field 'items'")
            if len(items) > MAX_ITEMS:
                raise ItemError(f"{len(items)} items exceed the per-request limit {MAX_ITEMS}")
            checked = [check_item(it, k) for k, it in enumerate(items)]
        except Exception as e:  # noqa: BLE001 - any validation failure is the client's (400), never a 500
            self._refuse_malformed(e)
            return
        try:
            jobs = self.server.pool.submit_batch(checked)
        except Overloaded as e:
            self._send(503, {"error": str(e)}, {"Retry-After": "1"})
            return
        results = []
        for job in jobs:
            # the pool enforces each item's deadline; this bound only guards against a pool bug
            if not job.done.wait(job.deadline_s * 4 + 60):
                results.append(failure(job.item, INFRA_ERROR, "pool did not answer"))
            else:
                results.append(job.result)
        self._send(200, {"results": results})

    def _equivalence(self, body: bytes):
        try:
            groups = validate_groups(json.loads(body), MAX_ITEMS, MAX_GROUP_ANSWERS)
        except Exception as e:  # noqa: BLE001 - any validation failure is the client's (400), never a 500
            self._refuse_malformed(e)
            return
        try:
            outcome = assign_classes(groups, self._compare_many)
        except Overloaded as e:
            self._send(503, {"error": str(e)}, {"Retry-After": "1"})
            return
        self._send(200, {"classes": outcome.classes, "comparisons": outcome.comparisons,
                         "failed_comparisons": outcome.failed})

    def _compare_many(self, pairs: list[tuple[str, str]]) -> list[dict]:
        """Runs comparisons in the worker pool (each under the math deadline), in slices that fit the
        queue; waits up to QUEUE_WAIT_S for room, then gives up with Overloaded (-> 503)."""
        pool = self.server.pool
        items = [{"kind": COMPARE, "answer": a, "representative": r} for a, r in pairs]
        step = max(1, pool.cfg.max_queue // 2)
        verdicts = []
        for start in range(0, len(items), step):
            give_up = time.monotonic() + QUEUE_WAIT_S
            while True:
                try:
                    jobs = pool.submit_batch(items[start : start + step])
                    break
                except Overloaded:
                    if time.monotonic() > give_up:
                        raise
                    time.sleep(0.05)
            for job in jobs:
                # the pool enforces each comparison's deadline; this bound only guards against a pool bug
                done = job.done.wait(job.deadline_s * 4 + 60)
                verdicts.append(job.result if done else failure(job.item, INFRA_ERROR, "pool did not answer"))
        return verdicts


def build_server(host: str, port: int, cfg: PoolConfig, require_sandbox: bool = False) -> RewardServer:
    report = sandbox.probe(cfg.limits)
    if not report["ok"]:
        msg = (
            "!" * 78 + "\nr1jax reward server: the code sandbox is NOT available: "
            f"{report['detail']}\nCode items will be answered with status infra_error.\n" + "!" * 78
        )
        print(msg, file=sys.stderr, flush=True)
        if require_sandbox:
            raise SystemExit("refusing to start without the sandbox (--require-sandbox)")
    return RewardServer((host, port), WorkerPool(cfg), report)


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """An orphaned auto-started server would hold workers and a port forever: leave with the parent."""
    while True:
        time.sleep(poll_s)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)  # the clean shutdown path above
            return
        except PermissionError:  # exists, owned by someone else
            pass


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="r1jax reward server (math, countdown, code sandbox, format, language)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument(
        "--port", type=int, default=8470, help="0 picks a free port (printed as LISTENING <port>)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=4096)
    ap.add_argument("--math-deadline", type=float, default=10.0)
    ap.add_argument("--cpu-s", type=int, default=5)
    ap.add_argument("--wall-s", type=float, default=10.0)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--plugin", action="append", default=[], help="module registering custom rewards")
    ap.add_argument("--require-sandbox", action="store_true", help="exit if namespaces are unavailable")
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="shut down when this process is gone (the trainer that auto-started us, even "
                         "if it was killed with SIGKILL and could not clean up)")
    args = ap.parse_args(argv)
    for mod in args.plugin:
        importlib.import_module(mod)
    limits = sandbox.Limits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb)
    cfg = PoolConfig(
        workers=args.workers,
        max_queue=args.max_queue,
        math_deadline_s=args.math_deadline,
        limits=limits,
        plugins=tuple(args.plugin),
    )
    server = build_server(args.host, args.port, cfg, args.require_sandbox)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # shut down cleanly: workers and their sandboxes
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.pool.close()


if __name__ == "__main__":
    main()
