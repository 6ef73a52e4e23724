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
from r1jax.reward.textrewards import countdown_reward, format_reward, language_reward

FENCE = "```"


def math_item(ans: str, gold: str) -> dict:
    return {"completion": f"<think>ok</think> \\boxed{{{ans}}}", "task": "math", "answer": gold}


def code_item(program: str, cases) -> dict:
    return {
        "completion": f"</think>\n{FENCE}python\n{program}\n{FENCE}",
        "task": "code",
        "meta": {"tests": {"type": "stdio", "cases": [{"input": i, "output": o} for i, o in cases]}},
    }


POISON = [
    code_item("while True:\n    pass", [("", "1")]),
    code_item("x = bytearray(8 * 1024 ** 3)", [("", "1")]),
    code_item("while True:\n    print('x' * 100000)", [("", "1")]),
    {"completion": "</think> \\boxed{(x^2+2x+1)^{400}}", "task": "math", "answer": "(x+1)^{800}"},
    {"completion": "</think> \\boxed{" + "{" * 50_000, "task": "math", "answer": "1"},
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
    assert poison_status == ["timeout", "resource_limit", "resource_limit", "timeout", "no_answer"]
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
        client.score([math_item("1", "1"), {"completion": "x", "task": "math", "answer": 3}])


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
            "completion": "ok </think> \\boxed{2}",
            "task": "math",
            "answer": "2",
            "weights": {"accuracy": 2.0, "format": 0.5, "short": 0.25},
        },
        {
            "completion": "</think> \\boxed{3}" + " pad" * 20,
            "task": "math",
            "answer": "2",
            "weights": {"accuracy": 1.0, "short": 1.0},
        },
        {"completion": "anything", "task": "none", "weights": {"short": 1.0}},
        {"completion": "anything", "task": "none", "weights": {"broken_user_reward": 1.0}},
    ]
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
    assert h["ok"] and h["alive_workers"] == h["workers"] == 3
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
        ("<think>\nreasoning\n</think>\n\nSo the answer is \\boxed{4}.", "r1", True),
        ("reasoning\n</think>\nsummary", "r1", True),
        ("reasoning </think>   ", "r1", False),  # no readable summary
        ("no think block at all", "r1", False),
        ("anything", "chat", True),
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
    assert countdown_reward(f"</think> \\boxed{{{expr}}}", m, "r1").score == score
