"""The reward HTTP/JSON service (stdlib ThreadingHTTPServer; never imports jax).

POST /score    {"items": [item, ...], "deadline_s": float (optional)}  ->  {"results": [{"reward", "status",
               "components", "details", "answer"}]} in input order ("answer": the extracted final answer,
               or null). deadline_s: how long the client waits, queue wait included (default
               --request-deadline); items not run by then are answered infra_error. 400 malformed request
               (message names the item and field), 413 body too large, 503 + Retry-After when the queue
               cannot take the batch or its expected wait exceeds the deadline (docs/reward.md § Scheduling).
               A client that disconnects cancels its queued items and kills its running sandboxes.
POST /equivalence  {"groups": [[answer or null, ...], ...]}  ->  {"classes": [[class id, ...], ...],
               "comparisons", "failed_comparisons"}: per group, answers with the same id are
               mathematically equivalent (-1 = null). Each comparison runs in the worker pool under the
               math deadline (r1jax/reward/equivalence.py). Same refusals as /score.
GET  /health   {"ok", "workers", "alive_workers", "queue_depth", "sandbox": {..., "cgroup": {...}}}
GET  /metrics  counts by status, latency percentiles, queue wait per lane, cancelled / expired / refused,
               respawns, queue depth

  r1jax-reward-server --host 127.0.0.1 --port 8470 --workers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from r1jax.reward import cgroups, sandbox
from r1jax.reward.equivalence import COMPARE, assign_classes, validate_groups
from r1jax.reward.pool import CANCEL_GRACE_S, Overloaded, PoolConfig, WorkerPool, _percentiles, failure
from r1jax.reward.scoring import check_item
from r1jax.reward.types import INFRA_ERROR, ItemError

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_ITEMS = 16_384  # scoring items, or answers over all groups of an /equivalence request
MAX_GROUP_ANSWERS = 1024  # answers of one /equivalence group (k samples of one problem)
QUEUE_WAIT_S = 30.0  # an /equivalence round waits this long for queue room before answering 503
MAX_CONNECTIONS = 64  # requests being read and parsed at once (waiting ones are bounded per lane by the pool)
SOCKET_TIMEOUT_S = 30.0  # a client that stops sending mid-request does not hold a thread forever
MAX_REQUEST_DEADLINE_S = 3600.0
POLL_S = 0.1  # while a request waits: how often it checks for a departed client and its deadline


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, pool: WorkerPool, sandbox_report: dict):
        super().__init__(address, _Handler)
        self.pool = pool
        self.sandbox_report = sandbox_report
        self.cgroup = pool.cfg.cgroup
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.t_start = time.monotonic()

    def health(self) -> dict:
        return {
            "ok": self.pool.alive_workers() > 0,
            "workers": self.pool.n_workers,  # both lanes
            "alive_workers": self.pool.alive_workers(),
            "queue_depth": self.pool.queue_depth(),
            "sandbox": self.sandbox_report,
        }

    def metrics(self) -> dict:
        p = self.pool
        lanes = p.lane_metrics()
        return {
            **self.health(),
            "busy_workers": p.busy,
            "counts": dict(p.counts),
            "latency_s": _percentiles(list(p.latencies_s)),
            "service_s": _percentiles(list(p.service_s)),
            "queue_wait_s": {name: lane["queue_wait_s"] for name, lane in lanes.items()},
            "lanes": lanes,
            "cancelled": p.cancelled,
            "expired": p.expired,
            "refused": dict(p.refused),
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
        finish = None
        try:
            body = self._read_body()
            if body is not None:
                finish = routes[self.path](body)
        finally:
            self.server.connections.release()
        if finish is not None:  # waiting for the workers holds no connection slot
            finish()

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
        """Validates and queues -> a callable that waits for the verdicts and answers (None: answered)."""
        try:
            payload = json.loads(body)
            items = payload.get("items") if isinstance(payload, dict) else None
            if not isinstance(items, list):
                raise ItemError("body must be a JSON object with a list field 'items'")
            if len(items) > MAX_ITEMS:
                raise ItemError(f"{len(items)} items exceed the per-request limit {MAX_ITEMS}")
            deadline_s = _deadline(payload)
            checked = [check_item(it, k) for k, it in enumerate(items)]
        except Exception as e:  # noqa: BLE001 - any validation failure is the client's (400), never a 500
            self._refuse_malformed(e)
            return None
        try:
            ticket = self.server.pool.submit(checked, deadline_s)
        except Overloaded as e:
            self._send(503, {"error": str(e)}, {"Retry-After": str(e.retry_after)})
            return None
        return lambda: self._answer(ticket)

    def _answer(self, ticket):
        pool = self.server.pool
        try:
            if not self._wait(ticket):
                self.close_connection = True  # the client left: its work was cancelled, nobody to answer
                return
        finally:
            pool.release(ticket)
        results = [
            r if r is not None else failure(j.item, INFRA_ERROR, "pool did not answer")
            for j, r in zip(ticket.jobs, ticket.results)
        ]
        self._send(200, {"results": results})

    def _wait(self, ticket) -> bool:
        """Waits for the ticket; cancels it when the client leaves (-> False) and answers its queued items
        when the deadline passes (running ones stop by the deadline on their own)."""
        pool = self.server.pool
        expired = False
        # guard against a pool bug only: the pool stops every item by the deadline plus a kill's grace
        give_up = ticket.deadline + CANCEL_GRACE_S + 30
        while not ticket.done.wait(POLL_S):
            if self._client_gone():
                pool.cancel(ticket, "cancelled: the client disconnected")
                return False
            now = time.monotonic()
            if not expired and now >= ticket.deadline:
                pool.cancel(ticket, "request deadline passed", expired=True)
                expired = True
            if now > give_up:
                break
        return True

    def _client_gone(self) -> bool:
        """Has the client closed its connection (EOF / reset) while we work on its request?"""
        if getattr(self, "_pipelined", False):
            return False
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if data:  # the next request of a pipelining client: it is still there
            self._pipelined = True
            return False
        return True

    def _equivalence(self, body: bytes):
        try:
            groups = validate_groups(json.loads(body), MAX_ITEMS, MAX_GROUP_ANSWERS)
        except Exception as e:  # noqa: BLE001 - any validation failure is the client's (400), never a 500
            self._refuse_malformed(e)
            return None
        try:
            outcome = assign_classes(groups, self._compare_many)
        except Overloaded as e:
            self._send(503, {"error": str(e)}, {"Retry-After": str(e.retry_after)})
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
                    ticket = pool.submit(items[start : start + step])
                    break
                except Overloaded:
                    if time.monotonic() > give_up:
                        raise
                    time.sleep(0.05)
            try:
                # the pool stops every comparison by its deadline; this bound only guards against a pool bug
                ticket.done.wait(ticket.deadline - time.monotonic() + CANCEL_GRACE_S + 30)
            finally:
                pool.release(ticket)
            verdicts += [r if r is not None else failure(j.item, INFRA_ERROR, "pool did not answer")
                         for j, r in zip(ticket.jobs, ticket.results)]
        return verdicts


def _deadline(payload: dict) -> float | None:
    d = payload.get("deadline_s")
    if d is None:
        return None
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= MAX_REQUEST_DEADLINE_S:
        raise ItemError(f"field 'deadline_s' must be a number of seconds in (0, {MAX_REQUEST_DEADLINE_S:g}], "
                        f"got {d!r}")
    return float(d)


def _banner(text: str):
    print("!" * 78 + "\n" + text + "\n" + "!" * 78, file=sys.stderr, flush=True)


def build_server(host: str, port: int, cfg: PoolConfig, require_sandbox: bool = False, cgroup_mode: str = "auto",
                 require_cgroup: bool = False) -> RewardServer:
    """The server with its worker pool. cgroup_mode "auto": a memory + pids cgroup per sandboxed run where
    the host allows one (cgroups.setup), else per-process rlimits with a warning; "off": rlimits only."""
    if cgroup_mode not in ("auto", "off"):
        raise ValueError(f"cgroup_mode must be 'auto' or 'off', got {cgroup_mode!r}")
    if cgroup_mode == "auto":
        parent, cg_report = cgroups.setup()
    else:
        parent, cg_report = None, {"enabled": False, "detail": "disabled (--cgroup off)"}
    sandbox.configure(parent, "probe")
    report = sandbox.probe(cfg.limits)
    if parent is not None and not report["ok"]:  # was it the cgroup? try once without
        sandbox.configure(None, "probe")
        plain = sandbox.probe(cfg.limits)
        if plain["ok"]:
            cgroups.teardown(parent)
            parent, report = None, plain
            cg_report = {"enabled": False, "detail": f"a sandboxed run in a cgroup failed: {report['detail']}"}
    if not report["ok"]:
        _banner(f"r1jax reward server: the code sandbox is NOT available: {report['detail']}\n"
                "Code items will be answered with status infra_error.")
        if require_sandbox:
            cgroups.teardown(parent)
            raise SystemExit("refusing to start without the sandbox (--require-sandbox)")
    elif parent is None:
        _banner(f"r1jax reward server: no per-run memory cgroup ({cg_report.get('detail')}).\n"
                "The memory limit is per process (RLIMIT_AS) and processes are limited per uid: a program that "
                "forks can hold up to nproc x memory-mb. See docs/reward.md § The sandbox.")
        if require_cgroup:
            raise SystemExit("refusing to start without a per-run memory cgroup (--require-cgroup)")
    report["cgroup"] = cg_report
    cfg = dataclasses.replace(cfg, cgroup=parent)
    try:
        return RewardServer((host, port), WorkerPool(cfg), report)
    except BaseException:
        cgroups.teardown(parent)
        raise


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
    ap.add_argument("--workers", type=int, default=2, help="workers of the fast lane (math, countdown, ...)")
    ap.add_argument("--code-workers", type=int, default=None,
                    help="workers of the code lane (sandboxed programs); default: as many as --workers")
    ap.add_argument("--max-queue", type=int, default=4096)
    ap.add_argument("--request-deadline", type=float, default=300.0,
                    help="seconds a request may take, queue wait included, when it carries no deadline_s")
    ap.add_argument("--math-deadline", type=float, default=10.0)
    ap.add_argument("--cpu-s", type=int, default=5)
    ap.add_argument("--wall-s", type=float, default=10.0)
    ap.add_argument("--memory-mb", type=int, default=1024,
                    help="memory cap of one sandboxed run: per process (RLIMIT_AS) and over all its processes "
                         "(cgroup)")
    ap.add_argument("--nproc", type=int, default=32, help="processes + threads of one sandboxed run")
    ap.add_argument("--sandbox-nice", type=int, default=0, help="niceness of sandboxed programs (0-19)")
    ap.add_argument("--cgroup", choices=("auto", "off"), default="auto",
                    help="auto: a memory + pids cgroup per sandboxed run where the host allows it; off: rlimits only")
    ap.add_argument("--require-cgroup", action="store_true", help="exit if no per-run memory cgroup can be made")
    ap.add_argument("--plugin", action="append", default=[], help="module registering custom rewards")
    ap.add_argument("--require-sandbox", action="store_true", help="exit if namespaces are unavailable")
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="shut down when this process is gone (the trainer that auto-started us, even "
                         "if it was killed with SIGKILL and could not clean up)")
    args = ap.parse_args(argv)
    for mod in args.plugin:
        importlib.import_module(mod)
    try:
        limits = sandbox.Limits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb, nproc=args.nproc,
                                nice=args.sandbox_nice)
        cfg = PoolConfig(
            workers=args.workers,
            code_workers=args.code_workers,
            max_queue=args.max_queue,
            math_deadline_s=args.math_deadline,
            limits=limits,
            plugins=tuple(args.plugin),
            default_request_deadline_s=args.request_deadline,
        )
    except ValueError as e:
        ap.error(str(e))
    server = build_server(args.host, args.port, cfg, args.require_sandbox, args.cgroup, args.require_cgroup)
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
        cgroups.teardown(server.cgroup)


if __name__ == "__main__":
    main()
