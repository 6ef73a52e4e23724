"""Procedural tasks with verifiable answers, generated from a seed (the R1-Zero style small-scale
curriculum: TinyZero's Countdown, arithmetic chains, linear equations, fractions).

Example i of (task, difficulty, seed, split) is a pure function of those values: a random-access
source for grain, reproducible on every host. Train and eval draw from disjoint RNG streams (the
split is part of the RNG key), so eval items are never train items by construction; `splits.dedup`
also removes accidental prompt collisions, which are common at low difficulty.
"""

from __future__ import annotations

import dataclasses
import fractions
import random

TASKS = ("arithmetic", "countdown", "linear", "fractions")
# Task -> reward verifier name (docs/contracts.md § Reward).
VERIFIER = {"arithmetic": "math", "countdown": "countdown", "linear": "math", "fractions": "math"}
_SPLIT_STREAM = {"train": 0, "eval": 1}
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class ProceduralConfig:
    task: str  # one of TASKS
    size: int  # number of examples in this source
    difficulty: int = 1  # >= 1; more operands / larger numbers as it grows
    seed: int = 0
    split: str = "train"  # "train" | "eval": disjoint RNG streams (held-out seeds)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ProceduralConfig.task={self.task!r}; choose one of {TASKS}")
        if self.split not in _SPLIT_STREAM:
            raise ValueError(f"ProceduralConfig.split={self.split!r}; choose 'train' or 'eval'")
        if self.difficulty < 1:
            raise ValueError(f"ProceduralConfig.difficulty={self.difficulty}; must be >= 1")
        if self.size < 1:
            raise ValueError(f"ProceduralConfig.size={self.size}; must be >= 1")


class ProceduralSource:
    """Random-access source of example dicts (grain `MapDataset.source` accepts it)."""

    def __init__(self, cfg: ProceduralConfig):
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.cfg.size:
            raise IndexError(f"{self.cfg.task} source of size {self.cfg.size}: index {index}")
        return generate(self.cfg, int(index))


def generate(cfg: ProceduralConfig, index: int) -> dict:
    # A string seed is hashed with SHA-512 by `random` (not with Python's salted hash): the same
    # stream on every host and run, and ~100x cheaper per example than a numpy Generator.
    rng = random.Random(f"{cfg.task}/{cfg.difficulty}/{cfg.seed}/{cfg.split}/{index}")
    question, answer, meta = _GENERATORS[cfg.task](rng, cfg.difficulty)
    return {
        "id": f"{cfg.task}-d{cfg.difficulty}-s{cfg.seed}-{cfg.split}-{index}",
        "question": question,
        "answer": answer,
        "task": VERIFIER[cfg.task],
        "meta": {"generator": cfg.task, "difficulty": cfg.difficulty, **meta},
    }


def _arithmetic(rng: random.Random, d: int):
    # d+1 operands; magnitude grows every other level; '*' operands stay small so answers stay readable.
    hi = 10 ** (1 + (d - 1) // 2)
    terms = [str(rng.randrange(1, hi))]
    for _ in range(d):
        op = rng.choice("+-*")
        val = rng.randrange(2, 10) if op == "*" else rng.randrange(1, hi)
        terms += [op, str(val)]
    expr = " ".join(terms)
    value = _eval_int(terms)
    return f"Calculate {expr}.", str(value), {"expression": expr}


def _eval_int(terms: list[str]) -> int:
    """Evaluates 'a op b op c ...' with * before +/- (no eval of strings)."""
    sums, prod = [], int(terms[0])
    sign = 1
    for op, val in zip(terms[1::2], terms[2::2]):
        if op == "*":
            prod *= int(val)
        else:
            sums.append(sign * prod)
            sign, prod = (1 if op == "+" else -1), int(val)
    sums.append(sign * prod)
    return sum(sums)


def _countdown(rng: random.Random, d: int):
    """Builds a random expression over the numbers, so a solution always exists (TinyZero-style:
    each number used exactly once; the target is a positive integer)."""
    n_numbers = 2 + d
    for _ in range(_MAX_TRIES):
        numbers = [rng.randrange(1, 100) for _ in range(n_numbers)]
        nodes = [(fractions.Fraction(x), str(x)) for x in numbers]
        rng.shuffle(nodes)
        while len(nodes) > 1:
            i, j = rng.sample(range(len(nodes)), 2)
            (a, ea), (b, eb) = nodes[i], nodes[j]
            op = rng.choice("+-*/")
            if op == "/" and (b == 0 or (a / b).denominator != 1):
                op = "+"  # keep every intermediate an integer, as a person would solve it
            if op == "*" and abs(a * b) > 1000:
                op = "-"  # keeps targets in range without many rejected draws
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a}[op]
            expr = f"({ea} {op} {eb})"
            nodes = [n for k, n in enumerate(nodes) if k not in (i, j)] + [(value, expr)]
        value, expr = nodes[0]
        if value.denominator == 1 and 1 <= value <= 1000:
            target = int(value)
            question = (
                f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
                "arithmetic operations (+, -, *, /) and each number exactly once. Return the equation."
            )
            return question, str(target), {"numbers": numbers, "target": target, "solution": expr[1:-1]}
    raise RuntimeError("countdown: no expression with a small positive integer value found")


def _linear(rng: random.Random, d: int):
    hi = 10 * d
    x = rng.randint(-hi, hi)
    a = rng.choice([k for k in range(-9 * d, 9 * d + 1) if k != 0])
    b = rng.randint(-hi, hi)
    if d == 1:
        lhs, rhs = _affine(a, b), str(a * x + b)
    else:
        c = rng.choice([k for k in range(-9 * d, 9 * d + 1) if k not in (0, a)])
        e = a * x + b - c * x  # (a x + b) = (c x + e) holds at x
        lhs, rhs = _affine(a, b), _affine(c, e)
    return f"Solve for x: {lhs} = {rhs}.", str(x), {"equation": f"{lhs} = {rhs}"}


def _affine(a: int, b: int) -> str:
    ax = {1: "x", -1: "-x"}.get(a, f"{a}x")
    if b == 0:
        return ax
    return f"{ax} + {b}" if b > 0 else f"{ax} - {-b}"


def _fractions(rng: random.Random, d: int):
    hi = 4 + 3 * d
    terms = []
    for k in range(d + 1):
        f = fractions.Fraction(rng.randrange(1, hi), rng.randrange(2, hi))
        op = "+" if k == 0 else rng.choice("+-*")
        terms.append((op, f))
    # Evaluate with * before +/-, on exact rationals.
    sums, prod, sign = [], terms[0][1], 1
    for op, f in terms[1:]:
        if op == "*":
            prod *= f
        else:
            sums.append(sign * prod)
            sign, prod = (1 if op == "+" else -1), f
    sums.append(sign * prod)
    value = sum(sums)
    expr = f"{terms[0][1].numerator}/{terms[0][1].denominator}" + "".join(
        f" {op} {f.numerator}/{f.denominator}" for op, f in terms[1:]
    )
    question = f"Compute {expr}. Give the answer as a fraction in lowest terms."
    return question, str(value), {"expression": expr}


_GENERATORS = {"arithmetic": _arithmetic, "countdown": _countdown, "linear": _linear, "fractions": _fractions}
