"""A free-text corpus for pretraining the tiny base model of the CPU R1-Zero run.

R1-Zero starts from a *base* model: one that has seen worked problems and instructions in many
styles, follows the R1 template only some of the time and gets only some problems right. This
module writes such a corpus, so the tiny run has a base model whose gains under GRPO come from RL:

- worked arithmetic problems, drawn from the procedural task generator under its own seed and with
  every RL prompt (train and held-out eval) removed by normalised question, so the base model never
  sees a problem it is later asked;
- each worked solution has, with probability `error_rate`, one slip in one step (the later steps
  carry the wrong value on), so the base model answers only some problems right;
- among documents that use the R1-Zero prompt, only `template_rate` answer in the full
  `<think> … </think> <answer> … </answer>` format; the others answer in plain prose or half the
  format;
- a share of simple instruction-following dialogues (repeat, reverse, sort, count, next number);
- a share of arithmetic drill lines ("7 + 8 = 15. 23 - 4 = 19. ..."), always correct, like the
  tables of a textbook: the base model can compute, but copies the slips of worked solutions.

Everything is a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from r1jax.data import procedural, templates
from r1jax.data.splits import normalize_prompt


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    n_docs: int = 24000  # documents in the corpus
    task: str = "arithmetic"
    difficulty: int = 2
    seed: int = 1234  # corpus seed; RL prompts use other seeds and are removed anyway
    template_rate: float = 0.3  # R1-Zero-prompt documents answering in the full tag format
    error_rate: float = 0.35  # worked solutions containing one slip
    instruction_rate: float = 0.15  # share of instruction-following dialogues
    drill_rate: float = 0.25  # share of arithmetic drill documents (correct facts, no questions)
    r1_zero_prompt_rate: float = 0.6  # arithmetic documents that use the R1-Zero prompt

    def __post_init__(self):
        for name in ("template_rate", "error_rate", "instruction_rate", "drill_rate", "r1_zero_prompt_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CorpusConfig.{name} must be in [0, 1], got {v}")
        if self.task != "arithmetic":
            raise ValueError(f"CorpusConfig.task: only 'arithmetic' has worked solutions, got {self.task!r}")


def worked_solution(expression: str, slip_at: int = -1, slip: int = 0) -> tuple[str, int]:
    """'2 + 4 * 8' -> ('4 * 8 = 32. 2 + 32 = 34.', 34): products first, then left to right.

    Step `slip_at` is off by `slip`, and the wrong value is carried into the following steps, as a
    person's slip would be."""
    terms = expression.split()
    lines: list[str] = []

    def step(a: int, op: str, b: int) -> int:
        value = a * b if op == "*" else a + b if op == "+" else a - b
        if len(lines) == slip_at:
            value += slip
        lines.append(f"{a} {op} {b} = {value}.")
        return value

    values, ops = [int(terms[0])], []
    for op, t in zip(terms[1::2], terms[2::2]):
        if op == "*":
            values[-1] = step(values[-1], "*", int(t))
        else:
            ops.append(op)
            values.append(int(t))
    acc = values[0]
    for op, v in zip(ops, values[1:]):
        acc = step(acc, op, v)
    return " ".join(lines), acc


def _solve(rng: np.random.Generator, expression: str, error_rate: float) -> tuple[str, int]:
    n_steps = (len(expression.split()) - 1) // 2
    if rng.random() < error_rate:
        return worked_solution(expression, int(rng.integers(n_steps)), int(rng.choice([-10, -2, -1, 1, 2, 10])))
    return worked_solution(expression)


_WORDS = ("apple", "river", "green", "stone", "cloud", "music", "tiger", "paper", "light", "sugar",
          "house", "bread", "ocean", "chair", "plant", "train", "smile", "water", "grape", "night")


def _instruction(rng: np.random.Generator) -> tuple[str, str]:
    kind = int(rng.integers(5))
    if kind == 0:
        w = list(rng.choice(_WORDS, size=int(rng.integers(1, 4)), replace=False))
        n = int(rng.integers(2, 4))
        return f"Repeat {' '.join(w)} {n} times", " ".join([" ".join(w)] * n)
    if kind == 1:
        w = list(rng.choice(_WORDS, size=int(rng.integers(2, 5)), replace=False))
        return f"Reverse the words {' '.join(w)}", " ".join(reversed(w))
    if kind == 2:
        xs = [int(x) for x in rng.integers(0, 50, size=int(rng.integers(3, 6)))]
        return f"Sort the numbers {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs)))
    if kind == 3:
        w = list(rng.choice(_WORDS, size=int(rng.integers(1, 7))))
        return f"How many words are in: {' '.join(w)}", str(len(w))
    n = int(rng.integers(0, 200))
    return f"What number comes after {n}", str(n + 1)


def _arithmetic_doc(rng: np.random.Generator, example: dict, cfg: CorpusConfig) -> str:
    question = example["question"]
    reasoning, answer = _solve(rng, example["meta"]["expression"], cfg.error_rate)
    if rng.random() < cfg.r1_zero_prompt_rate:
        prompt = templates.render_prompt("r1_zero", question)
        style = rng.random()
        if style < cfg.template_rate:
            return prompt + " " + templates.format_r1_zero_response(reasoning, str(answer))
        # the other R1-Zero-prompt documents: prose, or half of the format
        other = int(rng.integers(4))
        if other == 0:
            return f"{prompt} {reasoning} So the answer is {answer}."
        if other == 1:
            return f"{prompt} The answer is {answer}."
        if other == 2:
            return f"{prompt} <think> {reasoning} </think> The answer is {answer}."
        return f"{prompt} {reasoning} <answer> {answer} </answer>"
    style = int(rng.integers(3))
    if style == 0:
        return f"Question: {question}\nAnswer: {reasoning} The answer is {answer}."
    if style == 1:
        return f"{question} {reasoning} Result: {answer}."
    return f"Q: {question}\nA: {answer}"


def _instruction_doc(rng: np.random.Generator, cfg: CorpusConfig) -> str:
    instr, reply = _instruction(rng)
    if rng.random() < 0.5:
        prompt = templates.render_prompt("r1_zero", instr)
        if rng.random() < cfg.template_rate:
            return prompt + " " + templates.format_r1_zero_response(f"The task is: {instr.lower()}.", reply)
        return f"{prompt} {reply}"
    return f"User: {instr}.\nAssistant: {reply}"


def _drill_doc(rng: np.random.Generator, pcfg: procedural.ProceduralConfig, n_facts: int = 8) -> str:
    """Correct single operations of the kind worked solutions take, from random problems (the
    facts, not the questions: no problem text appears)."""
    facts = []
    while len(facts) < n_facts:
        example = procedural.generate(pcfg, int(rng.integers(10**8, 2 * 10**8)))
        facts += worked_solution(example["meta"]["expression"])[0].split(". ")
    order = rng.permutation(len(facts))[:n_facts]
    return "Facts: " + " ".join(facts[i].rstrip(".") + "." for i in order)


def generate_corpus(cfg: CorpusConfig, exclude_questions: Iterable[str] = ()) -> list[str]:
    """The documents; arithmetic questions in `exclude_questions` (the RL prompts) never appear."""
    excluded = {normalize_prompt(q) for q in exclude_questions}
    rng = np.random.default_rng([cfg.seed, 7])
    pcfg = procedural.ProceduralConfig(cfg.task, size=10**9, difficulty=cfg.difficulty, seed=cfg.seed)
    docs: list[str] = []
    index = 0
    while len(docs) < cfg.n_docs:
        u = rng.random()
        if u < cfg.instruction_rate:
            docs.append(_instruction_doc(rng, cfg))
            continue
        if u < cfg.instruction_rate + cfg.drill_rate:
            docs.append(_drill_doc(rng, pcfg))
            continue
        example = procedural.generate(pcfg, index)
        index += 1
        if normalize_prompt(example["question"]) in excluded:
            continue
        docs.append(_arithmetic_doc(rng, example, cfg))
    return docs
