"""Code accuracy: run the completion's program in the sandbox against tests kept in this process.

meta["tests"] is one of
  {"type": "stdio", "cases": [{"input": str, "output": str}, ...]}
      every case is one sandboxed run; stdout is compared here, line by line, trailing space ignored.
  {"type": "assert", "program": str}          a HumanEval-style program defining check(candidate)
  {"type": "assert", "asserts": [str, ...]}   MBPP-style statements, one result each
with meta["entry_point"] naming the function for the assert type, meta["prefix"] optional code put
before the completion's code (e.g. the HumanEval prompt when the model writes only the body), and
meta["scoring"] = "all" (default: 1 only if every test passes) or "fraction".

Assert-style tests must run next to the candidate, so they are guarded instead (docs/reward.md): the
harness wraps the entry point so that only plain data (exact builtin types, recursively) may be
returned — an object whose __eq__ is always True is rejected — and reports through a random per-run
token printed only after all tests ran; exiting early (even with status 0) prints no token and fails.
"""

from __future__ import annotations

import re
import secrets
import signal

from r1jax.reward import sandbox
from r1jax.reward.mathcheck import split_completion
from r1jax.reward.types import (
    FILE_LIMIT,
    MEMORY_LIMIT,
    NO_ANSWER,
    OK,
    OUTPUT_LIMIT,
    PROGRAM_REFUSED,
    RUNTIME_ERROR,
    SIGNALED,
    TIMEOUT,
    WRONG,
    ItemError,
    Verdict,
)

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)
MAX_CODE_CHARS = 100_000

_HARNESS = """
def _r1jax_harness():
    import builtins, sys
    _type = type
    _plain = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset)
    token, entry, tests = {token!r}, {entry!r}, {tests!r}
    ns = {{"__name__": "__main__", "__builtins__": builtins}}
    exec(compile({source!r}, "solution.py", "exec"), ns)
    fn = ns.get(entry)
    if not callable(fn):
        sys.stderr.write("entry point %r is not defined\\n" % entry)
        sys.exit(3)

    def plain(v, depth=0):
        t = _type(v)
        if t not in _plain or depth > 100:
            raise TypeError("the solution returned a %s; only plain data is accepted" % t.__name__)
        if t in (list, tuple, set, frozenset):
            for x in v:
                plain(x, depth + 1)
        elif t is dict:
            for k, x in v.items():
                plain(k, depth + 1)
                plain(x, depth + 1)

    def candidate(*args, **kwargs):
        out = fn(*args, **kwargs)
        plain(out)
        return out

    ns[entry] = candidate  # MBPP-style asserts call the function by name
    results = []
    for test in tests:
        try:
            tns = dict(ns)
            tns["candidate"] = candidate
            exec(compile(test, "test.py", "exec"), tns)
            if callable(tns.get("check")) and "def check" in test:
                tns["check"](candidate)
            results.append("1")
        except BaseException:
            results.append("0")
    sys.stdout.flush()
    sys.stdout.write("\\n" + token + " " + "".join(results) + "\\n")
    sys.stdout.flush()


_r1jax_harness()
"""


def extract_code(completion: str, template: str) -> str | None:
    """The last fenced code block of the completion's final region (`split_completion(...).final`): the
    last <answer> block for "r1_zero", the summary after the second |special_token| for "r1", the text
    after the last </think> for "chat" (and for "r1" without markers). A block in the reasoning never
    counts. None when there is no such block. Raises ItemError for an unknown template."""
    region = split_completion(completion, template).final
    if region is None:
        return None
    blocks = _FENCE.findall(region)
    return blocks[-1] if blocks else None


_WHERE = {"r1_zero": "in the <answer> block", "r1": "in the summary", "chat": "after the reasoning",
          "chat_boxed": "after the reasoning"}


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def run_failure(r: sandbox.RunResult, limits: sandbox.Limits) -> tuple[str, str] | None:
    """(status, note) for a run stopped by a limit or that did not exit 0; None when it exited 0 within
    every limit (its output then decides). The first matching rule wins (docs/reward.md § Statuses)."""
    if r.timed_out:
        return TIMEOUT, f"wall clock over {limits.wall_s:g} s"
    if r.output_exceeded:
        return OUTPUT_LIMIT, f"more than {limits.output_bytes} bytes of stdout + stderr"
    if r.memory_exceeded:  # even if it exited 0: a process of the run was OOM-killed or the run was killed
        return MEMORY_LIMIT, f"the run's processes together reached the {limits.memory_mb} MB memory cap"
    if r.cpu_exceeded:
        return TIMEOUT, f"CPU time over {limits.cpu_s} s"
    if r.exit_code == 0:
        return None
    sig = r.signal
    if sig == signal.SIGXFSZ:
        return FILE_LIMIT, f"a file over {limits.fsize_mb} MB (SIGXFSZ)"
    if sig is not None:
        return SIGNALED, f"killed by {signal_name(sig)} (signal {sig})"
    tail = r.stderr[-2000:]
    if r.exit_code == sandbox.EXIT_MEMORY or "MemoryError" in tail:
        return MEMORY_LIMIT, f"MemoryError: address space over {limits.memory_mb} MB"
    # Python ignores SIGXFSZ, so RLIMIT_FSIZE surfaces as EFBIG (27); a full private tmpfs as ENOSPC (28)
    if "[Errno 27]" in tail:
        return FILE_LIMIT, f"a file over {limits.fsize_mb} MB (EFBIG)"
    if "[Errno 28]" in tail:
        return FILE_LIMIT, f"the private /tmp ({limits.tmpfs_mb} MB) is full (ENOSPC)"
    return RUNTIME_ERROR, f"exit {r.exit_code}"


def _lines(text: str) -> list[str]:
    out = [line.rstrip() for line in text.strip("\n").split("\n")]
    while out and not out[-1]:
        out.pop()
    return out


def parse_tests(meta: dict) -> dict:
    tests = meta.get("tests")
    if not isinstance(tests, dict) or tests.get("type") not in ("stdio", "assert"):
        raise ItemError("meta.tests must be an object with type 'stdio' or 'assert'")
    if tests["type"] == "stdio":
        cases = tests.get("cases")
        if (
            not isinstance(cases, list)
            or not cases
            or not all(
                isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
                for c in cases
            )
        ):
            raise ItemError("meta.tests.cases must be a non-empty list of {input: str, output: str}")
    else:
        if not isinstance(meta.get("entry_point"), str):
            raise ItemError("meta.entry_point (a function name) is required for assert tests")
        has_prog = isinstance(tests.get("program"), str)
        asserts = tests.get("asserts")
        has_asserts = isinstance(asserts, list) and asserts and all(isinstance(a, str) for a in asserts)
        if has_prog == bool(has_asserts):
            raise ItemError("meta.tests needs exactly one of 'program' (str) or 'asserts' (list of str)")
    if not isinstance(meta.get("prefix", ""), str):
        raise ItemError("meta.prefix must be a string")
    if meta.get("scoring", "all") not in ("all", "fraction"):
        raise ItemError("meta.scoring must be 'all' or 'fraction'")
    return tests


def n_runs(meta: dict) -> int:
    tests = meta.get("tests") or {}
    return len(tests.get("cases", ())) if tests.get("type") == "stdio" else 1


def verify_code(completion: str, meta: dict, template: str, limits: sandbox.Limits) -> Verdict:
    tests = parse_tests(meta)
    code = extract_code(completion, template)
    if code is None or not code.strip():
        return Verdict(0.0, NO_ANSWER, f"no ```python``` block {_WHERE[template]}")
    if len(code) > MAX_CODE_CHARS:
        return Verdict(0.0, PROGRAM_REFUSED, f"not run: program of {len(code)} characters, over {MAX_CODE_CHARS}")
    source = meta.get("prefix", "") + code
    try:
        source.encode()
    except UnicodeEncodeError as e:
        return Verdict(0.0, PROGRAM_REFUSED, f"not run: the program is not valid unicode ({e.reason})")
    fraction = meta.get("scoring", "all") == "fraction"
    if tests["type"] == "stdio":
        return _run_stdio(source, tests["cases"], fraction, limits)
    return _run_asserts(source, meta["entry_point"], tests, fraction, limits)


def _run_stdio(source, cases, fraction, limits) -> Verdict:
    passed, first_fail = 0, None
    for k, case in enumerate(cases):
        r = sandbox.run_python(source, case["input"], limits)
        failed = run_failure(r, limits)
        if failed is None and _lines(r.stdout) == _lines(case["output"]):
            passed += 1
            continue
        status, note = failed or (WRONG, "output differs")
        first_fail = first_fail or (status, f"case {k}: {status}: {note}; stderr tail {r.stderr[-200:]!r}")
        if not fraction:
            break
    return _verdict(passed, len(cases), fraction, first_fail)


def _run_asserts(source, entry, tests, fraction, limits) -> Verdict:
    snippets = [tests["program"]] if "program" in tests else list(tests["asserts"])
    token = secrets.token_hex(16)
    program = _HARNESS.format(token=token, entry=entry, tests=snippets, source=source)
    r = sandbox.run_python(program, "", limits)
    report = None
    failed = run_failure(r, limits)
    if failed is None:
        last = r.stdout.rstrip("\n").rsplit("\n", 1)[-1].split(" ")
        if (
            len(last) == 2
            and last[0] == token
            and len(last[1]) == len(snippets)
            and set(last[1]) <= {"0", "1"}
        ):
            report = last[1]
    if report is None:
        status, note = failed or (WRONG, "exited before the tests finished")
        return Verdict(0.0, status, f"{status}: {note}; stderr tail {r.stderr[-300:]!r}")
    passed = report.count("1")
    fail = None if passed == len(snippets) else (WRONG, f"passed {passed}/{len(snippets)} tests")
    return _verdict(passed, len(snippets), fraction, fail)


def _verdict(passed, total, fraction, first_fail) -> Verdict:
    if passed == total:
        return Verdict(1.0, OK, f"passed {total}/{total}")
    score = passed / total if fraction else 0.0
    status, note = first_fail
    return Verdict(score, status, note)
