"""Math extraction and grading time vs completion length (1 KB .. 1 MB), normal and adversarial texts.

For every text family and length, in one process and one run (CPU only):
  * r1jax `extract_answer` alone, and `verify_math` (extraction + parse + comparison: what a reward worker
    runs for a math item), best of --repeats;
  * the previous r1jax extraction (the per-box brace scan, the r1_zero layout regex and the <answer> regex,
    copied below), while one call stays under --cap-s: it is quadratic on the adversarial families;
  * math-verify (HuggingFace) `parse` of the completion + `verify` against the parsed gold, with its own
    signal-alarm timeouts at their defaults (5 s), while one call stays under --cap-s.
A linear grader takes about 4x the time for 4x the length: the summary prints t(largest) / t(largest / 4)
per family. This is a benchmark, not a test: nothing here asserts a time.

    pip install math-verify   # benchmark only ("dev" extra)
    python benchmarks/bench_extraction.py                      # 1 KB .. 1 MB, table + runs/bench_extraction.json
    python benchmarks/bench_extraction.py --max-kb 64 --no-peer
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from r1jax.reward.mathcheck import extract_answer, split_completion, verify_math  # noqa: E402

KB = 1024
M = "|special_token|"
FILLER = "Let me compute 3 + 4 = 7, then check the case {n = 2} again with \\frac{1}{2} and x^{2}. "


def fill(piece: str, size: int) -> str:
    return (piece * (size // len(piece) + 1))[:size]


def brace_soup(size: int) -> str:
    rng = random.Random(0)
    pieces = ["{", "}", "{", "\\boxed{", "\\fbox ", "x", " ", "\\{", "<answer>", "</think>"]
    return "".join(rng.choice(pieces) for _ in range(size // 3))[:size]


# family -> (size -> completion, gold, template, what it is)
FAMILIES = {
    "prose_chat": (lambda n: "<think>" + fill(FILLER, n) + "</think> So \\boxed{\\frac{1}{3}}.", "\\frac13", "chat",
                   "normal: reasoning, then one box"),
    "prose_r1_zero": (lambda n: fill(FILLER, n) + "</think> <answer> \\boxed{0.3333333} </answer>", "\\frac13",
                      "r1_zero", "normal: R1-Zero layout"),
    "prose_r1": (lambda n: f"{M}{fill(FILLER, n)}{M} The answer is \\boxed{{x = 2 + 3 = 5}}.", "5", "r1",
                 "normal: readable format, chain in the box"),
    "same_box_repeated": (lambda n: "</think>" + fill("\\boxed{7} ", n), "7", "chat",
                          "one answer boxed again and again"),
    "distinct_boxes": (lambda n: "</think>" + "".join(f"\\boxed{{{k}}}" for k in range(n // 10))[:n], "3", "chat",
                       "hedge: many different boxes"),
    "unclosed_boxes": (lambda n: "</think> " + fill("\\boxed{", n), "3", "chat", "adversarial: \\boxed{ x n"),
    "unclosed_then_answer": (lambda n: fill("\\boxed{", n) + "</think> \\boxed{3}", "3", "chat",
                             "adversarial: unclosed boxes in the reasoning"),
    "unclosed_boxes_r1": (lambda n: f"{M} r {M} " + fill("\\boxed{x", n), "3", "r1", "adversarial: in the summary"),
    "bare_boxes": (lambda n: "</think> " + fill("\\boxed ", n), "3", "chat", "adversarial: \\boxed<space> x n"),
    "open_braces": (lambda n: "</think> \\boxed{" + fill("{", n), "3", "chat", "adversarial: one box, n open braces"),
    "deep_closed_box": (lambda n: "</think> \\boxed{" + "{" * (n // 2) + "}" * (n // 2) + "}", "3", "chat",
                        "adversarial: one closed box nested n/2 deep"),
    "unclosed_answer_tags": (lambda n: "r </think>" + fill("<answer>", n), "3", "r1_zero",
                             "adversarial: <answer> x n"),
    "leading_whitespace": (lambda n: fill(" ", n) + "x", "3", "r1_zero", "adversarial: whitespace, r1_zero layout"),
    "empty_brace_pairs": (lambda n: "</think> \\boxed{" + fill("{}", n), "3", "chat",
                          "adversarial: one box, n/2 closed brace pairs inside"),
    "brace_soup": (lambda n: brace_soup(n), "3", "chat", "adversarial: random braces, boxes, tags"),
}


# ---------------------------------------------------------------- the previous extraction (for comparison)

_OLD_R1_ZERO = re.compile(
    r"\A\s*(?:<think>)?(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*\Z",
    re.S,
)
_OLD_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def _old_brace_group(s: str, i: int):
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
    return None


def _old_boxed_contents(text: str) -> list[str]:
    out, end = [], 0
    for m in re.finditer(r"\\(boxed|fbox)\s*", text):
        i = m.end()
        if m.start() < end:
            continue
        if i < len(text) and text[i] == "{":
            got = _old_brace_group(text, i)
            if got is None:
                continue
            out.append(got[0])
            end = got[1] - 1
        elif i < len(text):
            out.append(text[i:].split()[0] if text[i:].split() else "")
    return out


def previous_extract(completion: str, template: str):
    """The previous code path of extract_answer: the same regions, the old scans."""
    if template == "r1_zero":
        _OLD_R1_ZERO.match(completion)  # the splitter computed the layout flag on every call
        blocks = _OLD_ANSWER.findall(completion)
        region = blocks[-1] if blocks else None
    else:
        region = split_completion(completion, template).final  # these splits were and are linear
    return None if region is None else _old_boxed_contents(region)


# ---------------------------------------------------------------- timing


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-kb", type=int, default=1)
    ap.add_argument("--max-kb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap-s", type=float, default=3.0, help="stop timing a peer once one call takes longer")
    ap.add_argument("--no-peer", action="store_true", help="skip math-verify")
    ap.add_argument("--families", default="", help="comma-separated subset of: " + ",".join(FAMILIES))
    ap.add_argument("--json", default="runs/bench_extraction.json")
    args = ap.parse_args()

    mv = None
    if not args.no_peer:
        try:
            import math_verify

            mv = math_verify
            logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout and parse failure
        except ImportError:
            print("math-verify not installed: peer column skipped (pip install math-verify)", file=sys.stderr)

    sizes = [args.min_kb * KB * 4**k for k in range(12) if args.min_kb * 4**k <= args.max_kb]  # 1, 4, .. 1024 KB
    families = args.families.split(",") if args.families else list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")

    rows = []
    header = (f"{'family':22} {'size':>8} {'extract ms':>11} {'grade ms':>10} {'status':>9} "
              f"{'previous ms':>12} {'math-verify ms':>15} {'mv says':>8}")
    print(header)
    print("-" * len(header))
    for family in families:
        make, gold, template, what = FAMILIES[family]
        previous_alive = peer_alive = True
        mv_gold = mv.parse(f"${gold}$") if mv else None
        for size in sizes:
            completion = make(size)
            c, t = completion, template  # bound for the lambdas below
            t_extract, _ = best_of(lambda c=c, t=t: extract_answer(c, t), args.repeats)
            t_grade, verdict = best_of(lambda c=c, t=t, g=gold: verify_math(c, g, t), args.repeats)
            row = {"family": family, "what": what, "template": template, "bytes": len(completion.encode()),
                   "extract_s": t_extract, "grade_s": t_grade, "status": verdict.status,
                   "previous_extract_s": None, "math_verify_s": None, "math_verify_ok": None}
            if previous_alive:
                t_prev, _ = best_of(lambda c=c, t=t: previous_extract(c, t), 1)
                row["previous_extract_s"] = t_prev
                previous_alive = t_prev < args.cap_s
            if mv is not None and peer_alive:
                t_mv, ok = best_of(lambda c=c, g=mv_gold: mv.verify(g, mv.parse(c)), 1)
                row["math_verify_s"], row["math_verify_ok"] = t_mv, bool(ok)
                peer_alive = t_mv < args.cap_s
            rows.append(row)

            def ms(x):
                return "-" if x is None else f"{1000 * x:.2f}"

            mv_says = "-" if row["math_verify_ok"] is None else ("ok" if row["math_verify_ok"] else "no")
            print(f"{family:22} {size // KB:>6}KB {ms(t_extract):>11} {ms(t_grade):>10} {verdict.status:>9} "
                  f"{ms(row['previous_extract_s']):>12} {ms(row['math_verify_s']):>15} {mv_says:>8}", flush=True)

    print("\nGrowth of grading time (verify_math) for 4x the length: ~4 is linear, ~16 quadratic")
    summary = {}
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        top, quarter = mine[-1], (mine[-2] if len(mine) > 1 else None)  # sizes grow 4x per step
        ratio = top["grade_s"] / quarter["grade_s"] if quarter and quarter["grade_s"] > 0 else None
        summary[family] = {"bytes": top["bytes"], "grade_s": top["grade_s"],
                           "grade_s_per_mb": top["grade_s"] / (top["bytes"] / 2**20), "growth_4x": ratio}
        growth = "-" if ratio is None else f"{ratio:.1f}"
        print(f"  {family:22} {1000 * top['grade_s']:9.2f} ms at {top['bytes'] // KB} KB   growth x{growth}")

    out = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sizes": sizes, "rows": rows, "summary": summary}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
