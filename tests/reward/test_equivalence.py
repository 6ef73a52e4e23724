"""Extracted answers on /score and equivalence classes on /equivalence, through the real server process
(tests/reward/conftest.py: 3 workers, math deadline 4 s)."""

import json
import subprocess
import sys
import time

import pytest

from r1jax.reward import RewardClient, RewardRequestError
from r1jax.reward.equivalence import MAX_REP_FAILURES, assign_classes, compare_answers
from r1jax.reward.types import OK, TIMEOUT

MATH_DEADLINE_S = 4.0  # conftest.SERVER_ARGS
FENCE = "```"


def post(client: RewardClient, payload, path: str = "/equivalence"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, data = client._request(client.urls[0], "POST", path, body, 120)
    return status, json.loads(data)


def test_equivalent_answers_share_a_class(client):
    classes = client.equivalence_classes([["1/2", "0.5", "\\frac{1}{2}", "2/4", "0.25", None]])
    assert classes == [[0, 0, 0, 0, 1, -1]]


def test_identical_strings_blank_and_empty_groups(client):
    status, body = post(client, {"groups": [["3", " 3 ", "3", "", "  ", None, "x = 3"], [], [None, None]]})
    assert status == 200, body
    assert body["classes"] == [[0, 0, 0, -1, -1, -1, 0], [], [-1, -1]]
    # "3" (x2 identical after whitespace) and blanks need no worker: only "x = 3" vs "3" was compared
    assert body["comparisons"] == 1 and body["failed_comparisons"] == 0


def test_comparisons_only_against_representatives(client):
    answers = [str(n) for n in range(8)]  # 8 different classes: 0 + 1 + ... + 7 comparisons
    status, body = post(client, {"groups": [answers]})
    assert body["classes"] == [list(range(8))]
    assert body["comparisons"] == 8 * 7 // 2
    status, body = post(client, {"groups": [["1/2", "0.5", "2/4", "3/6", "4/8"]]})
    assert body["classes"] == [[0, 0, 0, 0, 0]] and body["comparisons"] == 4  # each only against "1/2"


def test_power_tower_is_its_own_class_quickly(client):
    t0 = time.monotonic()
    classes = client.equivalence_classes([["9^9^9^9", "1", "9^9^9^9", "1.0", "9^{9^{9^9}}"]])
    assert classes == [[0, 1, 0, 1, 2]]
    assert time.monotonic() - t0 < MATH_DEADLINE_S  # refused by the parser's magnitude screen, not by a kill


def test_hanging_comparison_times_out_into_its_own_class(client):
    before = client.metrics()["comparisons"][TIMEOUT]
    group = ["(x^2+2x+1)^{400}", "(x+1)^{800}", "1/2", "(x+1)^{800}", "0.5"]
    t0 = time.monotonic()
    status, body = post(client, {"groups": [group, ["1/2", "0.5"]]})
    elapsed = time.monotonic() - t0
    assert status == 200, body
    # (x+1)^800 vs the expanded form: simplify() runs past the deadline, the worker is killed, and the
    # answer opens its own class; its identical copy joins it without a comparison
    assert body["classes"] == [[0, 1, 2, 1, 2], [0, 0]]
    assert body["failed_comparisons"] == 1
    assert elapsed < 3 * MATH_DEADLINE_S, elapsed
    assert client.metrics()["comparisons"][TIMEOUT] == before + 1
    for _ in range(100):  # the killed worker is respawned right after its verdict was handed back
        if client.metrics()["alive_workers"] == client.metrics()["workers"]:
            break
        time.sleep(0.1)
    assert client.metrics()["alive_workers"] == client.metrics()["workers"]


def test_many_groups_split_over_requests_give_the_same_classes(server_url, client):
    groups = [["1/2", "0.5", str(g), None, f"{g}.0"] for g in range(40)]
    one = client.equivalence_classes(groups)
    small = RewardClient([server_url], batch_size=7, max_concurrency=4, timeout_s=120)
    assert small.equivalence_classes(groups) == one
    assert one[3] == [0, 0, 1, -1, 1] and one[0] == [0, 0, 1, -1, 1]
    assert client.equivalence_classes([]) == []


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"groups": [["1", 2]]}, "groups[0][1]: expected a string or null, got int"),
        ({"groups": [["1"], "2"]}, "groups[1]: expected a list of answers"),
        ({"groups": "x"}, "field 'groups' must be a list"),
        ({"answers": [["1"]]}, "unknown field(s) ['answers']"),
        ([["1"]], "JSON object with a list field 'groups'"),
        ({"groups": [["1"] * 1025]}, "groups[0]: 1025 answers exceed the per-group limit 1024"),
        (b"{not json", "Expecting property name"),
    ],
)
def test_malformed_equivalence_request_is_refused_naming_the_field(client, payload, words):
    status, body = post(client, payload)
    assert status == 400 and words in body["error"], body


def test_client_raises_request_error_naming_the_field(client):
    with pytest.raises(RewardRequestError, match=r"groups\[0\]\[2\]"):
        client.equivalence_classes([["1", None, 3.5]])


def test_score_reports_the_extracted_answer(client):
    chat = {"template": "chat"}
    items = [
        {"completion": "<think>r</think> so \\boxed{\\frac{1}{2}}", "task": "math", "answer": "0.5", **chat},
        {"completion": "r </think> <answer> \\boxed{7} </answer>", "task": "math", "answer": "7",
         "template": "r1_zero"},
        {"completion": "r </think> <answer>x = 4</answer>", "task": "math", "answer": "4", "template": "r1_zero"},
        {"completion": "</think> \\boxed{1} or \\boxed{2}", "task": "math", "answer": "1", **chat},  # hedge: no answer
        {"completion": "<think> still thinking \\boxed{3}", "task": "math", "answer": "3", **chat},  # open think
        {"completion": "</think> \\boxed{(1+2)*3 = 9}", "task": "countdown", **chat,
         "meta": {"numbers": [1, 2, 3], "target": 9}},
        {"completion": f"</think>\n{FENCE}python\nprint(2)\n{FENCE}", "task": "code", **chat,
         "meta": {"tests": {"type": "stdio", "cases": [{"input": "", "output": "2"}]}}},
        {"completion": "</think> \\boxed{(x+1)^{800}}", "task": "math", "answer": "(x^2+2x+1)^{400}",  # timeout
         **chat},
    ]
    b = client.score(items)
    assert b.status == ["ok", "ok", "ok", "wrong", "no_answer", "ok", "ok", "timeout"]
    assert b.answers == ["\\frac{1}{2}", "7", "x = 4", None, None, "(1+2)*3", None, None]


def test_masked_batch_has_no_answers():
    masked = RewardClient(["http://127.0.0.1:9"], retries=0, on_unavailable="mask").score(
        [{"completion": "\\boxed{1}", "task": "math", "answer": "1", "template": "chat"}]
    )
    assert masked.answers == [None] and not masked.valid.any()


def test_failed_comparisons_close_the_answer_and_eventually_the_representative():
    """The class policy after timeouts (assign_classes), with real comparisons except for the pairs listed
    as timed out (the server test above shows a real timeout; this pins down the bookkeeping)."""
    timing_out = {("A", "R"), ("B", "R"), ("C", "R")}
    seen = []

    def compare_many(pairs):
        seen.extend(pairs)
        return [{"equal": False, "status": TIMEOUT} if p in timing_out else compare_answers(*p) for p in pairs]

    outcome = assign_classes([["R", "A", "B", "C", "A", "R", "1/2", "0.5"]], compare_many)
    # A and B time out against R -> own classes, never compared again; after MAX_REP_FAILURES (2) failures
    # R is closed, so C is not compared with it; identical strings still join their classes
    assert MAX_REP_FAILURES == 2
    assert outcome.classes == [[0, 1, 2, 3, 1, 0, 4, 4]]
    assert ("C", "R") not in seen and not any(p[1] in ("A", "B") for p in seen)
    assert outcome.failed == 2
    assert compare_answers("1/2", "0.5") == {"equal": True, "status": OK, "detail": "sympy"}


def test_equivalence_module_never_imports_jax():
    code = (
        "import sys, r1jax.reward.equivalence, r1jax.reward.server, r1jax.reward.client\n"
        "assert not [m for m in sys.modules if m == 'jax' or m.startswith('jax.')], 'jax imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
