"""The "chat_boxed" reward format: a chat prompt that instructs "put your final answer within \\boxed{}" is
graded on that instruction (one boxed final answer after any </think>), while "chat" stays format-free."""

import pytest

from r1jax.data.templates import BOXED_INSTRUCTION, REWARD_FORMAT, render_prompt
from r1jax.reward import sandbox
from r1jax.reward.mathcheck import split_completion, verify_math
from r1jax.reward.scoring import check_item, score_item
from r1jax.reward.textrewards import format_reward
from r1jax.reward.types import TEMPLATES


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("3 + 4 = 7. The answer is \\boxed{7}.", True),
        ("<think>\n3 + 4 = 7\n</think>\n\n\\boxed{7}", True),
        ("\\boxed{7}. Checking: 3 + 4 = 7, so \\boxed{ 7 }", True),  # the same answer twice is one answer
        ("\\boxed{\\frac{1}{2}}", True),  # nested braces belong to the box
        ("\\boxed{\\{1, 2\\}}", True),
        ("\\fbox{7}", True),  # \fbox is read like \boxed everywhere
        ("The answer is 7.", False),  # no box: the instructed format is missing
        ("", False),
        ("   ", False),
        ("\\boxed{}", False),  # empty box
        ("\\boxed{   }", False),
        ("\\boxed{7} \\boxed{}", False),  # an empty box beside an answer
        ("\\boxed{7} or \\boxed{8}", False),  # two different boxes: hedging
        ("<think> maybe \\boxed{7} </think> The answer is 7.", False),  # box only inside the reasoning
        ("<think> \\boxed{7}", False),  # a <think> never closed: no final region
        ("<think> \\boxed{8} </think> \\boxed{7}", True),  # a box in the reasoning does not count against
        ("\\boxed{7", False),  # never closed
        ("\\boxed{\\frac{1}{2}", False),  # the outer box never closes
    ],
)
def test_chat_boxed_format_reward(completion, ok):
    verdict = format_reward(completion, "chat_boxed")
    assert verdict.score == float(ok), verdict.detail


@pytest.mark.parametrize("completion", ["The answer is 7.", "\\boxed{}", "\\boxed{7} or \\boxed{8}"])
def test_chat_keeps_its_meaning(completion):
    """"chat" (a chat prompt with no instructed format) still scores any non-empty completion 1."""
    assert format_reward(completion, "chat").score == 1.0


def test_chat_boxed_reads_regions_like_chat():
    for text in ("a </think> \\boxed{7}", "plain \\boxed{7}", "<think> open", "x </think> y </think> \\boxed{1}"):
        chat, boxed = split_completion(text, "chat"), split_completion(text, "chat_boxed")
        assert (chat.reasoning, chat.final) == (boxed.reasoning, boxed.final)
    # accuracy is the same under both formats
    for text in ("\\boxed{7}", "<think>\\boxed{7}</think> 7", "\\boxed{7} or \\boxed{8}", "\\boxed{}"):
        assert verify_math(text, "7", "chat").score == verify_math(text, "7", "chat_boxed").score


def test_format_and_accuracy_are_separate_signals():
    """The point of the rule: unboxed right answers, boxed wrong answers and boxed right answers score
    differently, so a group of samples rarely ties (R1-Zero's reward: accuracy + format)."""
    weights = {"accuracy": 1.0, "format": 0.5}

    def reward(text):
        item = check_item({"completion": text, "task": "math", "answer": "7", "template": "chat_boxed",
                           "weights": weights}, 0)
        return score_item(item, sandbox.Limits())["reward"]

    assert reward("It is 7.") == 0.0
    assert reward("\\boxed{8}") == 0.5
    assert reward("\\boxed{7}") == 1.5
    assert reward("\\boxed{7} or \\boxed{8}") == 0.0


def test_chatml_boxed_prompt_template():
    assert "chat_boxed" in TEMPLATES and REWARD_FORMAT["chatml_boxed"] == "chat_boxed"
    prompt = render_prompt("chatml_boxed", "Calculate 3 + 4.")
    assert prompt == render_prompt("chatml", f"Calculate 3 + 4. {BOXED_INSTRUCTION}")
    assert BOXED_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


def test_chatml_boxed_1shot_prompt_template():
    """One worked exchange, then the question as chatml_boxed renders it; graded as chat_boxed."""
    assert REWARD_FORMAT["chatml_boxed_1shot"] == "chat_boxed"
    prompt = render_prompt("chatml_boxed_1shot", "Calculate 3 + 4.")
    demo, question = prompt.split("<|im_end|>\n<|im_start|>user\n", 1)
    assert prompt.endswith(render_prompt("chatml_boxed", "Calculate 3 + 4."))
    assert demo.count("<|im_start|>") == 2 and demo.endswith("The final answer is \\boxed{17}.")
    assert format_reward(demo.rsplit("assistant\n", 1)[1], "chat_boxed").score == 1.0  # the demo is well formed
    assert question.startswith("Calculate 3 + 4. " + BOXED_INSTRUCTION)
