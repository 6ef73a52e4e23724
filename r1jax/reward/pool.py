"""A worker pool we manage ourselves: two lanes of worker processes, each SIGKILLed on overrun and respawned.

concurrent.futures cannot kill a stuck task (sympy deep in C big-integer code ignores signals and
signal-based timeouts only work on the main thread), so each slot is a dispatcher thread that owns
one worker process and a pipe: send the work, poll the pipe until the item's time is up, SIGKILL +
respawn on overrun. Sandboxed programs started by a worker die with it (parent-death signal chain), and
the slot removes the run cgroups a killed worker leaves behind.

Lanes (docs/reward.md § Scheduling): "code" (code items with an accuracy weight: sandboxed runs) and
"fast" (everything else: math, countdown, custom rewards, /equivalence comparisons). Each lane has its
own queue and its own workers, so a cheap item never waits behind a program that uses its full time.

Deadlines: a request carries deadline_s (the time its client will wait, queue wait included). An item
still queued at its deadline, or with less than half the lane's mean service time left when a worker
could take it, is not run (infra_error, "expired"); an item is killed at the earlier of its own budget
(math deadline, or runs x (wall + 0.5 s) + slack: status timeout, the model's fault) and the request
deadline (infra_error). cancel(ticket) drops the request's queued items and kills its running
sandboxes (a "cancel" message the worker's sandbox reads while the program runs); the server calls it
when the client disconnects or the deadline passes.

Admission: submit() refuses (Overloaded -> 503 + Retry-After) a batch that would overflow max_queue, or
whose expected completion, ceil((queued + running + batch) / lane workers) x mean service time plus one
mean service time of headroom, exceeds its deadline, or that would make more than MAX_WAITING_REQUESTS
requests wait on one lane.

Two kinds of work item share the pool and its deadlines: scoring items (validated by scoring.check_item;
the verdict gains the extracted final answer) and answer comparisons for /equivalence
({"kind": "compare", "answer", "representative"}; verdict {"equal", "status", "detail"}).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time

from r1jax.reward import cgroups, sandbox
from r1jax.reward.equivalence import COMPARE
from r1jax.reward.types import INFRA_ERROR, OK, STATUSES, TIMEOUT

CHUNK = 16  # cheap items handed to a worker per message
SANDBOX_UID_BASE = 100_000  # slot k runs programs as uid SANDBOX_UID_BASE + k
FAST, CODE = "fast", "code"
LANES = (FAST, CODE)
CANCEL = "cancel"  # pool -> worker: kill the running sandbox of the current item
CANCEL_GRACE_S = 2.0  # after a cancel, how long the worker has to answer before it is SIGKILLed
MAX_WAITING_REQUESTS = 64  # requests waiting on one lane; beyond, 503
PRIOR_SERVICE_S = {FAST: 0.01, CODE: 0.5}  # mean service time per item before any was measured
EWMA = 0.2
START_MIN_FRACTION = 0.5  # an item starts only with this fraction of the lane's mean service time left

QUEUED, RUNNING, DONE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    workers: int = 2  # fast lane: math / countdown / custom rewards / comparisons
    max_queue: int = 4096  # items waiting or running; beyond this the server answers 503 + Retry-After
    math_deadline_s: float = 10.0  # per math / countdown / custom item, worker killed after it
    code_slack_s: float = 5.0  # per code item: runs * (limits.wall_s + 0.5) + slack
    max_deadline_s: float = 300.0
    limits: sandbox.Limits = sandbox.Limits()
    plugins: tuple[str, ...] = ()  # modules that register custom rewards, imported by every worker
    code_workers: int | None = None  # code lane (sandboxed runs); None: as many as `workers`
    default_request_deadline_s: float = 300.0  # for requests that carry no deadline_s (queue wait included)
    cgroup: cgroups.CgroupParent | None = None  # the server's cgroup parent (None: rlimits only)

    def __post_init__(self):
        if self.workers < 1 or self.max_queue < 1 or (self.code_workers is not None and self.code_workers < 1):
            raise ValueError(f"PoolConfig needs workers >= 1, code_workers >= 1 and max_queue >= 1, got {self}")
        if not self.default_request_deadline_s > 0:
            raise ValueError(f"PoolConfig.default_request_deadline_s must be > 0, got {self}")

    @property
    def n_code_workers(self) -> int:
        return self.workers if self.code_workers is None else self.code_workers


def lane_of(item: dict) -> str:
    if item.get("task") == "code" and item.get("weights", {}).get("accuracy", 0):
        return CODE
    return FAST


def _start_zygote(limits: sandbox.Limits):
    try:
        return sandbox.ensure_zygote(limits.site_packages)
    except Exception:  # noqa: BLE001 - the next code item reports the failure as its own infra_error
        return None


def _worker_main(conn, lane: str, slot_name: str, limits: sandbox.Limits, plugins: tuple[str, ...],
                 cgroup_parent):
    # Imported here so the fork server preloads it once and workers start fast.
    import importlib

    from r1jax.reward.equivalence import compare_answers, safe_final_answer
    from r1jax.reward.scoring import score_item

    for mod in plugins:
        importlib.import_module(mod)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    zsock = None
    if lane == CODE:
        sandbox.configure(cgroup_parent, slot_name, cancel_fd=conn.fileno(), defer_cleanup=True)
        zsock = _start_zygote(limits)  # now, not at the first code item
    while True:
        if zsock is not None:
            ready = mp.connection.wait([conn, zsock])
            if conn not in ready:  # the idle zygote's socket: it died -> a new one at once
                zsock = _start_zygote(limits)
                continue
        try:
            items = conn.recv()
        except EOFError:
            return
        if items == CANCEL:  # arrived after its item had finished: nothing to do
            continue
        for item in items:  # one message per verdict, so the slot can time each item on its own
            t0 = time.monotonic()
            try:
                if item.get("kind") == COMPARE:
                    result = compare_answers(item["answer"], item["representative"])
                else:
                    result = score_item(item, limits)
                    result["answer"] = safe_final_answer(item)
            except sandbox.Cancelled as e:
                result = failure(item, INFRA_ERROR, f"cancelled: {e}")
                result["cancelled"] = True
            result["service_s"] = time.monotonic() - t0
            conn.send(result)
            sandbox.finish_pending()  # the runs' cgroups, now that the verdict is on its way
        if lane == CODE:
            zsock = _start_zygote(limits)  # the run may have replaced a broken zygote


class _Job:
    __slots__ = ("item", "lane", "budget_s", "deadline", "result", "ticket", "state", "slot", "t_enqueue",
                 "t_start", "cancel_reason")

    def __init__(self, item: dict, lane: str, budget_s: float, deadline: float, ticket: Ticket):
        self.item, self.lane, self.budget_s, self.deadline, self.ticket = item, lane, budget_s, deadline, ticket
        self.result = None
        self.state = QUEUED
        self.slot = -1
        self.t_enqueue = time.monotonic()
        self.t_start = None
        self.cancel_reason = None  # why a cancel was sent to its worker: "client", "budget" or "deadline"


class Ticket:
    """One request's jobs; `done` is set when every job has a result (results in input order)."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.jobs: list[_Job] = []
        self.left = 0
        self.done = threading.Event()
        self.lanes: set[str] = set()
        self.cancelled = False  # its client left: nothing of it runs any more

    @property
    def results(self) -> list[dict]:
        return [j.result for j in self.jobs]


class Overloaded(RuntimeError):
    """The pool cannot take the batch now; the caller should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class _Lane:
    def __init__(self, name: str, slots: list[int], lock: threading.Lock):
        self.name, self.slots = name, slots
        self.queue: collections.deque[_Job] = collections.deque()
        self.cond = threading.Condition(lock)
        self.queued = 0  # jobs waiting (not cancelled)
        self.dead = 0  # cancelled jobs still in `queue` (removed lazily, or by compact())
        self.running = 0  # jobs handed to a worker
        self.requests = 0  # requests with a job on this lane not yet answered
        self.service_s = PRIOR_SERVICE_S[name]  # EWMA of the time one item spends in a worker
        self.queue_wait_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self.latency_s: collections.deque[float] = collections.deque(maxlen=10_000)

    def compact(self):
        """Drops cancelled jobs from the deque once they outnumber the live ones (called under the lock),
        so clients that submit and leave while the workers are busy cannot grow it without bound."""
        if self.dead > 2 * self.queued + 256:
            self.queue = collections.deque(j for j in self.queue if j.state == QUEUED)
            self.dead = 0

    def expected_s(self, n_more: int = 0) -> float:
        """Expected time until n_more items added now would all be done: the lane's workers take the
        queued, running and new items in rounds of one mean service time each."""
        return math.ceil((self.queued + self.running + n_more) / len(self.slots)) * self.service_s


class WorkerPool:
    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["r1jax.reward.scoring", "r1jax.reward.equivalence"])
        self._lock = threading.Lock()
        nf, nc = cfg.workers, cfg.n_code_workers
        self.lanes = {FAST: _Lane(FAST, list(range(nf)), self._lock),
                      CODE: _Lane(CODE, list(range(nf, nf + nc)), self._lock)}
        self._lane_of_slot = [FAST] * nf + [CODE] * nc
        self._pending = 0  # jobs queued or running
        self._stop = False
        self.counts = collections.Counter({s: 0 for s in STATUSES})  # scoring items answered, by status
        # answer comparisons (/equivalence) by status: ok (compared), timeout, infra_error
        self.comparison_counts = collections.Counter({s: 0 for s in (OK, TIMEOUT, INFRA_ERROR)})
        # scoring items only (a comparison is much cheaper and would hide their latency)
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)  # enqueue -> verdict
        self.service_s: collections.deque[float] = collections.deque(maxlen=10_000)  # time in the worker
        self.respawns = 0
        self.cancelled = 0  # items dropped or killed because their client left
        self.expired = 0  # items whose request deadline passed before they could run
        self.refused = collections.Counter({"queue_full": 0, "expected_wait": 0, "waiting_requests": 0})
        self.busy = 0
        n = nf + nc
        self._procs: list = [None] * n
        self._send_locks = [threading.Lock() for _ in range(n)]
        for k in range(n):  # started before we listen, so /health is truthful from the start
            self._spawn(k)
        self._threads = [
            threading.Thread(target=self._slot, args=(k,), daemon=True, name=f"reward-slot-{k}") for k in range(n)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public
    def budget_for(self, item: dict) -> float:
        """The item's own time in a worker; over it the item is killed with status timeout."""
        if lane_of(item) == CODE:
            from r1jax.reward.codecheck import n_runs

            d = n_runs(item["meta"]) * (self.cfg.limits.wall_s + 0.5) + self.cfg.code_slack_s
        else:
            d = self.cfg.math_deadline_s
        return min(d, self.cfg.max_deadline_s)

    def submit(self, items: list[dict], deadline_s: float | None = None) -> Ticket:
        """Queues all items or none (Overloaded). deadline_s: how long the client waits, queue included."""
        deadline_s = self.cfg.default_request_deadline_s if deadline_s is None else deadline_s
        now = time.monotonic()
        ticket = Ticket(now + deadline_s)
        by_lane = collections.Counter(lane_of(it) for it in items)
        with self._lock:
            if self._pending + len(items) > self.cfg.max_queue:
                self.refused["queue_full"] += 1
                wait = sum(lane.expected_s() for lane in self.lanes.values())
                raise Overloaded(
                    f"queue holds {self._pending} of {self.cfg.max_queue} items; batch of {len(items)}",
                    _retry_after(wait if len(items) <= self.cfg.max_queue else 1),
                )
            for name, n in by_lane.items():
                lane = self.lanes[name]
                if lane.requests >= MAX_WAITING_REQUESTS:
                    self.refused["waiting_requests"] += 1
                    raise Overloaded(f"{lane.requests} requests already wait on the {name} lane",
                                     _retry_after(lane.expected_s()))
                expected = lane.expected_s(n) + lane.service_s  # one service time of headroom
                if expected > deadline_s:
                    self.refused["expected_wait"] += 1
                    raise Overloaded(
                        f"{name} lane: expected {expected:.1f}s to finish this batch ({lane.queued} queued, "
                        f"{lane.running} running, {n} new, ~{lane.service_s:.2f}s each on {len(lane.slots)} "
                        f"workers) exceeds the request deadline of {deadline_s:.1f}s",
                        _retry_after(expected - deadline_s),
                    )
            for it in items:
                lane = lane_of(it)
                ticket.jobs.append(_Job(it, lane, self.budget_for(it), ticket.deadline, ticket))
            ticket.left = len(ticket.jobs)
            ticket.lanes = set(by_lane)
            for name in ticket.lanes:
                self.lanes[name].requests += 1
            self._pending += len(items)
            for job in ticket.jobs:
                lane = self.lanes[job.lane]
                lane.queue.append(job)
                lane.queued += 1
            for name in ticket.lanes:
                self.lanes[name].cond.notify(by_lane[name])
        if not ticket.jobs:
            ticket.done.set()
        return ticket

    def cancel(self, ticket: Ticket, reason: str, expired: bool = False) -> int:
        """Answers the ticket's queued jobs with infra_error(reason) and, unless `expired` (a running job
        already stops by the deadline), kills its running sandboxes -> number of jobs affected."""
        dropped = []
        n = 0
        with self._lock:
            ticket.cancelled = ticket.cancelled or not expired
            for job in ticket.jobs:
                if job.state == QUEUED:
                    job.state = DONE  # the lane's deque still holds it; _take skips it
                    self.lanes[job.lane].queued -= 1
                    self.lanes[job.lane].dead += 1
                    dropped.append(job)
                elif job.state == RUNNING and job.lane == CODE and not expired and job.cancel_reason is None:
                    self._send_cancel(job, "client")
                    n += 1
            if expired:
                self.expired += len(dropped)
            else:
                self.cancelled += len(dropped) + n
            for lane in self.lanes.values():
                lane.compact()
        for job in dropped:
            waited = time.monotonic() - job.t_enqueue
            self._finish(job, failure(job.item, INFRA_ERROR, f"{reason} after {waited:.1f}s in the queue; not run"),
                         count=expired)
        return len(dropped) + n

    def release(self, ticket: Ticket) -> None:
        """The server is done with the ticket (answered or abandoned): it no longer waits on its lanes."""
        with self._lock:
            for name in ticket.lanes:
                self.lanes[name].requests -= 1
            ticket.lanes = set()

    @property
    def n_workers(self) -> int:
        return len(self._procs)

    def queue_depth(self) -> int:
        return self._pending

    def alive_workers(self) -> int:
        return sum(1 for p in self._procs if p is not None and p[0].is_alive())

    def worker_pids(self, lane: str | None = None) -> list[int]:
        return [p[0].pid for k, p in enumerate(self._procs)
                if p is not None and (lane is None or self._lane_of_slot[k] == lane)]

    def lane_metrics(self) -> dict:
        with self._lock:
            return {
                name: {
                    "workers": len(lane.slots),
                    "queued": lane.queued,
                    "running": lane.running,
                    "waiting_requests": lane.requests,
                    "mean_service_s": lane.service_s,
                    "expected_wait_s": lane.expected_s(),
                    "queue_wait_s": _percentiles(list(lane.queue_wait_s)),
                    "latency_s": _percentiles(list(lane.latency_s)),
                    "worker_pids": self.worker_pids(name),
                }
                for name, lane in self.lanes.items()
            }

    def close(self):
        with self._lock:
            self._stop = True
            for lane in self.lanes.values():
                lane.cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        for k in range(len(self._procs)):
            self._kill(k)
        cgroups.purge_runs(self.cfg.cgroup)

    # ------------------------------------------------------------------ slots
    def _slot_name(self, k: int) -> str:
        return f"s{k}"

    def _spawn(self, k: int):
        parent, child = self._ctx.Pipe()
        lane = self._lane_of_slot[k]
        limits = dataclasses.replace(
            self.cfg.limits, uid=None if self.cfg.limits.uid is None else SANDBOX_UID_BASE + k
        )
        p = self._ctx.Process(
            target=_worker_main,
            args=(child, lane, self._slot_name(k), limits, self.cfg.plugins, self.cfg.cgroup),
            daemon=True,
            name=f"reward-worker-{lane}-{k}",
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
        # its sandboxes die with it (parent-death signals); their cgroups are ours to remove
        cgroups.purge_runs(self.cfg.cgroup, f"run-{self._slot_name(k)}-")

    def _send_cancel(self, job: _Job, reason: str):
        """Called with the pool lock held, so the cancel precedes any later work sent to that worker."""
        job.cancel_reason = reason
        proc = self._procs[job.slot]
        if proc is None:
            return
        with self._send_locks[job.slot]:
            try:
                proc[1].send(CANCEL)
            except (OSError, ValueError):
                pass  # the worker is gone (its pipe closed); the slot notices

    def _finish(self, job: _Job, result: dict, count: bool = True):
        service_s = result.pop("service_s", None)
        now = time.monotonic()
        job.result = result
        with self._lock:
            if job.t_start is not None:  # it ran (or was handed to a worker)
                lane = self.lanes[job.lane]
                lane.running -= 1
                if job.cancel_reason not in ("client", "deadline"):  # cut short: says nothing of its cost
                    took = service_s if service_s is not None else now - job.t_start
                    lane.service_s += EWMA * (took - lane.service_s)
                lane.latency_s.append(now - job.t_enqueue)
            self._pending -= 1
            job.state = DONE
            if count:
                if job.item.get("kind") == COMPARE:
                    self.comparison_counts[result["status"]] += 1
                else:
                    self.counts[result["status"]] += 1
                    self.latencies_s.append(now - job.t_enqueue)
                    self.service_s.append(service_s if service_s is not None else now - (job.t_start or now))
            ticket = job.ticket
            ticket.left -= 1
            if ticket.left == 0:
                ticket.done.set()

    def _take(self, lane: _Lane, k: int) -> list[_Job] | None:
        """The next job of the lane (plus more waiting ones, up to CHUNK, on the fast lane), marked
        running on slot k; None when the pool stops. Jobs whose deadline passed are answered here."""
        expired: list[_Job] = []
        with lane.cond:
            while True:
                if self._stop:
                    chunk = None
                    break
                chunk = []
                now = time.monotonic()
                while lane.queue and len(chunk) < (CHUNK if lane.name == FAST else 1):
                    job = lane.queue.popleft()
                    if job.state != QUEUED:
                        lane.dead -= 1
                        continue  # cancelled while waiting
                    lane.queued -= 1
                    # not worth starting: it would most likely be killed at its deadline, a worker wasted
                    if job.deadline - now < START_MIN_FRACTION * lane.service_s:
                        job.state = DONE
                        expired.append(job)
                        continue
                    job.state, job.slot, job.t_start = RUNNING, k, now
                    lane.running += 1
                    lane.queue_wait_s.append(now - job.t_enqueue)
                    chunk.append(job)
                if chunk:
                    self.busy += 1
                    break
                if expired:
                    break
                lane.cond.wait()
            self.expired += len(expired)
        for job in expired:
            left = job.deadline - time.monotonic()
            why = "request deadline passed" if left <= 0 else f"only {left:.1f}s left of the request deadline"
            self._finish(job, failure(job.item, INFRA_ERROR,
                                      f"{why} after {time.monotonic() - job.t_enqueue:.1f}s in the queue; not run"))
        return chunk if chunk or chunk is None else []

    def _slot(self, k: int):
        lane = self.lanes[self._lane_of_slot[k]]
        while True:
            chunk = self._take(lane, k)
            if chunk is None:
                return
            if not chunk:
                continue
            try:
                if self._procs[k] is None or not self._procs[k][0].is_alive():
                    self._kill(k)
                    self._spawn(k)
                    self.respawns += 1
                self._run_chunk(k, chunk)
            finally:
                with self._lock:
                    self.busy -= 1
            if self._procs[k] is None and not self._stop:
                self._spawn(k)
                self.respawns += 1

    def _run_chunk(self, k: int, chunk: list[_Job]):
        _, conn = self._procs[k]
        done, t0 = 0, time.monotonic()
        try:
            with self._send_locks[k]:
                conn.send([job.item for job in chunk])
            for job in chunk:
                t0 = time.monotonic()
                # each item gets its full budget, counted from the previous item's verdict, but never
                # runs past its request's deadline
                by_deadline = job.deadline - t0 < job.budget_s
                got = conn.poll(max(0.0, min(job.budget_s, job.deadline - t0)))
                if not got and job.lane == CODE:  # stop the sandbox, keep the worker and its zygote
                    with self._lock:
                        if job.cancel_reason is None:
                            self._send_cancel(job, "deadline" if by_deadline else "budget")
                    got = conn.poll(CANCEL_GRACE_S)
                if not got:
                    self._kill(k)
                    if by_deadline:
                        res = failure(job.item, INFRA_ERROR, "request deadline reached while running; worker killed")
                    else:
                        res = failure(job.item, TIMEOUT, f"no verdict within {job.budget_s:.1f}s; worker killed")
                    self._finish(job, res, count=job.cancel_reason != "client")
                    done += 1
                    break
                result = conn.recv()
                if result.pop("cancelled", False):
                    if job.cancel_reason == "budget":
                        result = failure(job.item, TIMEOUT, f"no verdict within {job.budget_s:.1f}s; run killed")
                    elif job.cancel_reason == "deadline":
                        result = failure(job.item, INFRA_ERROR, "request deadline reached while running; run killed")
                self._finish(job, result, count=job.cancel_reason != "client")
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
        rest = chunk[done:]
        gone = [job for job in rest if job.ticket.cancelled]
        rest = [job for job in rest if not job.ticket.cancelled]
        if gone:
            with self._lock:
                self.cancelled += len(gone)
        for job in gone:
            self._finish(job, failure(job.item, INFRA_ERROR, "cancelled: the client left"), count=False)
        if rest:  # not started when the worker was killed: back to the front of the queue
            lane = self.lanes[rest[0].lane]
            with lane.cond:
                for job in reversed(rest):
                    job.state, job.slot, job.t_start = QUEUED, -1, None
                    lane.running -= 1
                    lane.queued += 1
                    lane.queue.appendleft(job)
                lane.cond.notify(len(rest))


def _retry_after(seconds: float) -> int:
    return int(min(60, max(1, math.ceil(seconds))))


def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    xs = sorted(values)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def failure(item: dict, status: str, detail: str) -> dict:
    """The verdict of an item the pool had to stop (TIMEOUT) or lost with its worker (INFRA_ERROR)."""
    if item.get("kind") == COMPARE:  # "not shown equal": the answer opens its own class
        return {"equal": False, "status": status, "detail": detail}
    return {"reward": 0.0, "status": status, "components": {}, "details": {"error": detail}, "answer": None}
