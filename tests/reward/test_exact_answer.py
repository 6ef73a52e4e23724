"""Task "exact": the final answer (the boxed answer of the final part, read as for math) compared to the
gold string after collapsing whitespace; graded through the same item path as every reward."""

import pytest

from r1jax.reward.scoring import check_item, score_item
from r1jax.reward.types import ItemError

R1 = " |special_token| The task is: reverse the words a b c. |special_token| So the answer is \\boxed{%s}."


def _score(completion, answer="c b a", template="r1", weights=None):
    item = check_item({"completion": completion, "task": "exact", "answer": answer, "template": template,
                       "weights": weights or {"accuracy": 1.0}}, 0)
    return score_item(item, None)


@pytest.mark.parametrize("boxed, want", [
    ("c b a", 1.0), ("c  b   a", 1.0), ("c b a.", 1.0), (" c b a ", 1.0),
    ("a b c", 0.0), ("c b", 0.0), ("C B A", 0.0), ("c b a a", 0.0),
])
def test_exact_text_answers(boxed, want):
    out = _score(R1 % boxed)
    assert out["components"]["accuracy"] == want and out["status"] == ("ok" if want else "wrong")


def test_no_answer_and_hedges_are_not_rewarded():
    assert _score(" |special_token| thinking |special_token| I do not know.")["status"] == "no_answer"
    hedge = " |special_token| x |special_token| \\boxed{c b a} or \\boxed{a b c}"
    assert _score(hedge)["components"]["accuracy"] == 0.0
    # the answer is read from the summary only: a boxed reply in the reasoning does not count
    assert _score(" |special_token| \\boxed{c b a} |special_token| done")["status"] == "no_answer"


def test_weighted_with_the_other_rules_and_answer_required():
    out = _score(R1 % "c b a", weights={"accuracy": 0.0, "format": 0.5})
    assert out["components"] == {"accuracy": 1.0, "format": 1.0} and out["reward"] == 0.5
    with pytest.raises(ItemError, match="task 'exact' with an accuracy weight needs field 'answer'"):
        check_item({"completion": "x", "task": "exact", "template": "r1", "weights": {"accuracy": 1.0}}, 0)
