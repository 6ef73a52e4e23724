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
  tables of a textbook: the base model can compute, but copies the slips of worked solutions;
- optionally (`narrated`), worked solutions written with connective words ("First, we compute 4 * 8 =
  32. Then we compute 2 + 32 = 34. So we get 34."), so the language-consistency reward (paper
  §2.3.2, `textrewards.language_share`) has words to count, and a share `language_mix_rate` of them
  switching to a second language part-way, the way R1-Zero's chains of thought mixed languages
  (`narrate`); their textbook-style documents give the result as \\boxed{X}.

Everything is a pure function of the seed. With the defaults (narrated=False) the corpus is the one
the published tiny R1-Zero run was pretrained on, byte for byte (tests/test_base_corpus.py pins it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

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
    narrated: bool = False  # worked solutions with English connective words ("First, we compute ...")
    language_mix_rate: float = 0.0  # narrated solutions switching to mix_language part-way (needs narrated)
    mix_language: str = "zh"  # the second language of mixed solutions: zh or ru

    def __post_init__(self):
        for name in ("template_rate", "error_rate", "instruction_rate", "drill_rate", "r1_zero_prompt_rate",
                     "language_mix_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"CorpusConfig.{name} must be in [0, 1], got {v!r}")
        if self.task != "arithmetic":
            raise ValueError(f"CorpusConfig.task: only 'arithmetic' has worked solutions, got {self.task!r}")
        if not isinstance(self.narrated, bool):
            raise ValueError(f"CorpusConfig.narrated must be True or False, got {self.narrated!r}")
        if self.language_mix_rate and not self.narrated:
            raise ValueError(f"CorpusConfig.language_mix_rate={self.language_mix_rate} needs narrated=True (only a "
                             "narrated solution has words whose language can switch)")
        if self.mix_language not in NARRATION_LANGUAGES or self.mix_language == "en":
            raise ValueError(f"CorpusConfig.mix_language={self.mix_language!r}; choose one of "
                             f"{[lang for lang in NARRATION_LANGUAGES if lang != 'en']}")


def worked_solution(expression: str, slip_at: int = -1, slip: int = 0) -> tuple[str, int]:
    """'2 + 4 * 8' -> ('4 * 8 = 32. 2 + 32 = 34.', 34): products first, then left to right.

    Step `slip_at` is off by `slip`, and the wrong value is carried into the following steps, as a
    person's slip would be."""
    steps, value = worked_steps(expression, slip_at, slip)
    return " ".join(steps), value


def worked_steps(expression: str, slip_at: int = -1, slip: int = 0) -> tuple[list[str], int]:
    """`worked_solution` one step at a time: '2 + 4 * 8' -> (['4 * 8 = 32.', '2 + 32 = 34.'], 34)."""
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
    return lines, acc


# Connective phrases of a narrated solution, per language: one opens the first step, one each later
# step, one closes with the result. A few words each, so the language reward has something to count.
_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "first": ("First, we compute", "To start, we work out", "We begin with", "First of all, we find"),
        "next": ("Then we compute", "Next, we work out", "After that, we find", "Now we take"),
        "last": ("So we get {result}.", "So the result is {result}.", "That gives us {result}.",
                 "In the end we have {result}."),
    },
    "zh": {
        "first": ("首先，我们计算", "第一步，先算", "我们先算"),
        "next": ("然后计算", "接着算", "再算"),
        "last": ("所以我们得到 {result}。", "所以结果是 {result}。", "最后得到 {result}。"),
    },
    "ru": {
        "first": ("Сначала вычислим", "Для начала считаем", "Первым делом находим"),
        "next": ("Затем считаем", "Дальше вычислим", "Потом находим"),
        "last": ("Итак, получаем {result}.", "Значит, результат {result}.", "В итоге имеем {result}."),
    },
}
NARRATION_LANGUAGES = tuple(_PHRASES)  # languages `narrate` writes (codes of textrewards.language_share)


def narrate(steps: Sequence[str], result: int | str, *, language: str = "en", mix_language: str = "zh",
            switch_at: int | None = None, rng: np.random.Generator | None = None) -> str:
    """A readable worked solution: connective words around the steps of `worked_steps`.

        narrate(["4 * 8 = 32.", "2 + 32 = 34."], 34)
        -> "First, we compute 4 * 8 = 32. Then we compute 2 + 32 = 34. So we get 34."
        narrate(["4 * 8 = 32.", "2 + 32 = 34."], 34, switch_at=1)
        -> "First, we compute 4 * 8 = 32. 然后计算 2 + 32 = 34. 所以我们得到 34。"

    The sentences are numbered 0 .. len(steps) (the last one states `result`); those before
    `switch_at` are in `language`, those from `switch_at` on in `mix_language` (switch_at=None: no
    switch; 0: all in mix_language). `rng` picks each phrase among a few variants (it draws
    len(steps) + 1 uniforms, whatever the languages); None: the first variant of each. Only the
    connective words are in a language: numbers and operators are not words for the language reward.
    """
    for name, lang in (("language", language), ("mix_language", mix_language)):
        if lang not in _PHRASES:
            raise ValueError(f"narrate: {name}={lang!r}; choose one of {NARRATION_LANGUAGES}")
    if not steps:
        raise ValueError("narrate: no steps")
    n = len(steps)
    if switch_at is not None and not 0 <= switch_at <= n:
        raise ValueError(f"narrate: switch_at={switch_at} must be in [0, {n}] (sentence {n} states the result)")
    picks = rng.random(n + 1) if rng is not None else np.zeros(n + 1)

    def phrase(k: int, kind: str) -> str:
        variants = _PHRASES[mix_language if switch_at is not None and k >= switch_at else language][kind]
        return variants[int(picks[k] * len(variants))]

    sentences = [f"{phrase(k, 'first' if k == 0 else 'next')} {step}" for k, step in enumerate(steps)]
    sentences.append(phrase(n, "last").format(result=result))
    return " ".join(sentences)


def _solve(rng: np.random.Generator, expression: str, cfg: CorpusConfig) -> tuple[str, int]:
    n_steps = (len(expression.split()) - 1) // 2
    if rng.random() < cfg.error_rate:
        steps, answer = worked_steps(expression, int(rng.integers(n_steps)),
                                     int(rng.choice([-10, -2, -1, 1, 2, 10])))
    else:
        steps, answer = worked_steps(expression)
    if not cfg.narrated:  # the corpus of the published tiny run: no further draws from rng
        return " ".join(steps), answer
    # Both draws are made whether or not the solution switches, so a corpus with language_mix_rate > 0 is
    # the one without, except for the solutions that switch.
    mixed = rng.random() < cfg.language_mix_rate
    switch_at = int(rng.integers(1, n_steps + 1))  # part-way: the first sentence stays in English
    return narrate(steps, answer, mix_language=cfg.mix_language, switch_at=switch_at if mixed else None,
                   rng=rng), answer


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
    reasoning, answer = _solve(rng, example["meta"]["expression"], cfg)
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
        # narrated corpora write this textbook style's result in LaTeX, as real pretraining text does; the
        # readable R1 format's summary ("... \\boxed{X}") is then not a string the base never saw
        final = f"\\boxed{{{answer}}}" if cfg.narrated else answer
        return f"Question: {question}\nAnswer: {reasoning} The answer is {final}."
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
