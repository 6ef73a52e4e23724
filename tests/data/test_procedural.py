"""Procedural tasks: ground truth checked by independent means (sympy, exact rationals over a parsed
expression), determinism, difficulty, and held-out eval streams."""

import ast
import fractions
import re

import pytest
import sympy

from r1jax.data import procedural, splits
from r1jax.data.procedural import ProceduralConfig, ProceduralSource

N = 40


def _source(task, difficulty, split="train", seed=0):
    return ProceduralSource(ProceduralConfig(task, N, difficulty=difficulty, seed=seed, split=split))


def _eval_exact(expr: str) -> fractions.Fraction:
    """Exact value of + - * / over integers, walking the parsed tree (no eval of strings)."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return fractions.Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b,
                    ast.Div: a / b if b else None}[type(node.op)]
        raise ValueError(ast.dump(node))
    return walk(ast.parse(expr, mode="eval"))


def _numbers_in(expr: str) -> list[int]:
    return sorted(int(n) for n in re.findall(r"\d+", expr))


@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_arithmetic_answers(difficulty):
    for ex in _source("arithmetic", difficulty):
        expr = ex["meta"]["expression"]
        assert ex["question"] == f"Calculate {expr}." and ex["task"] == "math"
        assert sympy.sympify(expr) == sympy.Integer(ex["answer"])
        assert len(re.findall(r"\d+", expr)) == difficulty + 1


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_countdown_solution_exists(difficulty):
    for ex in _source("countdown", difficulty):
        meta = ex["meta"]
        assert ex["task"] == "countdown" and len(meta["numbers"]) == difficulty + 2
        assert int(ex["answer"]) == meta["target"] and str(meta["target"]) in ex["question"]
        # Each number used exactly once; the expression reaches the target exactly.
        assert _numbers_in(meta["solution"]) == sorted(meta["numbers"])
        assert _eval_exact(meta["solution"]) == meta["target"]


@pytest.mark.parametrize("difficulty", [1, 3])
def test_linear_solution(difficulty):
    x = sympy.Symbol("x")
    for ex in _source("linear", difficulty):
        lhs, rhs = ex["meta"]["equation"].split(" = ")
        parse = lambda s: sympy.sympify(re.sub(r"(\d)x", r"\1*x", s))
        assert sympy.solve(sympy.Eq(parse(lhs), parse(rhs)), x) == [sympy.Integer(ex["answer"])]


@pytest.mark.parametrize("difficulty", [1, 3])
def test_fraction_answers(difficulty):
    for ex in _source("fractions", difficulty):
        value = sympy.sympify(ex["meta"]["expression"])  # sympy: int/int is an exact Rational
        assert value == sympy.Rational(ex["answer"])
        assert sympy.Rational(ex["answer"]) == fractions.Fraction(ex["answer"])  # lowest terms


def test_deterministic_random_access_and_seeds():
    a, b = _source("countdown", 2), _source("countdown", 2)
    assert [a[i] for i in (5, 0, 17)] == [b[i] for i in (5, 0, 17)]
    assert a[3] != _source("countdown", 2, seed=1)[3]
    with pytest.raises(IndexError):
        a[N]


def test_eval_split_is_held_out():
    train = [ex for ex in _source("arithmetic", 3, "train")]
    evals = [ex for ex in _source("arithmetic", 3, "eval")]
    assert not {e["id"] for e in train} & {e["id"] for e in evals}
    assert [e["question"] for e in train] != [e["question"] for e in evals]
    # At difficulty 1 the two streams do collide on prompts; dedup removes those from train.
    train1 = [procedural.generate(ProceduralConfig("arithmetic", 400), i) for i in range(400)]
    eval1 = [procedural.generate(ProceduralConfig("arithmetic", 400, split="eval"), i) for i in range(100)]
    kept, stats = splits.dedup(train1, eval1)
    held = {splits.normalize_prompt(e["question"]) for e in eval1}
    assert stats.dropped_in_eval > 0 and stats.kept == len(kept)
    assert stats.kept + stats.dropped_in_eval + stats.dropped_repeat == len(train1)
    assert not {splits.normalize_prompt(e["question"]) for e in kept} & held


def test_normalize_prompt():
    assert splits.normalize_prompt("  What IS 2+2?\n") == splits.normalize_prompt("what is  2+2")
    assert splits.normalize_prompt("What is 2+3?") != splits.normalize_prompt("What is 2+2?")


def test_bad_config():
    with pytest.raises(ValueError, match="task='sudoku'"):
        ProceduralConfig("sudoku", 10)
    with pytest.raises(ValueError, match="difficulty=0"):
        ProceduralConfig("linear", 10, difficulty=0)
    with pytest.raises(ValueError, match="split='test'"):
        ProceduralConfig("linear", 10, split="test")
