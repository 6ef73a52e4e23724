"""Stage: rejection sampling (paper §2.3.3), and distillation data from a teacher (§2.4).

  problems ─▶ k samples per prompt from any policy ─▶ reward server ─▶ keep the correct ones ─▶
  readability filters (mixed languages, long paragraphs, code blocks) ─▶ dedupe ─▶ cap per prompt
  ─▶ [rewrite into the readable format: cold-start data, §2.3.1] ─▶ sft_data.jsonl + stats.json

Writes into the workdir: `scored.jsonl` (every sample with its reward and status, appended batch by
batch, so a killed run resumes at the next batch with the identical samples: the key of batch i is
fold_in(seed, i)), `sft_data.jsonl` (what `r1jax sft` reads as it is: question/response, same prompt
template) and `stats.json` (counts, per-filter drops, the template to train with).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from r1jax import console, fileio
from r1jax.data.cold_start import NotConvertible, cold_start_example
from r1jax.data.pipeline import PromptPipelineConfig, make_prompt_dataset
from r1jax.data.rejection import RejectionConfig, select
from r1jax.data.sources import TaskSpec, load_splits
from r1jax.data.templates import REWARD_FORMAT
from r1jax.fileio import append_jsonl, read_jsonl, write_json, write_jsonl
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer import config as C
from r1jax.trainer.generation import Generator, RolloutSpec
from r1jax.trainer.policy import load_policy
from r1jax.trainer.rewards import Scorer

SCORED, SFT_DATA, STATS = "scored.jsonl", "sft_data.jsonl", "stats.json"
REWRITES = ("", "readable")

CONFIG_SECTIONS = {"sample": RejectionConfig}
FIELD_DOCS = {
    "sample.split": "which problems to sample: 'train' (to build an SFT set) or 'eval'",
    "sample.k": "samples per prompt",
    "sample.batch_prompts": "prompts per generation call (each gives k rows)",
    "sample.rewrite": "'' keeps samples as they are; 'readable' rewrites R1-Zero outputs into the |special_token| "
                      "format (cold start)",
    "sample.max_per_prompt": "keep at most this many samples per prompt (0 = no cap)",
}


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    policy: C.PolicySpec
    task: TaskSpec
    split: str
    """Which problems to sample: "train" (building an SFT set) or "eval"."""
    template: str
    question_suffix: str
    rollout: RolloutSpec
    reward: C.RewardSpec
    k: int
    batch_prompts: int
    rejection: RejectionConfig
    rewrite: str
    """"" keeps the samples as they are; "readable" rewrites R1-Zero outputs into the readable
    |special_token| format with a summary (cold-start data) and trains on template "r1"."""


def build(c) -> SampleSpec:
    s = C.section(c, "sample")
    rejection = {k: s.pop(k) for k in [f.name for f in dataclasses.fields(RejectionConfig)] if k in s}
    rejection["filters"] = tuple(rejection.get("filters", ()))
    rejection["max_per_prompt"] = rejection.get("max_per_prompt") or None
    spec = SampleSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), policy=C.policy_spec(c),
        task=C.task_spec(c, int(c.seed)), split=s.pop("split"), template=C.template(c),
        question_suffix=c.data.question_suffix,
        rollout=C.rollout_spec(c),
        reward=C.reward_spec(c), k=s.pop("k"), batch_prompts=s.pop("batch_prompts"),
        rejection=C.build(RejectionConfig, "sample", **rejection), rewrite=s.pop("rewrite"),
    )
    C.require(not s, f"sample.{next(iter(s), '')}", "unknown field")
    C.require(spec.split in ("train", "eval"), "sample.split", f"must be 'train' or 'eval', got {spec.split!r}")
    C.require(spec.k >= 1, "sample.k", f"must be >= 1, got {spec.k}")
    C.require(spec.batch_prompts >= 1, "sample.batch_prompts", f"must be >= 1, got {spec.batch_prompts}")
    C.require(spec.rewrite in REWRITES, "sample.rewrite", f"must be one of {REWRITES}, got {spec.rewrite!r}")
    C.require(spec.rewrite != "readable" or spec.template == "r1_zero", "sample.rewrite",
              f"'readable' rewrites R1-Zero outputs; data.template must be 'r1_zero', got {spec.template!r}")
    return spec


def run(spec: SampleSpec, workdir: str, client) -> dict:
    fileio.makedirs(workdir)
    mesh = make_mesh(spec.mesh)
    policy = load_policy(spec.policy, spec.model, mesh)
    train, evals, _ = load_splits(spec.task)
    problems = train if spec.split == "train" else evals
    if spec.question_suffix:
        problems = [{**e, "question": f"{e['question']} {spec.question_suffix}"} for e in problems]
    batches = list(make_prompt_dataset(problems, policy.tokenizer, PromptPipelineConfig(
        batch_size=min(spec.batch_prompts, len(problems)), max_prompt_len=spec.rollout.max_prompt_len,
        template=spec.template, seed=spec.seed, shuffle=False, num_epochs=1, drop_remainder=False))[0])
    generate = Generator(policy.graphdef, mesh, policy.tokenizer, spec.rollout, policy.model_cfg)
    sampling = generate.sampling(n=spec.k)
    score = Scorer(client, spec.template, dict(spec.reward.weights))
    reward_format = REWARD_FORMAT[spec.template]
    is_main = jax.process_index() == 0

    # ── sample and score, batch by batch; resume after the last batch written ─────────────────
    scored_path = os.path.join(workdir, SCORED)
    done = _completed_batches(scored_path)
    key = jax.random.key(spec.seed)
    for i in console.progress(range(done, len(batches)), "sample", initial=done, total=len(batches)):
        batch = batches[i]
        rollout = generate(policy.params, policy.model_state, batch, sampling, jax.random.fold_in(key, i))
        examples = [ex for ex in batch.examples for _ in range(spec.k)]
        rewards = score(examples, rollout.texts)
        accuracy = rewards.components.get("accuracy", rewards.rewards)
        lengths = np.asarray(rollout.completion_lens_b)
        rows = [{"batch": i, "prompt_id": str(ex.get("id", f"problem-{i}-{j // spec.k}")), "sample": j % spec.k,
                 "question": ex["question"], "answer": ex.get("answer"), "task": ex["task"],
                 "meta": ex.get("meta", {}), "template": reward_format, "completion": text,
                 "reward": float(rewards.rewards[j]), "status": rewards.status[j],
                 "correct": bool(accuracy[j] >= 1.0 and rewards.valid[j]), "length": int(lengths[j])}
                for j, (ex, text) in enumerate(zip(examples, rollout.texts))]
        rows[-1]["batch_end"] = True
        if is_main:
            append_jsonl(scored_path, rows)

    # ── keep the correct ones that pass the filters; write the SFT set ─────────────────────────
    scored = read_jsonl(scored_path)
    kept, stats = select(scored, spec.rejection)
    out, skipped = sft_examples(kept, spec.rewrite, scored_path)
    summary = {
        "policy": policy.origin, "problems": len(problems), "k": spec.k, "samples": len(scored),
        "pass@1": float(np.mean([s["correct"] for s in scored])) if scored else 0.0,
        "rejection": dataclasses.asdict(stats), "rewrite": spec.rewrite, "rewrite_skipped": skipped,
        "written": len(out), "template": "r1" if spec.rewrite == "readable" else spec.template,
        "sft_data": os.path.join(workdir, SFT_DATA),
    }
    if is_main:
        write_jsonl(os.path.join(workdir, SFT_DATA), out)
        write_json(os.path.join(workdir, STATS), summary)
    drops = ", ".join(f"{n} {k}" for k, n in stats.filter_drops.items() if n) or "none by the filters"
    console.say("result", f"{len(scored):,} samples, {stats.correct:,} correct; dropped {drops}, "
                          f"{stats.duplicate_drops:,} duplicates, {stats.cap_drops:,} over the cap\n"
                          f"{len(out):,} rows -> {summary['sft_data']} "
                          f"(train with data.template={summary['template']!r})")
    return summary


def sft_examples(kept: list[dict], rewrite: str, source: str) -> tuple[list[dict], dict[str, int]]:
    """Kept samples -> SFT rows {id, question, response, answer, task, meta} and the rewrite's skips by
    reason. rewrite="readable": correct R1-Zero outputs become |special_token| reasoning
    |special_token| summary (cold-start data); one that cannot be rewritten is skipped and counted."""
    out, skipped = [], {}
    for n, s in enumerate(kept):
        example = {"id": f"{s['prompt_id']}-s{s['sample']}", "question": s["question"], "response": s["completion"],
                   "answer": s["answer"], "task": s["task"], "meta": {**s["meta"], "reward": s["reward"]}}
        if rewrite == "readable":
            try:
                example = cold_start_example(s, example["id"], path=source, row=n)
            except NotConvertible as e:
                skipped[e.reason] = skipped.get(e.reason, 0) + 1
                continue
        out.append(example)
    return out, skipped


def _completed_batches(path: str) -> int:
    """Batches fully written; the rows of a batch cut off by a kill are dropped and the batch redone."""
    rows = read_jsonl(path)
    complete = {r["batch"] for r in rows if r.get("batch_end")}
    if fileio.exists(path):  # rewritten without a torn last line or a cut-off batch before appending
        write_jsonl(path, [r for r in rows if r["batch"] in complete])
    return len(complete)
