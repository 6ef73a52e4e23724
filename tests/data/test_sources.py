"""Task names to leakage-free (train, eval) lists; the reasoning-gym adapter."""

import json

import pytest

from r1jax.data import sources, splits
from r1jax.data.readers import FieldMap
from r1jax.data.sources import TaskSpec, load_splits


def _keys(examples):
    return {splits.normalize_prompt(e["question"]) for e in examples}


def test_procedural_splits_have_no_leakage():
    train, evals, info = load_splits(TaskSpec("arithmetic", n_train=300, n_eval=50, difficulty=1))
    assert not _keys(train) & _keys(evals) and len(evals) == 50
    assert info.train == len(train) == 300 - info.dedup.dropped_in_eval - info.dedup.dropped_repeat
    assert info.dedup.dropped_in_eval > 0  # difficulty 1 collides; those went
    again, _, _ = load_splits(TaskSpec("arithmetic", n_train=300, n_eval=50, difficulty=1))
    assert again == train


def test_bundled_and_file_splits(tmp_path):
    train, evals, _ = load_splits(TaskSpec("gsm8k_test100", n_eval=20))
    assert (len(train), len(evals)) == (80, 20) and not _keys(train) & _keys(evals)
    rows = [{"q": f"What is {i} + {i}?", "a": str(2 * i)} for i in range(10)]
    rows.append({"q": "What is 3 + 3 ?", "a": "6"})  # a repeat of row 4, and an eval question
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"q": "what is 3 + 3", "a": "6"}))
    spec = TaskSpec("file", path=str(tmp_path / "train.jsonl"), eval_path=str(tmp_path / "eval.jsonl"),
                    fields=FieldMap(question="q", answer="a"))
    train, evals, info = load_splits(spec)
    assert len(evals) == 1 and info.dedup.dropped_in_eval == 2 and len(train) == 9
    with pytest.raises(ValueError, match="TaskSpec.task='mmlu'"):
        load_splits(TaskSpec("mmlu"))
    with pytest.raises(ValueError, match="n_eval=100 must be in"):
        load_splits(TaskSpec("gsm8k_test100", n_eval=100))


@pytest.mark.parametrize("name", sorted(sources.RG_TASKS))
def test_reasoning_gym_offline_and_exact(name):
    import reasoning_gym

    examples = sources.reasoning_gym_examples(name, 8, seed=0)
    dataset = reasoning_gym.create_dataset(name, size=8, seed=0)
    assert len(examples) == 8 and examples[0]["task"] == sources.RG_TASKS[name]
    for ex, item in zip(examples, dataset):
        json.dumps(ex)  # examples survive JSON logs
        answer = ex["meta"]["solution"] if ex["task"] == "countdown" else ex["answer"]
        assert dataset.score_answer(answer, item) == 1.0  # the exact answer is full credit
    train, evals, _ = load_splits(TaskSpec(f"rg:{name}", n_train=20, n_eval=5))
    assert not _keys(train) & _keys(evals)


def test_reasoning_gym_scorers_give_partial_credit():
    """Why the adapter grades with our verifiers: reasoning-gym pays for a wrong answer."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("chain_sum", size=1, seed=1)
    item = dataset[0]
    assert 0 < dataset.score_answer(str(item["answer"]) + "1", item) < 1  # "-41" for "-4": 0.67
    with pytest.raises(ValueError, match="not supported"):
        sources.reasoning_gym_examples("decimal_arithmetic", 2, seed=0)
