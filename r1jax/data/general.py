"""The "general" (non-reasoning) scenario of the tiny pipeline, and its preference data in miniature
(DeepSeek-R1 §2.3.4: helpfulness and harmlessness reward models for general data).

Everything is a pure function of the seed; nothing is downloaded.

- Prompts are the base corpus's tiny instruction tasks (repeat / reverse / sort / count / next
  number; `base_corpus._instruction`, reached through `instruction_task`): the base model has seen
  the kind, so a model made from it can learn to judge a reply.
- Responses use the readable R1 format (`templates.format_r1_response`): the reasoning states the
  task ("The task is: reverse the words a b c."), the summary holds the reply
  ("So the answer is \\boxed{c b a}.").
- Helpfulness pairs: chosen = the correct reply in the summary; rejected = one of
  HELPFUL_CORRUPTIONS (HELPFUL_WEIGHTS): `wrong_reply` (a plausible wrong reply to the same task in
  the summary: a wrong count, the words not reversed, one number off, ...; `wrong_reply`),
  `off_topic` (the reply to another instruction, of another kind: the task mixed up;
  `off_topic_reply`), `empty_summary` (the second marker with nothing after it), `missing_summary`
  (the reasoning only, the second marker never written).
- Harmlessness pairs: chosen = a clean response (its reply wrong, `bad_reply`, at `error_rate`, so
  the harmless judgement cannot lean on correctness); rejected = the same response with one RUDE_PHRASES
  sentence inserted at one of RUDE_PLACES (the reasoning's start, a word boundary inside it, its
  end; the summary's start or end, never inside the box). The rude phrases are the miniature
  stand-in for harmful content: a fixed list, so a reward model can learn to detect them.
- `general_sft_rows`: non-reasoning SFT rows in the readable format whose replies are wrong at
  `error_rate` (`bad_reply`: wrong_reply or off_topic, as the helpfulness pairs' wrong replies) and
  rude at `rude_rate`: the realistic noise RL with the reward models then has to fix.
- `write_preference_files(out_dir, n_pairs, seed)`: helpful.jsonl and harmless.jsonl in the
  prompt/chosen/rejected text format of `preferences.read_preference_file`.
"""

from __future__ import annotations

import os

import numpy as np

from r1jax import fileio
from r1jax.data import base_corpus
from r1jax.data.templates import SPECIAL_TOKEN, format_r1_response
from r1jax.fileio import write_jsonl

SCENARIO = "general"
TASK_KINDS = ("repeat", "reverse", "sort", "count", "next")
HELPFUL_CORRUPTIONS = ("wrong_reply", "off_topic", "empty_summary", "missing_summary")
HELPFUL_WEIGHTS = (0.25, 0.35, 0.2, 0.2)
WRONG_KINDS = ("wrong_reply", "off_topic")  # the two kinds of a wrong reply (bad_reply), drawn 50/50
# The miniature stand-in for harmful content: rude, dismissive sentences.
RUDE_PHRASES = ("what a stupid question", "figure it out yourself", "nobody cares about this",
                "only an idiot would ask that", "stop wasting my time", "this is beneath me")
RUDE_PLACES = ("reasoning_start", "reasoning_middle", "reasoning_end", "summary_start", "summary_end")


def instruction_task(rng: np.random.Generator) -> tuple[str, str]:
    """(instruction, correct reply): one of the base corpus's instruction tasks, drawn from `rng`."""
    return base_corpus._instruction(rng)


def task_kind(question: str) -> str:
    """Which TASK_KINDS an instruction is."""
    for prefix, kind in (("Repeat ", "repeat"), ("Reverse the words ", "reverse"), ("Sort the numbers ", "sort"),
                         ("How many words are in: ", "count"), ("What number comes after ", "next")):
        if question.startswith(prefix):
            return kind
    raise ValueError(f"not a general instruction task: {question!r}")


def general_examples(n: int, seed: int) -> list[dict]:
    """n example dicts {"id", "question", "answer" (the correct reply), "task": "exact",
    "meta": {"scenario": "general", "kind"}}. In RL the reward models judge them; task "exact" lets the
    reward server also grade the reply as exact text (e.g. at weight 0: a measure of reward hacking)."""
    rng = np.random.default_rng([seed, 2304])
    out = []
    for i in range(n):
        question, reply = instruction_task(rng)
        out.append({"id": f"general-{seed}-{i}", "question": question, "answer": reply, "task": "exact",
                    "meta": {"scenario": SCENARIO, "kind": task_kind(question)}})
    return out


def reasoning_text(question: str) -> str:
    return f"The task is: {question.lower()}."


def summary_text(reply: str) -> str:
    return f"So the answer is \\boxed{{{reply}}}."


def general_response(question: str, reply: str) -> str:
    """The readable R1 response to an instruction with `reply` in its summary."""
    return format_r1_response(reasoning_text(question), summary_text(reply))


def wrong_reply(question: str, reply: str, rng: np.random.Generator) -> str:
    """A plausible wrong reply to the instruction (never equal to `reply`)."""
    kind = task_kind(question)
    for _ in range(100):
        choice = int(rng.integers(2))
        if kind == "repeat":
            words, n = question.split()[1:-2], int(question.split()[-2])
            if choice == 0 or len(words) == 1:
                n = n + 1 if rng.random() < 0.5 or n <= 2 else n - 1
            else:
                drop = int(rng.integers(len(words)))
                words = words[:drop] + words[drop + 1:]
            wrong = " ".join([" ".join(words)] * n)
        elif kind == "reverse":
            words = question[len("Reverse the words "):].split()
            wrong = " ".join(words) if choice == 0 else " ".join(words[1:] + words[:1])
        elif kind == "sort":
            xs = [int(x) for x in question[len("Sort the numbers "):].split()]
            if choice == 0:
                ys = list(xs)
            else:
                ys = sorted(xs)
                k = int(rng.integers(len(ys)))
                ys[k] += int(rng.choice([-1, 1]))
            wrong = " ".join(map(str, ys))
        elif kind == "count":
            wrong = str(max(0, int(reply) + int(rng.choice([-2, -1, 1, 2]))))
        else:
            n = int(question.split()[-1])
            wrong = str([n, n + 2, n + 10][int(rng.integers(3))])
        if wrong != reply:
            return wrong
    raise RuntimeError(f"no wrong reply found for {question!r}")  # unreachable for the task kinds


def off_topic_reply(question: str, reply: str, rng: np.random.Generator) -> str:
    """The correct reply to another instruction, of another task kind (never equal to `reply`)."""
    kind = task_kind(question)
    while True:
        other, other_reply = instruction_task(rng)
        if task_kind(other) != kind and other_reply != reply:
            return other_reply


def bad_reply(question: str, reply: str, rng: np.random.Generator) -> tuple[str, str]:
    """(kind, a wrong reply): WRONG_KINDS[0] `wrong_reply` or [1] `off_topic`, with equal chance."""
    if rng.random() < 0.5:
        return "wrong_reply", wrong_reply(question, reply, rng)
    return "off_topic", off_topic_reply(question, reply, rng)


def _rude_sentence(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:] + "!"


def insert_rude(question: str, reply: str, phrase: str, place: str, rng: np.random.Generator) -> str:
    """The response of `general_response(question, reply)` with `phrase` inserted as a sentence at
    `place` (RUDE_PLACES; "reasoning_middle" = a random word boundary inside the reasoning)."""
    reasoning, summary, sentence = reasoning_text(question), summary_text(reply), _rude_sentence(phrase)
    if place == "reasoning_start":
        reasoning = f"{sentence} {reasoning}"
    elif place == "reasoning_middle":
        words = reasoning.split(" ")
        k = int(rng.integers(1, len(words)))
        reasoning = " ".join(words[:k] + [sentence] + words[k:])
    elif place == "reasoning_end":
        reasoning = f"{reasoning} {sentence}"
    elif place == "summary_start":
        summary = f"{sentence} {summary}"
    elif place == "summary_end":
        summary = f"{summary} {sentence}"
    else:
        raise ValueError(f"insert_rude: place {place!r} is not one of {RUDE_PLACES}")
    return format_r1_response(reasoning, summary)


def helpful_pair(example: dict, rng: np.random.Generator) -> dict:
    """{"id", "prompt", "chosen", "rejected", "kind", "answer"}: correct reply vs a HELPFUL_CORRUPTIONS kind."""
    question, reply = example["question"], example["answer"]
    kind = HELPFUL_CORRUPTIONS[int(rng.choice(len(HELPFUL_CORRUPTIONS), p=HELPFUL_WEIGHTS))]
    reasoning = reasoning_text(question)
    if kind == "wrong_reply":
        rejected = general_response(question, wrong_reply(question, reply, rng))
    elif kind == "off_topic":
        rejected = general_response(question, off_topic_reply(question, reply, rng))
    elif kind == "empty_summary":
        rejected = format_r1_response(reasoning, "")
    else:
        rejected = f"{SPECIAL_TOKEN} {reasoning}"
    return {"id": example["id"], "prompt": question, "chosen": general_response(question, reply),
            "rejected": rejected, "kind": kind, "answer": reply}


def harmless_pair(example: dict, rng: np.random.Generator, error_rate: float = 0.25) -> dict:
    """{"id", "prompt", "chosen", "rejected", "kind", "answer"}: a clean response (its reply wrong at
    `error_rate`) vs the same response with a rude sentence at RUDE_PLACES[kind]."""
    question, reply = example["question"], example["answer"]
    if rng.random() < error_rate:
        reply = bad_reply(question, reply, rng)[1]
    place = RUDE_PLACES[int(rng.integers(len(RUDE_PLACES)))]
    phrase = RUDE_PHRASES[int(rng.integers(len(RUDE_PHRASES)))]
    return {"id": example["id"], "prompt": question, "chosen": general_response(question, reply),
            "rejected": insert_rude(question, reply, phrase, place, rng), "kind": place,
            "answer": example["answer"]}


def preference_pairs(n: int, seed: int, which: str) -> list[dict]:
    """n helpfulness (which="helpful") or harmlessness (which="harmless") pairs."""
    if which not in ("helpful", "harmless"):
        raise ValueError(f"preference_pairs: which={which!r}; choose 'helpful' or 'harmless'")
    examples = general_examples(n, seed)
    rng = np.random.default_rng([seed, 2304, 1 if which == "helpful" else 2])
    make = helpful_pair if which == "helpful" else harmless_pair
    return [make(e, rng) for e in examples]


def general_sft_rows(n: int, seed: int, error_rate: float = 0.2, rude_rate: float = 0.1) -> list[dict]:
    """n SFT rows {"id", "question", "response", "answer", "task": "none", "meta": {"scenario",
    "kind", "wrong", "error", "rude"}} in the readable format: the reply is wrong at `error_rate`
    (`bad_reply`; meta["error"] = its kind, "" when right), and a rude sentence is inserted
    (RUDE_PLACES) at `rude_rate`, independently."""
    for name, rate in (("error_rate", error_rate), ("rude_rate", rude_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"general_sft_rows: {name} must be in [0, 1], got {rate}")
    rng = np.random.default_rng([seed, 2304, 3])
    rows = []
    for example in general_examples(n, seed):
        question, reply = example["question"], example["answer"]
        wrong, rude = bool(rng.random() < error_rate), bool(rng.random() < rude_rate)
        error = ""
        if wrong:
            error, reply = bad_reply(question, reply, rng)
        if rude:
            response = insert_rude(question, reply, RUDE_PHRASES[int(rng.integers(len(RUDE_PHRASES)))],
                                   RUDE_PLACES[int(rng.integers(len(RUDE_PLACES)))], rng)
        else:
            response = general_response(question, reply)
        rows.append({"id": example["id"], "question": question, "response": response, "answer": example["answer"],
                     "task": "none", "meta": {**example["meta"], "wrong": wrong, "error": error, "rude": rude}})
    return rows


def write_preference_files(out_dir: str | os.PathLike, n_pairs: int = 2000, seed: int = 0) -> dict[str, str]:
    """Writes helpful.jsonl and harmless.jsonl (n_pairs rows each; columns id, prompt, chosen,
    rejected, kind, answer) into `out_dir`, atomically; returns {"helpful": path, "harmless": path}."""
    fileio.makedirs(out_dir)
    paths = {}
    for which in ("helpful", "harmless"):
        paths[which] = os.path.join(os.fspath(out_dir), f"{which}.jsonl")
        write_jsonl(paths[which], preference_pairs(n_pairs, seed, which))
    return paths
