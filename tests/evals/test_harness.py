"""evaluate() end to end with the real reward server: Rollouts built from fixed texts (the real data type),
graded and voted by the server; cons@k over equivalence classes, pass@k against brute force, report files."""

import ast
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from r1jax.data import PromptBatch
from r1jax.evals import EvalResult, evaluate, write_report
from r1jax.evals.metrics import cons_at_k
from r1jax.rollout import Rollout

K = 6
FENCE = "```"
WEIGHTS = {"accuracy": 1.0, "format": 1.0}
TEMPLATE = "r1_zero"


def boxed(answer: str) -> str:
    return f"<think>work it out</think> <answer>\\boxed{{{answer}}}</answer>"


NO_ANSWER_TEXT = "<think>hmm</think> I am not sure."  # no <answer> block
PROBLEMS = [
    # the string majority is "3" (2 votes, wrong); the equivalence class {1/2, 0.5, \frac12} has 3 (right)
    ({"id": "half", "question": "1 - 1/2?", "answer": "1/2", "task": "math"},
     [boxed("1/2"), boxed("3"), boxed("0.5"), boxed("3"), boxed("\\frac{1}{2}"), NO_ANSWER_TEXT]),
    # tie between 8 and 7 (2 each): the class seen first (8, wrong) wins
    ({"id": "seven", "question": "3 + 4?", "answer": "7", "task": "math"},
     [boxed("8"), boxed("7"), boxed("8"), boxed("7.0"), boxed("x"), NO_ANSWER_TEXT]),
    # nobody answers: no vote, not solved
    ({"id": "silent", "question": "1 + 1?", "answer": "2", "task": "math"}, [NO_ANSWER_TEXT] * K),
    # code: answers are programs, cons@k is undefined for this problem
    ({"id": "code", "question": "print 2", "task": "code",
      "meta": {"tests": {"type": "stdio", "cases": [{"input": "", "output": "2"}]}}},
     [f"<think>easy</think> <answer>\n{FENCE}python\nprint({v})\n{FENCE}\n</answer>" for v in (2, 3, 2, 2, 5, 1)]),
]
BY_ID = {ex["id"]: texts for ex, texts in PROBLEMS}


def prompt_batch(examples) -> PromptBatch:
    b = len(examples)
    return PromptBatch(tokens_bp=np.ones((b, 4), np.int32), lens_b=np.full(b, 4, np.int32), examples=examples)


def generate(batch: PromptBatch, k: int) -> Rollout:
    texts = [t for ex in batch.examples for t in BY_ID[ex["id"]][:k]]
    n, length = len(texts), 16
    lens = np.array([len(t) % 12 + 1 for t in texts], np.int32)
    mask = (np.arange(length)[None, :] >= 4) & (np.arange(length)[None, :] < 4 + lens[:, None])
    return Rollout(
        tokens_bl=np.ones((n, length), np.int32), prompt_lens_b=np.full(n, 4, np.int32), completion_lens_b=lens,
        finish_reason_b=np.zeros(n, np.int32), completion_mask_bl=mask.astype(np.float32),
        logp_sampling_bl=np.zeros((n, length), np.float32), logp_policy_bl=np.zeros((n, length), np.float32),
        texts=texts,
    )


def reward_items(examples, texts):
    return [{"completion": t, "task": ex["task"], "answer": ex.get("answer"), "meta": ex.get("meta", {}),
             "template": TEMPLATE, "weights": WEIGHTS} for ex, t in zip(examples, texts)]


def score_with(client):
    return lambda examples, texts: client.score(reward_items(examples, texts))


@pytest.fixture(scope="module")
def result(eval_client) -> EvalResult:
    batches = [prompt_batch([PROBLEMS[0][0], PROBLEMS[1][0]]), prompt_batch([PROBLEMS[2][0], PROBLEMS[3][0]])]
    return evaluate(generate, score_with(eval_client), eval_client.equivalence_classes, batches, K,
                    pass_ks=(1, 2, 4, K), n_show=2)


def test_rows_keep_every_sample_answer_and_class(result, eval_client):
    assert [r.id for r in result.rows] == ["half", "seven", "silent", "code"]
    half, seven, silent, code = result.rows
    assert half.answers == ["1/2", "3", "0.5", "3", "\\frac{1}{2}", None]
    assert half.classes == [0, 1, 0, 1, 0, -1]
    assert half.correct == [True, False, True, False, True, False]
    # the format rule is the reward server's; the row keeps the weighted sum accuracy + format
    fmt = eval_client.score(reward_items([PROBLEMS[0][0]] * K, BY_ID["half"])).components["format"]
    assert half.rewards == [c + f for c, f in zip(half.correct, fmt.tolist())]
    assert seven.classes == [0, 1, 0, 1, 2, -1] and seven.vote == 0 and seven.cons_correct is False
    assert silent.classes == [-1] * K and silent.vote is None and silent.cons_correct is False
    assert code.answers == [None] * K and code.classes == [-1] * K and code.cons_correct is None
    assert code.correct == [True, False, True, True, False, False]
    assert code.completions == BY_ID["code"] and code.statuses[1] == "wrong"
    assert half.lengths == [len(t) % 12 + 1 for t in BY_ID["half"]]


def test_cons_at_k_votes_over_equivalence_classes_not_strings(result):
    half = result.rows[0]
    assert half.vote == 0 and half.answers[half.vote] == "1/2" and half.cons_correct is True
    # the vote over answer strings would have picked "3", which is wrong
    string_ids = [[-1 if a is None else sorted(set(filter(None, r.answers))).index(a) for a in r.answers]
                  for r in result.rows[:3]]
    assert cons_at_k(string_ids[:1], np.array([half.correct])) == 0.0
    # half: right, seven: tie -> first class (wrong), silent: no answer; code is not counted
    assert result.cons_problems == 3
    assert result.cons_at_k == pytest.approx(1 / 3)


def test_pass_at_k_against_brute_force_in_float64(result):
    correct = np.array([r.correct for r in result.rows], bool)
    assert correct.sum(axis=1).tolist() == [3, 2, 0, 3]
    for k in (1, 2, 4, K):
        subsets = list(itertools.combinations(range(K), k))
        brute = np.mean([np.mean([row[list(s)].any() for s in subsets], dtype=np.float64) for row in correct])
        assert result.pass_at_k[k] == pytest.approx(brute, abs=1e-12), k
    assert result.pass_at_1 == pytest.approx((3 + 2 + 0 + 3) / (4 * K), abs=1e-12)


def test_scalars_format_length_and_samples(result, eval_client):
    s = result.scalars()
    assert s["eval/pass@1"] == result.pass_at_1 and s["eval/pass@4"] == result.pass_at_k[4]
    assert s["eval/cons@k"] == pytest.approx(1 / 3) and s["eval/k"] == K and s["eval/n_problems"] == 4
    texts = [t for _, ts in PROBLEMS for t in ts]
    fmt = eval_client.score(reward_items([ex for ex, _ in PROBLEMS for _ in range(K)], texts)).components["format"]
    assert s["eval/format"] == pytest.approx(float(np.mean(fmt))) and s["eval/invalid_frac"] == 0.0
    lengths = [len(t) % 12 + 1 for _, texts in PROBLEMS for t in texts]
    assert s["eval/length_mean"] == pytest.approx(np.mean(lengths))
    assert set(result.scalars("x/")) == {k.replace("eval/", "x/") for k in s}
    assert [x["id"] for x in result.samples] == ["half", "seven"]  # n_show=2


def test_code_only_eval_has_no_cons_at_k(eval_client):
    only_code = evaluate(generate, score_with(eval_client), eval_client.equivalence_classes,
                         [prompt_batch([PROBLEMS[3][0]])], K)
    assert np.isnan(only_code.cons_at_k) and only_code.cons_problems == 0
    assert "eval/cons@k" not in only_code.scalars() and only_code.scalars()["eval/pass@1"] == 0.5


def test_other_components_are_averaged_and_language_mixing_counted(eval_client):
    """The language reward's mean and the share of samples not wholly in the prompt's language, by hand:
    shares 1, 2/6 (every Han character is a word), 1, 0 (no words) over the four samples of one problem."""
    texts = ["<think>we add them</think> <answer>7</answer>", "<think>we add 然后 计算</think> <answer>7</answer>",
             "<think>so seven</think> <answer>8</answer>", "<think>3 + 4</think> <answer>7</answer>"]
    example = {"id": "lang", "question": "3 + 4?", "answer": "7", "task": "math", "meta": {"language": "en"}}

    def score(examples, completions):
        return eval_client.score([{**item, "weights": {"accuracy": 1.0, "language": 0.0}}
                                  for item in reward_items(examples, completions)])

    def generate_lang(batch, k):
        BY_ID["lang"] = texts
        return generate(batch, k)

    try:
        out = evaluate(generate_lang, score, eval_client.equivalence_classes, [prompt_batch([example])], 4)
    finally:
        BY_ID.pop("lang")
    assert out.other_components["language"] == pytest.approx((1 + 2 / 6 + 1 + 0) / 4)
    assert out.other_components["language_mixed"] == pytest.approx(2 / 4)
    assert out.scalars()["eval/language_mixed"] == pytest.approx(0.5) and out.pass_at_1 == pytest.approx(0.75)


def test_report_files_are_written_and_parse(result, tmp_path):
    paths = write_report(result, str(tmp_path / "reports"), "step_7",
                         settings={"temperature": 0.6, "top_p": 0.95, "step": 7})
    assert sorted(os.path.basename(p) for p in paths.values()) == ["step_7.json", "step_7.md",
                                                                   "step_7_samples.jsonl"]

    def no_nan(token):
        raise AssertionError(f"{token} in a JSON report")

    summary = json.loads(open(paths["json"]).read(), parse_constant=no_nan)
    assert summary["scalars"]["pass@1"] == result.pass_at_1
    assert summary["scalars"]["pass@6"] == result.pass_at_k[6]
    assert summary["scalars"]["cons@k"] == pytest.approx(1 / 3)
    assert summary["protocol"]["k"] == K and summary["protocol"]["pass_ks"] == [1, 2, 4, 6]
    assert summary["settings"] == {"temperature": 0.6, "top_p": 0.95, "step": 7}
    assert [p["vote_answer"] for p in summary["problems"]] == ["1/2", "8", None, None]
    assert [p["cons_correct"] for p in summary["problems"]] == [True, False, False, None]

    md = open(paths["md"]).read()
    assert "| metric | value | note |" in md and f"| cons@{K} | 0.3333 |" in md
    table = [line for line in md.splitlines() if line.startswith("| half ") or line.startswith("| code ")]
    assert table[0].startswith("| half | 1/2 | 0.500 | 1/2 | yes | 0:3 1:2 |")
    assert table[1].startswith("| code | — | 0.500 | — | n/a | — |")

    samples = [json.loads(line, parse_constant=no_nan) for line in open(paths["samples"])]
    assert len(samples) == 4 * K
    assert samples[2] == {"problem_id": "half", "sample": 2, "completion": BY_ID["half"][2], "reward": 2.0,
                          "status": "ok", "correct": True, "answer": "0.5", "class": 0,
                          "length": len(BY_ID["half"][2]) % 12 + 1}
    assert {s["class"] for s in samples if s["problem_id"] == "code"} == {-1}

    with pytest.raises(ValueError, match="plain file stem"):
        write_report(result, str(tmp_path), "../escape")


def test_bad_inputs_are_named(eval_client):
    batches = [prompt_batch([PROBLEMS[0][0]])]
    score = score_with(eval_client)
    eq = eval_client.equivalence_classes
    with pytest.raises(ValueError, match=r"pass_ks: 7 is not an integer in \[1, k=6\]"):
        evaluate(generate, score, eq, batches, K, pass_ks=(1, 7))
    with pytest.raises(ValueError, match="generate_fn returned 5 texts for 1 problems x k=6"):
        evaluate(lambda b, k: generate(b, k - 1), score, eq, batches, K)

    def without_answers(examples, texts):
        import dataclasses

        return dataclasses.replace(score(examples, texts), answers=None)

    with pytest.raises(ValueError, match="RewardBatch.answers = None"):
        evaluate(generate, without_answers, eq, batches, K)
    with pytest.raises(ValueError, match="equivalence_fn group 0"):
        evaluate(generate, score, lambda groups: [[0] for _ in groups], batches, K)
    with pytest.raises(ValueError, match="prompt_batches held no problems"):
        evaluate(generate, score, eq, [], K)


def test_evals_ask_the_reward_server_and_never_import_reward_internals():
    code = (
        "import sys, r1jax.evals\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('r1jax.reward.mathcheck', 'r1jax.reward.scoring', "
        "'r1jax.reward.math_parse', 'r1jax.reward.textrewards', 'r1jax.reward.equivalence', 'sympy')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    here = os.path.join(os.path.dirname(__file__), "..", "..", "r1jax", "evals")
    for fname in sorted(os.listdir(here)):
        if fname.endswith(".py"):
            tree = ast.parse(open(os.path.join(here, fname)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("r1jax.reward"):
                    assert node.module == "r1jax.reward.client", (fname, node.module)
                    assert {a.name for a in node.names} <= {"RewardBatch", "RewardClient"}, fname
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("r1jax.reward") for a in node.names), fname
