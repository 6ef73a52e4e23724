"""Every generated ground truth scores 1.0 with the real reward server's verifiers, and a corrupted
answer scores 0 (docs/contracts.md § Reward), for each procedural task and difficulty and for the
bundled GSM8K problems and the reasoning-gym adapter."""

import fractions

import pytest

from r1jax.data import procedural, readers, sources, templates

reward = pytest.importorskip("r1jax.reward", reason="r1jax.reward not available yet")

N = 12  # per task and difficulty


@pytest.fixture(scope="module")
def client():
    with reward.start_local_server(workers=2) as url:
        yield reward.RewardClient([url], timeout_s=120)


def _examples():
    out = []
    for task in procedural.TASKS:
        for difficulty in (1, 2, 4):
            cfg = procedural.ProceduralConfig(task, N, difficulty=difficulty)
            out += [procedural.generate(cfg, i) for i in range(N)]
    for name in sources.RG_TASKS:  # reasoning-gym items, graded 0/1 by our verifiers
        out += sources.reasoning_gym_examples(name, 6, seed=0)
    return out + readers.gsm8k_test100()[:20]


def _solution(ex) -> str:
    """What a correct model would write as its answer."""
    return ex["meta"]["solution"] if ex["task"] == "countdown" else ex["answer"]


def _corrupt(ex) -> str:
    if ex["task"] == "countdown":
        return f"{ex['meta']['solution']} + 1"  # off by one, and 1 is not an unused number
    try:
        gold = fractions.Fraction(ex["answer"])
    except ValueError:  # LaTeX answers (reasoning-gym's fraction_simplification: $\\dfrac{a}{b}$)
        return "9999991"
    # Off by one; for large answers off by a factor (an off-by-one there is the known verifier
    # tolerance issue pinned in test_large_integer_off_by_one_is_wrong).
    return str(gold + 1 if abs(gold) < 10**5 else 2 * gold + 1)


def _completion(template: str, answer: str) -> str:
    if template == "r1_zero":
        return templates.format_r1_zero_response("I work it out step by step.", answer)
    if template == "r1":
        return templates.format_r1_response("I work it out.", f"The result is \\boxed{{{answer}}}.")
    return f"I work it out step by step. The answer is \\boxed{{{answer}}}."


@pytest.mark.parametrize("template", ["r1_zero", "r1", "chatml"])
def test_ground_truth_scores_one_and_corruption_zero(client, template):
    examples = _examples()
    items = []
    for ex in examples:
        for answer in (_solution(ex), _corrupt(ex)):
            items.append({
                "completion": _completion(template, answer), "task": ex["task"], "answer": ex["answer"],
                "meta": ex["meta"], "template": templates.REWARD_FORMAT[template],
                "weights": {"accuracy": 1.0},
            })
    result = client.score(items)
    assert result.valid.all(), [s for s in result.status if s != "ok"]
    for k, ex in enumerate(examples):
        right, wrong = 2 * k, 2 * k + 1
        assert result.rewards[right] == 1.0, (ex["id"], items[right]["completion"], result.details[right])
        assert result.rewards[wrong] == 0.0, (ex["id"], items[wrong]["completion"], result.details[wrong])


def test_large_integer_off_by_one_is_wrong(client):
    item = {"completion": templates.format_r1_zero_response("sum", "106475279602"), "task": "math",
            "answer": "106475279601", "meta": {}, "template": "r1_zero", "weights": {"accuracy": 1.0}}
    assert client.score([item]).rewards[0] == 0.0
