"""A worker pool we manage ourselves: one process per slot, SIGKILLed on deadline and respawned.

concurrent.futures cannot kill a stuck task (sympy deep in C big-integer code ignores signals and
signal-based timeouts only work on the main thread), so each slot is a dispatcher thread that owns
one worker process and a pipe: send the item, poll the pipe until the item's deadline, SIGKILL +
respawn on overrun. Sandboxed programs started by a worker die with it (parent-death signal chain).

Two kinds of work item share the pool and its deadlines: scoring items (validated by scoring.check_item;
the verdict gains the extracted final answer) and answer comparisons for /equivalence
({"kind": "compare", "answer", "representative"}; verdict {"equal", "status", "detail"}).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import threading
import time

from r1jax.reward import sandbox
from r1jax.reward.equivalence import COMPARE
from r1jax.reward.types import INFRA_ERROR, OK, STATUSES, TIMEOUT

CHUNK = 16  # cheap items handed to a worker per message
SANDBOX_UID_BASE = 100_000  # slot k runs programs as uid SANDBOX_UID_BASE + k (its own RLIMIT_NPROC count)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    workers: int = 2
    max_queue: int = 4096  # items waiting; beyond this the server answers 503 + Retry-After
    math_deadline_s: float = 10.0  # per math / countdown / custom item, worker killed after it
    code_slack_s: float = 5.0  # per code item: runs * limits.wall_s + slack
    max_deadline_s: float = 300.0
    limits: sandbox.Limits = sandbox.Limits()
    plugins: tuple[str, ...] = ()  # modules that register custom rewards, imported by every worker

    def __post_init__(self):
        if self.workers < 1 or self.max_queue < 1:
            raise ValueError(f"PoolConfig needs workers >= 1 and max_queue >= 1, got {self}")


def _worker_main(conn, limits: sandbox.Limits, plugins: tuple[str, ...]):
    # Imported here so the fork server preloads it once and workers start fast.
    import importlib

    from r1jax.reward.equivalence import compare_answers, safe_final_answer
    from r1jax.reward.scoring import score_item

    for mod in plugins:
        importlib.import_module(mod)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        for item in items:  # one message per verdict, so the slot can time each item on its own
            t0 = time.monotonic()
            if item.get("kind") == COMPARE:
                result = compare_answers(item["answer"], item["representative"])
            else:
                result = score_item(item, limits)
                result["answer"] = safe_final_answer(item)
            result["service_s"] = time.monotonic() - t0
            conn.send(result)


class _Job:
    __slots__ = ("item", "deadline_s", "result", "done", "t_enqueue")

    def __init__(self, item: dict, deadline_s: float):
        self.item, self.deadline_s = item, deadline_s
        self.result = None
        self.done = threading.Event()
        self.t_enqueue = time.monotonic()


class Overloaded(RuntimeError):
    """The queue cannot take the batch now; the caller should retry later."""


class WorkerPool:
    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["r1jax.reward.scoring", "r1jax.reward.equivalence"])
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = collections.Counter({s: 0 for s in STATUSES})  # scoring items by status
        # answer comparisons (/equivalence) by status: ok (compared), timeout, infra_error
        self.comparison_counts = collections.Counter({s: 0 for s in (OK, TIMEOUT, INFRA_ERROR)})
        # scoring items only (a comparison is much cheaper and would hide their latency)
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)  # enqueue -> verdict
        self.service_s: collections.deque[float] = collections.deque(maxlen=10_000)  # time in the worker
        self.respawns = 0
        self.busy = 0
        self._procs: list = [None] * cfg.workers
        for k in range(cfg.workers):  # started before we listen, so /health is truthful from the start
            self._spawn(k)
        self._threads = [
            threading.Thread(target=self._slot, args=(k,), daemon=True, name=f"reward-slot-{k}")
            for k in range(cfg.workers)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public
    def deadline_for(self, item: dict) -> float:
        if item.get("task") == "code" and item["weights"].get("accuracy", 0):
            from r1jax.reward.codecheck import n_runs

            d = n_runs(item["meta"]) * (self.cfg.limits.wall_s + 0.5) + self.cfg.code_slack_s
        else:
            d = self.cfg.math_deadline_s
        return min(d, self.cfg.max_deadline_s)

    def submit_batch(self, items: list[dict]) -> list[_Job]:
        """Queues all items or none (Overloaded); bounded, so overload never grows memory."""
        with self._lock:
            if self._pending + len(items) > self.cfg.max_queue:
                raise Overloaded(
                    f"queue holds {self._pending} of {self.cfg.max_queue}; batch of {len(items)}"
                )
            self._pending += len(items)
        jobs = [_Job(it, self.deadline_for(it)) for it in items]
        for j in jobs:
            self._queue.put(j)
        return jobs

    def queue_depth(self) -> int:
        return self._pending

    def alive_workers(self) -> int:
        return sum(1 for p in self._procs if p is not None and p[0].is_alive())

    def worker_pids(self) -> list[int]:
        return [p[0].pid for p in self._procs if p is not None]

    def close(self):
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
        for k in range(len(self._procs)):
            self._kill(k)

    # ------------------------------------------------------------------ slots
    def _spawn(self, k: int):
        parent, child = self._ctx.Pipe()
        limits = dataclasses.replace(
            self.cfg.limits, uid=None if self.cfg.limits.uid is None else SANDBOX_UID_BASE + k
        )
        p = self._ctx.Process(
            target=_worker_main,
            args=(child, limits, self.cfg.plugins),
            daemon=True,
            name=f"reward-worker-{k}",
        )
        p.start()
        child.close()
        self._procs[k] = (p, parent)

    def _kill(self, k: int):
        if self._procs[k] is None:
            return
        p, conn = self._procs[k]
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.join(timeout=5)
        conn.close()
        self._procs[k] = None

    def _finish(self, job: _Job, result: dict):
        service_s = result.pop("service_s", time.monotonic() - job.t_enqueue)
        job.result = result
        with self._lock:
            self._pending -= 1
            if job.item.get("kind") == COMPARE:
                self.comparison_counts[result["status"]] += 1
            else:
                self.counts[result["status"]] += 1
                self.latencies_s.append(time.monotonic() - job.t_enqueue)
                self.service_s.append(service_s)
        job.done.set()

    def _take_chunk(self) -> list[_Job] | None:
        """One job, plus more cheap (non-code) jobs already waiting: fewer wake-ups per item.
        Code items go alone so that slow programs spread over all workers."""
        first = self._queue.get()
        if first is None:
            return None
        chunk = [first]
        while first.item.get("task") != "code" and len(chunk) < CHUNK:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            chunk.append(job)
            if job.item.get("task") == "code":
                break
        return chunk

    def _slot(self, k: int):
        while not self._stop.is_set():
            chunk = self._take_chunk()
            if chunk is None:
                return
            if self._procs[k] is None or not self._procs[k][0].is_alive():
                self._kill(k)
                self._spawn(k)
                self.respawns += 1
            with self._lock:
                self.busy += 1
            try:
                self._run_chunk(k, chunk)
            finally:
                with self._lock:
                    self.busy -= 1
            if self._procs[k] is None:
                self._spawn(k)
                self.respawns += 1

    def _run_chunk(self, k: int, chunk: list[_Job]):
        _, conn = self._procs[k]
        done, t0 = 0, time.monotonic()
        try:
            conn.send([job.item for job in chunk])
            for job in chunk:
                t0 = time.monotonic()
                # each item gets its full deadline, counted from the previous item's verdict
                if not conn.poll(job.deadline_s):
                    self._kill(k)
                    self._finish(
                        job, failure(job.item, TIMEOUT, f"no verdict within {job.deadline_s:.1f}s; worker killed")
                    )
                    done += 1
                    break
                self._finish(job, conn.recv())
                done += 1
        except (EOFError, OSError) as e:
            # the worker died under us (kill -9, a segfault in a C extension): a grader failure
            self._kill(k)
            self._finish(
                chunk[done],
                failure(
                    chunk[done].item, INFRA_ERROR,
                    f"worker died ({type(e).__name__}) after {time.monotonic() - t0:.2f}s",
                ),
            )
            done += 1
        for job in chunk[done:]:  # not started when the worker was killed: back in the queue
            self._queue.put(job)


def failure(item: dict, status: str, detail: str) -> dict:
    """The verdict of an item the pool had to stop (TIMEOUT) or lost with its worker (INFRA_ERROR)."""
    if item.get("kind") == COMPARE:  # "not shown equal": the answer opens its own class
        return {"equal": False, "status": status, "detail": detail}
    return {"reward": 0.0, "status": status, "components": {}, "details": {"error": detail}, "answer": None}
