"""The rejection-sampling stage's last step: kept samples become SFT rows, and with rewrite="readable"
correct R1-Zero outputs become the readable cold-start format (skips counted by reason)."""

from r1jax.reward.mathcheck import extract_answer, split_completion
from r1jax.stages.sample import sft_examples


def _sample(i, completion, answer="66"):
    return {"prompt_id": f"p{i}", "sample": 0, "question": "Calculate 3 + 7 * 9.", "answer": answer,
            "task": "math", "meta": {"generator": "arithmetic"}, "template": "r1_zero", "completion": completion,
            "reward": 1.5, "status": "ok", "correct": True}


KEPT = [
    _sample(0, " 7 * 9 = 63. 3 + 63 = 66. </think> <answer> 66 </answer>"),
    _sample(1, "<think> 7 * 9 = 63.  7 * 9 = 63. 3 + 63 = 66. </think> <answer> 66 </answer>"),
    _sample(2, "the answer is 66"),  # not the R1-Zero layout: cannot be rewritten
]


def test_samples_become_sft_rows_as_they_are():
    rows, skipped = sft_examples(KEPT, "", "scored.jsonl")
    assert skipped == {} and [r["response"] for r in rows] == [s["completion"] for s in KEPT]
    assert rows[0]["id"] == "p0-s0" and rows[0]["meta"]["reward"] == 1.5


def test_readable_rewrite_keeps_the_answer_and_counts_skips():
    rows, skipped = sft_examples(KEPT, "readable", "scored.jsonl")
    assert skipped == {"not_r1_zero": 1} and len(rows) == 2
    for row in rows:
        parts = split_completion(row["response"], "r1")
        assert parts.well_formed, row["response"]
        assert extract_answer(row["response"], "r1")[0] == "66"
    assert rows[1]["response"].count("7 * 9 = 63.") == 1  # the repeated sentence is dropped
    assert rows[0]["meta"]["source"] == "scored.jsonl:0"
