"""The tiny base model's corpus: correct worked solutions, the slip and template rates asked for,
no RL prompt leaked into it, and document packing."""

import ast
import operator

import pytest

from r1jax.data import TaskSpec, load_splits, procedural
from r1jax.data.base_corpus import CorpusConfig, generate_corpus, worked_solution

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _reference(expr: str) -> int:
    """Independent evaluator: Python's own grammar for precedence, only + - * on integers."""

    def ev(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # "-8 + 3" in a step
            return -ev(node.operand)
        raise ValueError(node)

    return ev(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_worked_solution_matches_reference_and_each_step_is_right(difficulty):
    cfg = procedural.ProceduralConfig("arithmetic", 200, difficulty)
    for i in range(200):
        ex = procedural.generate(cfg, i)
        text, answer = worked_solution(ex["meta"]["expression"])
        assert answer == _reference(ex["meta"]["expression"]) == int(ex["answer"])
        for step in text.split(". "):
            lhs, rhs = step.rstrip(".").split(" = ")
            assert _reference(lhs) == int(rhs), (ex["meta"]["expression"], step)


def test_slip_is_carried_into_later_steps():
    text, answer = worked_solution("9 - 2 * 3 + 4", slip_at=1, slip=-1)
    assert text == "2 * 3 = 6. 9 - 6 = 2. 2 + 4 = 6."
    assert answer == 6 != _reference("9 - 2 * 3 + 4")


def test_corpus_excludes_rl_questions_and_has_the_asked_rates():
    train, eval_, _ = load_splits(TaskSpec("arithmetic", n_train=300, n_eval=64, difficulty=2))
    exclude = [e["question"] for e in train + eval_]
    cfg = CorpusConfig(n_docs=3000, template_rate=0.3, error_rate=0.35, instruction_rate=0.2)
    docs = generate_corpus(cfg, exclude)
    assert len(docs) == 3000
    assert docs == generate_corpus(cfg, exclude), "the corpus must be a pure function of its seed"
    for q in exclude:
        assert not any(f"User: {q}" in d or d.startswith(f"Question: {q}\n") for d in docs)
    r1_prompt = [d for d in docs if "Assistant:" in d and "Calculate" in d.split("User:")[-1]]
    tagged = [d for d in r1_prompt if d.rstrip().endswith("</answer>") and "<think>" in d.split("Assistant:")[-1]]
    assert 0.2 < len(tagged) / len(r1_prompt) < 0.4
    # error rate: answers of full-format documents against the reference
    wrong = 0
    for d in tagged:
        expr = d.split("User: Calculate ")[1].split(". Assistant:")[0].rstrip(".")
        answer = int(d.rsplit("<answer>", 1)[1].split("</answer>")[0])
        wrong += answer != _reference(expr)
    assert 0.2 < wrong / len(tagged) < 0.5
