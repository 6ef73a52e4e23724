"""Client side: RewardClient (batching, bounded concurrency, deadlines, retries) and start_local_server.

with start_local_server(workers=4) as url:
    client = RewardClient([url])
    batch = client.score(items)
    batch.rewards   # float32 [N] weighted sum      batch.valid  # bool [N], False = mask it
    batch.answers   # the extracted final answer per item (None: none given, or code)
    client.equivalence_classes([["1/2", "0.5", "3", None]])   # -> [[0, 0, 1, -1]]
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from r1jax.reward.types import INFRA_ERROR, INFRA_STATUSES, REJECTED


class RewardServerUnavailable(RuntimeError):
    """No server answered after all retries (unreachable, overloaded or failing)."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or []  # what each attempt ran into, oldest first


class RewardRequestError(ValueError):
    """The server refused the request as malformed (HTTP 4xx); retrying cannot help."""


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    rewards: np.ndarray  # float32 [N], the weighted sum per item
    components: dict  # name -> float32 [N] (0 where the item did not ask for that component)
    status: list  # str per item
    valid: np.ndarray  # bool [N]; False for infrastructure failures, which the trainer masks
    details: list  # per item {"components": {...}, "details": {...}}
    # per item, the final answer the accuracy reward read (str), or None: no answer, a hedge, a code task,
    # or an item that timed out / failed. None on batches built by hand that did not record answers.
    answers: list | None = None


_RETRYABLE_HTTP = {429, 500, 502, 503, 504}
DEADLINE_MARGIN_S = 0.5  # the server's deadline ends this much before ours, so its answer still reaches us
MAX_DEADLINE_S = 3600.0  # the server's limit on deadline_s


class RewardClient:
    def __init__(
        self,
        urls,
        *,
        batch_size: int = 256,
        max_concurrency: int = 4,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        on_unavailable: str = "raise",
    ):
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("RewardClient needs at least one server URL")
        if on_unavailable not in ("raise", "mask"):
            raise ValueError("on_unavailable must be 'raise' or 'mask'")
        self.urls = [u.rstrip("/") for u in urls]
        self.batch_size, self.max_concurrency = batch_size, max_concurrency
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.on_unavailable = on_unavailable
        self._rr = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- HTTP
    def _request(self, url: str, method: str, path: str, body: bytes | None, timeout: float):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def health(self, url: str | None = None, timeout_s: float = 5.0) -> dict:
        status, _, data = self._request(url or self.urls[0], "GET", "/health", None, timeout_s)
        if status != 200:
            raise RewardServerUnavailable(f"{url}: /health answered {status}")
        return json.loads(data)

    def metrics(self, url: str | None = None) -> dict:
        return json.loads(self._request(url or self.urls[0], "GET", "/metrics", None, 10.0)[2])

    def _next_url(self) -> str:
        with self._lock:
            self._rr += 1
            return self.urls[self._rr % len(self.urls)]

    def _post(self, path: str, payload: dict, send_deadline: bool = False) -> tuple[str, dict]:
        """POSTs with retries -> (url, decoded 200 answer). Raises RewardRequestError at once on a refusal
        that retrying cannot fix (4xx but 429), RewardServerUnavailable when no server answered.
        send_deadline: tell the server how long we still wait ("deadline_s", queue wait included), so it
        refuses (503) what it cannot finish in time and drops what we will no longer read."""
        body = json.dumps(payload).encode()
        deadline = time.monotonic() + self.timeout_s
        errors = []
        for attempt in range(self.retries + 1):
            url = self._next_url()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if send_deadline:
                budget = min(left - DEADLINE_MARGIN_S, MAX_DEADLINE_S)
                body = json.dumps({**payload, "deadline_s": max(0.1, budget)}).encode()
            try:
                status, headers, data = self._request(url, "POST", path, body, left)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
                errors.append(f"{url}: {type(e).__name__}: {e}")
                wait = self.backoff_s * 2**attempt
            else:
                if status == 200:
                    return url, json.loads(data)
                msg = data[:500].decode(errors="replace")
                if status not in _RETRYABLE_HTTP:
                    raise RewardRequestError(f"{url} refused the request (HTTP {status}): {msg}")
                errors.append(f"{url}: HTTP {status}: {msg}")
                wait = float(headers.get("Retry-After", self.backoff_s * 2**attempt))
            if attempt < self.retries:
                time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
        raise RewardServerUnavailable(
            f"no reward server answered after {self.retries + 1} attempts: " + " | ".join(errors[-3:]), errors
        )

    def _score_chunk(self, items: list[dict]) -> list[dict]:
        try:
            url, body = self._post("/score", {"items": items}, send_deadline=True)
        except RewardServerUnavailable as e:
            if self.on_unavailable == "raise":
                raise
            errors = e.errors
            return [
                {
                    "reward": 0.0,
                    "status": REJECTED if "HTTP" in (errors[-1] if errors else "") else INFRA_ERROR,
                    "components": {},
                    "details": {"error": errors[-3:]},
                    "answer": None,
                }
                for _ in items
            ]
        results = body["results"]
        if len(results) != len(items):
            raise RewardServerUnavailable(f"{url} returned {len(results)} results for {len(items)}")
        return results

    def _classes_chunk(self, groups: list) -> list[list[int]]:
        url, body = self._post("/equivalence", {"groups": groups})
        classes = body["classes"]
        if len(classes) != len(groups) or any(len(c) != len(g) for c, g in zip(classes, groups)):
            raise RewardServerUnavailable(f"{url} returned classes that do not match the groups sent")
        return classes

    # ---------------------------------------------------------------- public
    def score(self, items: list[dict]) -> RewardBatch:
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if len(chunks) <= 1:
            results = [self._score_chunk(c) for c in chunks]
        else:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as ex:
                results = list(ex.map(self._score_chunk, chunks))
        flat = [r for chunk in results for r in chunk]
        names = sorted({name for it in items for name in (it.get("weights") or {"accuracy": 1.0})})
        components = {n: np.array([r["components"].get(n, 0.0) for r in flat], np.float32) for n in names}
        status = [r["status"] for r in flat]
        return RewardBatch(
            rewards=np.array([r["reward"] for r in flat], np.float32),
            components=components,
            status=status,
            valid=np.array([s not in INFRA_STATUSES for s in status], bool),
            details=[{"components": r["components"], "details": r["details"]} for r in flat],
            answers=[r.get("answer") for r in flat],
        )

    def equivalence_classes(self, groups: list[list[str | None]]) -> list[list[int]]:
        """Per group (e.g. the k answers of one problem), a class id per answer: equal ids = equivalent
        under the accuracy reward's rule; ids count from 0 in order of first appearance; -1 = null.

        Groups are sent whole, several per request up to batch_size answers, max_concurrency requests in
        flight. Errors as score(): RewardRequestError for a malformed request (names the group and
        answer), RewardServerUnavailable when no server answered -- also with on_unavailable="mask",
        since a class id has no masked form and a vote over guessed classes would be a wrong number.
        """
        if not isinstance(groups, list):
            raise TypeError(f"groups must be a list of lists of answers, got {type(groups).__name__}")
        chunks, current, size = [], [], 0
        for group in groups:
            n = len(group) if isinstance(group, (list, tuple)) else 1  # the server names a malformed group
            if current and size + n > self.batch_size:
                chunks.append(current)
                current, size = [], 0
            current.append(group)
            size += n
        if current:
            chunks.append(current)
        if len(chunks) <= 1:
            results = [self._classes_chunk(c) for c in chunks]
        else:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as ex:
                results = list(ex.map(self._classes_chunk, chunks))
        return [classes for chunk in results for classes in chunk]


@contextlib.contextmanager
def start_local_server(
    workers: int = 2,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
    plugins: tuple[str, ...] = (),
    startup_timeout_s: float = 60.0,
    env: dict | None = None,
):
    """Starts `python -m r1jax.reward.server` on a free port, yields its URL, kills it on exit."""
    cmd = [
        sys.executable,
        "-m",
        "r1jax.reward.server",
        "--host",
        host,
        "--port",
        "0",
        "--workers",
        str(workers),
        "--parent-pid",
        str(os.getpid()),
        *[a for p in plugins for a in ("--plugin", p)],
        *extra_args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True, env=env
    )
    try:
        port = _read_port(proc, startup_timeout_s)
        url = f"http://{host}:{port}"
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def _read_port(proc, timeout_s: float) -> int:
    box = {}

    def reader():
        for line in proc.stdout:
            if line.startswith("LISTENING "):
                box["port"] = int(line.split()[1])
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if "port" not in box:
        raise RewardServerUnavailable(
            f"reward server did not start within {timeout_s}s (exit code {proc.poll()})"
        )
    return box["port"]
