"""Service behaviour against the real server: order under poison, determinism under concurrency,
unreachable servers, overload, registry rewards, weights; plus the pure text rewards."""

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from r1jax.reward import RewardClient, RewardRequestError, RewardServerUnavailable, start_local_server
from r1jax.reward.textrewards import countdown_answer, countdown_reward, format_reward, language_reward

FENCE = "```"
M = "|special_token|"  # the readable-format marker (r1jax.reward.mathcheck.R1_MARKER)


def math_item(ans: str, gold: str) -> dict:
    return {"completion": f"<think>ok</think> \\boxed{{{ans}}}", "task": "math", "answer": gold, "template": "chat"}


def code_item(program: str, cases) -> dict:
    return {
        "completion": f"</think>\n{FENCE}python\n{program}\n{FENCE}",
        "task": "code",
        "template": "chat",
        "meta": {"tests": {"type": "stdio", "cases": [{"input": i, "output": o} for i, o in cases]}},
    }


POISON = [
    code_item("while True:\n    pass", [("", "1")]),
    code_item("x = bytearray(8 * 1024 ** 3)", [("", "1")]),
    code_item("while True:\n    print('x' * 100000)", [("", "1")]),
    {"completion": "</think> \\boxed{(x^2+2x+1)^{400}}", "task": "math", "answer": "(x+1)^{800}", "template": "chat"},
    {"completion": "</think> \\boxed{" + "{" * 50_000, "task": "math", "answer": "1", "template": "chat"},
]


def good_items(n: int) -> list:
    items = []
    for k in range(n):
        if k % 3 == 0:
            items.append(math_item(f"\\frac{{{k}}}{{2}}", str(k / 2)))
        elif k % 3 == 1:
            items.append(math_item(str(k + 1), str(k)))  # wrong on purpose
        else:
            items.append(
                code_item("a, b = map(int, input().split())\nprint(a + b)", [(f"{k} 1", str(k + 1))])
            )
    return items


def expected_reward(k: int) -> float:
    return 0.0 if k % 3 == 1 else 1.0


def test_poisoned_batch_keeps_every_other_answer_in_order(client):
    good = good_items(12)
    items, where = [], []
    for k, it in enumerate(good):
        items.append(it)
        where.append(len(items) - 1)
        if k < len(POISON):
            items.append(POISON[k])
    b = client.score(items)
    assert len(b.status) == len(items)
    for k, idx in enumerate(where):
        assert b.rewards[idx] == expected_reward(k), (k, b.status[idx], b.details[idx])
        assert b.status[idx] == ("wrong" if k % 3 == 1 else "ok")
    poison_status = [s for i, s in enumerate(b.status) if i not in where]
    assert poison_status == ["timeout", "memory_limit", "output_limit", "timeout", "no_answer"]
    assert b.valid.all()


def test_identical_requests_identical_results_at_any_concurrency(client, server_url):
    items = good_items(9) + [math_item("\\sqrt{2}/2", "\\frac{1}{\\sqrt2}"), math_item("3 or 4", "3")]
    ref = client.score(items)
    many = RewardClient([server_url], batch_size=2, max_concurrency=6, timeout_s=120)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda c: c.score(items), [client, many, many, client]))
    for out in outs:
        assert out.status == ref.status
        np.testing.assert_array_equal(out.rewards, ref.rewards)
        assert out.details == ref.details


def test_unreachable_server_raises_clearly_not_hangs():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    c = RewardClient([f"http://127.0.0.1:{port}"], retries=2, backoff_s=0.01, timeout_s=10)
    with pytest.raises(RewardServerUnavailable, match="no reward server answered after 3 attempts"):
        c.score([math_item("1", "1")])
    masked = RewardClient([f"http://127.0.0.1:{port}"], retries=0, on_unavailable="mask").score(
        [math_item("1", "1")]
    )
    assert masked.status == ["infra_error"] and not masked.valid.any()


def test_bad_item_is_a_clear_error(client):
    with pytest.raises(RewardRequestError, match="item 1: field 'answer'"):
        client.score([math_item("1", "1"), {"completion": "x", "task": "math", "answer": 3, "template": "chat"}])


def test_template_is_required_not_guessed(client):
    """No default template: the layout decides the format reward and where answers are read, so a missing
    one is a 400 naming the field, never a silent format 0."""
    no_template = {k: v for k, v in math_item("4", "4").items() if k != "template"}
    missing = r"item 1: missing field 'template'; one of \('r1_zero', 'r1', 'chat', 'chat_boxed'\)"
    with pytest.raises(RewardRequestError, match=missing):
        client.score([math_item("4", "4"), no_template])
    with pytest.raises(RewardRequestError, match="item 0: field 'template' is None"):
        client.score([{**no_template, "template": None}])
    # the same <think> completion, declared: r1 reads the answer after </think> but scores the layout 0
    weights = {"accuracy": 1.0, "format": 1.0}
    item = {**math_item("4", "4"), "weights": weights}
    b = client.score([item, {**item, "template": "r1"}])
    np.testing.assert_array_equal(b.components["accuracy"], [1.0, 1.0])
    np.testing.assert_array_equal(b.components["format"], [1.0, 0.0])
    assert "r1 format violated: no |special_token| marker" in b.details[1]["details"]["format"]


def test_overload_answers_503_with_retry_after():
    slow = code_item("import time\ntime.sleep(1)\nprint(1)", [("", "1")])
    with start_local_server(workers=1, extra_args=("--max-queue", "2", "--wall-s", "4")) as url:
        c = RewardClient([url], retries=0)
        status, headers, body = c._request(
            url,
            "POST",
            "/score",
            b'{"items": [' + b",".join([__import__("json").dumps(slow).encode()] * 3) + b"]}",
            10,
        )
        assert status == 503 and headers.get("Retry-After") == "1", body
        # fill the queue from a thread, then a second request is refused; a patient client gets through
        t = threading.Thread(target=c.score, args=([slow, slow],))
        t.start()
        time.sleep(0.5)
        with pytest.raises(RewardServerUnavailable, match="HTTP 503"):
            c.score([slow])
        patient = RewardClient([url], retries=20, backoff_s=0.5)
        assert patient.score([slow]).status == ["ok"]
        t.join()


def test_registry_rewards_and_weighted_sum(client):
    items = [
        {
            "completion": f"{M} ok {M} \\boxed{{2}}",  # readable format: accuracy, format and short all 1
            "task": "math",
            "answer": "2",
            "template": "r1",
            "weights": {"accuracy": 2.0, "format": 0.5, "short": 0.25},
        },
        {
            "completion": "</think> \\boxed{3}" + " pad" * 20,
            "task": "math",
            "answer": "2",
            "template": "chat",
            "weights": {"accuracy": 1.0, "short": 1.0},
        },
        {"completion": "anything", "task": "none", "template": "chat", "weights": {"short": 1.0}},
        {"completion": "anything", "task": "none", "template": "chat", "weights": {"broken_user_reward": 1.0}},
    ]
    assert len(items[0]["completion"]) < 50  # so the "short" user reward gives it 1
    b = client.score(items)
    np.testing.assert_allclose(b.rewards, [2.0 + 0.5 + 0.25, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(b.components["short"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(b.components["format"], [1.0, 0.0, 0.0, 0.0])
    assert b.status == ["ok", "wrong", "ok", "infra_error"]  # a raising user reward is a grader error
    assert list(b.valid) == [True, True, True, False]
    assert "a bug in a user reward" in b.details[3]["details"]["broken_user_reward"]


def test_language_and_countdown_through_the_server(client):
    items = [
        {
            "completion": "Let us add the numbers. </think> <answer>(6-2)*25</answer>",
            "task": "countdown",
            "template": "r1_zero",
            "meta": {"numbers": [6, 2, 25], "target": 100, "language": "en"},
            "weights": {"accuracy": 1.0, "format": 1.0, "language": 1.0},
        },
        {
            "completion": "我们 先 计算 then add </think> \\boxed{2}",
            "task": "math",
            "answer": "2",
            "template": "chat",
            "meta": {"language": "zh"},
            "weights": {"accuracy": 1.0, "language": 1.0},
        },
    ]
    b = client.score(items)
    np.testing.assert_allclose(b.components["accuracy"], [1.0, 1.0])
    np.testing.assert_allclose(b.components["language"], [1.0, 5 / 7], rtol=1e-6)  # 5 Han chars, 2 words
    np.testing.assert_allclose(b.rewards, [3.0, 1 + 5 / 7], rtol=1e-6)


def test_health_and_metrics(client):
    h = client.health()
    assert h["ok"] and h["alive_workers"] == h["workers"] == 6  # 3 fast-lane + 3 code-lane workers
    assert h["sandbox"]["ok"] and h["sandbox"]["network"] is False
    m = client.metrics()
    assert set(m["counts"]) >= {"ok", "wrong", "timeout", "infra_error"}
    assert m["latency_s"]["p50"] is not None and m["queue_depth"] >= 0


def test_reward_package_never_imports_jax():
    code = (
        "import sys, r1jax.reward, r1jax.reward.server, r1jax.reward.pool, r1jax.reward.scoring\n"
        "assert not [m for m in sys.modules if m == 'jax' or m.startswith('jax.')], 'jax imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ pure text rewards (no server)


@pytest.mark.parametrize(
    "completion, template, ok",
    [
        (" reason </think> <answer> 4 </answer>", "r1_zero", True),  # continues the prompt's "<think>"
        ("<think> reason </think>\n<answer>4</answer>\n", "r1_zero", True),  # repeats "<think>"
        (" reason </think> <answer> 4 </answer> extra", "r1_zero", False),
        (" reason <answer> 4 </answer>", "r1_zero", False),
        (" reason </think> </think> <answer>4</answer>", "r1_zero", False),
        (" r </think> <answer>4</answer><answer>5</answer>", "r1_zero", False),
        ("<think><think> r </think> <answer>4</answer>", "r1_zero", False),
        (f"{M}\nreasoning\n{M}\n\nSo the answer is \\boxed{{4}}.", "r1", True),
        (f"  {M}reasoning{M}summary", "r1", True),  # leading whitespace allowed; no box needed for format
        (f"{M} reasoning {M}   ", "r1", False),  # no readable summary
        (f"{M} reasoning", "r1", False),  # the summary never started
        # the old readable layout (</think> then a summary) is not the r1 format any more; chat takes it
        ("<think>\nreasoning\n</think>\n\nSo the answer is \\boxed{4}.", "r1", False),
        ("reasoning\n</think>\nsummary", "r1", False),
        ("<think>\nreasoning\n</think>\n\nSo the answer is \\boxed{4}.", "chat", True),
        ("reasoning </think>   ", "r1", False),
        ("no think block at all", "r1", False),
        ("anything", "chat", True),
        ("   ", "chat", False),
    ],
)
def test_format_reward(completion, template, ok):
    assert format_reward(completion, template).score == float(ok)


def test_language_reward_counts_words_of_the_reasoning_only():
    assert language_reward("one two three </think> 四 五", "en").score == 1.0
    assert language_reward("one 二 </think> x", "zh").score == 0.5
    assert language_reward("\\frac{1}{2} 123 </think>", "en").status == "no_answer"


@pytest.mark.parametrize(
    "expr, meta, score",
    [
        ("(6-2)*25", {}, 1.0),
        ("25*(6-2)", {}, 1.0),
        ("6*25-2", {}, 0.0),
        ("(6-2)*25*1", {}, 0.0),
        ("100", {}, 0.0),
        ("(25-6)*2", {"use_all": True}, 0.0),
        ("25*4", {"use_all": False}, 0.0),
        ("25*2*2", {"use_all": False}, 0.0),
        ("__import__('os')", {}, 0.0),
        ("(6-2)*25 = 100", {}, 1.0),
    ],
)
def test_countdown_rule(expr, meta, score):
    m = {"numbers": [6, 2, 25], "target": 100, **meta}
    assert countdown_reward(f"{M} try it {M} So \\boxed{{{expr}}}", m, "r1").score == score
    assert countdown_reward(f"</think> \\boxed{{{expr}}}", m, "chat").score == score
    assert countdown_reward(f"t </think> <answer>{expr}</answer>", m, "r1_zero").score == score


@pytest.mark.parametrize(
    "completion, template, answer",
    [
        (f"{M} maybe \\boxed{{6*25-2}} {M} So \\boxed{{(6-2)*25 = 100}}", "r1", "(6-2)*25"),
        (f"{M} surely \\boxed{{(6-2)*25}} {M} I give up.", "r1", None),  # a box in the reasoning never counts
        (f"{M} still thinking \\boxed{{(6-2)*25}}", "r1", None),  # the summary never started
        (f"{M} r {M} \\boxed{{= 100}}", "r1", None),  # blank expression
        ("<think> \\boxed{(6-2)*25} </think> nothing", "chat", None),
        ("<think> open \\boxed{(6-2)*25}", "chat", None),
        ("</think> \\boxed{1+2} then \\boxed{ (6-2)*25 }", "chat", "(6-2)*25"),  # the last box
        ("r </think> <answer> (6-2)*25 </answer>", "r1_zero", "(6-2)*25"),  # the whole block, no box needed
        ("r </think> <answer>1</answer> <answer>25*(6-2) = 100</answer>", "r1_zero", "25*(6-2)"),  # the last block
        ("r </think> (6-2)*25", "r1_zero", None),
    ],
)
def test_countdown_answer_is_what_the_reward_grades(completion, template, answer):
    assert countdown_answer(completion, template) == answer
    verdict = countdown_reward(completion, {"numbers": [6, 2, 25], "target": 100, "use_all": False}, template)
    if answer is None:
        assert verdict.status == "no_answer" and verdict.score == 0.0
    else:
        assert verdict.detail.startswith(f"{answer} = ")


def test_countdown_answer_through_the_server_matches_the_function(client):
    """/score reports countdown_answer (equivalence.final_answer uses it), not a second extraction."""
    meta = {"numbers": [6, 2, 25], "target": 100}
    cases = [
        (f"{M} surely \\boxed{{(6-2)*25}} {M} So \\boxed{{25*(6-2) = 100}}", "r1"),
        (f"{M} surely \\boxed{{(6-2)*25}} {M} no box", "r1"),
        ("r </think> <answer>(6-2)*25</answer>", "r1_zero"),
    ]
    b = client.score([{"completion": c, "task": "countdown", "template": t, "meta": meta} for c, t in cases])
    assert b.answers == [countdown_answer(c, t) for c, t in cases] == ["25*(6-2)", None, "(6-2)*25"]
    assert b.status == ["ok", "no_answer", "ok"]
