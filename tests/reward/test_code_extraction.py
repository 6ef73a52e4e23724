"""Where the program of a code completion is read: the final region of `split_completion`, like math and
countdown answers. Code written only in the reasoning never counts; code in the summary (r1), in the
<answer> block (r1_zero) or after the last </think> (chat) is graded. Pure extraction, then through the
real server (sandboxed runs)."""

import pytest

from r1jax.reward.codecheck import extract_code
from r1jax.reward.mathcheck import R1_MARKER as M
from r1jax.reward.types import ItemError

FENCE = "```"
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"
BAD = "print(0)\n"
CASES = [{"input": "2 3", "output": "5"}, {"input": "10 -4", "output": "6"}]


def block(program: str) -> str:
    return f"{FENCE}python\n{program}{FENCE}"


@pytest.mark.parametrize(
    "completion, template, expected",
    [
        # r1 (readable format): only the summary after the second marker is read
        (f"{M} Draft:\n{block(GOOD)}\nThat should do. {M} The sum of the two numbers.", "r1", None),
        (f"{M} Read two ints and add them. {M} Solution:\n{block(GOOD)}", "r1", GOOD),
        (f"{M} Draft:\n{block(GOOD)} {M} Final:\n{block(BAD)}", "r1", BAD),  # the summary's block, not the draft
        (f"{M} Draft:\n{block(GOOD)}", "r1", None),  # the summary never started
        (f"{M} a {M} {block(BAD)} then {block(GOOD)}", "r1", GOOD),  # the last block of the summary
        (f"<think>plan</think>\n{block(GOOD)}", "r1", GOOD),  # no marker: read like chat (format reward says 0)
        # r1_zero: only the last <answer> block
        (f"plan {block(GOOD)} </think> <answer>I would print the sum.</answer>", "r1_zero", None),
        (f"plan </think> <answer>\n{block(GOOD)}</answer>", "r1_zero", GOOD),
        (f"plan </think>\n{block(GOOD)}", "r1_zero", None),  # no answer block at all
        # chat: only after the last </think>; an open <think> has no final part
        (f"<think>{block(GOOD)}</think> done", "chat", None),
        (f"<think>{block(GOOD)}", "chat", None),
        (f"<think>plan</think>\n{block(GOOD)}", "chat", GOOD),
        (block(GOOD), "chat", GOOD),
    ],
)
def test_extract_code_reads_only_the_final_region(completion, template, expected):
    assert extract_code(completion, template) == expected


def test_unknown_template_is_an_error_naming_the_field():
    with pytest.raises(ItemError, match="field 'template' is 'r2'"):
        extract_code(block(GOOD), "r2")


def code_item(completion: str, template: str) -> dict:
    return {"completion": completion, "task": "code", "template": template,
            "meta": {"tests": {"type": "stdio", "cases": CASES}}}


def test_code_in_the_reasoning_is_not_graded_through_the_server(client):
    items = [
        code_item(f"{M} Draft:\n{block(GOOD)} {M} It adds the two numbers.", "r1"),  # reasoning only
        code_item(f"{M} Read two ints and add them. {M} Solution:\n{block(GOOD)}", "r1"),  # summary
        code_item(f"{M} Draft:\n{block(GOOD)} {M} Final:\n{block(BAD)}", "r1"),  # the summary's wrong one
        code_item(f"plan {block(GOOD)} </think> <answer>the sum</answer>", "r1_zero"),
        code_item(f"plan </think> <answer>\n{block(GOOD)}</answer>", "r1_zero"),
        code_item(f"<think>{block(GOOD)}</think> see above", "chat"),
        code_item(f"<think>plan</think>\n{block(GOOD)}", "chat"),
    ]
    b = client.score(items)
    assert b.status == ["no_answer", "ok", "wrong", "no_answer", "ok", "no_answer", "ok"], b.details
    assert list(b.rewards) == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert b.valid.all()
    assert b.details[0]["details"]["accuracy"] == "no ```python``` block in the summary"
    assert b.details[3]["details"]["accuracy"] == "no ```python``` block in the <answer> block"
    assert b.details[5]["details"]["accuracy"] == "no ```python``` block after the reasoning"
