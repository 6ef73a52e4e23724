"""Stage: evaluation as the paper reports it (§3), on any policy and a whole problem set.

  problems (procedural, GSM8K-100, HumanEval-164, a file) ─▶ k samples per problem at T = 0.6,
  top-p 0.95 ─▶ reward server (grading, and answers grouped by mathematical equivalence) ─▶
  pass@1 averaged over k, cons@k, unbiased pass@k ─▶ <name>.json / <name>.md / <name>_samples.jsonl

The evaluation's completion budget (`eval.max_new_tokens`) is separate from training's.
"""

from __future__ import annotations

import dataclasses

from r1jax import console, fileio
from r1jax.data.sources import TaskSpec, load_benchmark
from r1jax.evals.report import write_report
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer import config as C
from r1jax.trainer.evaluation import EvalSpec, Evaluator
from r1jax.trainer.generation import Generator, RolloutSpec
from r1jax.trainer.policy import load_policy
from r1jax.trainer.rewards import Scorer

CONFIG_SECTIONS: dict[str, type] = {}
FIELD_DOCS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class EvalStageSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    policy: C.PolicySpec
    task: TaskSpec
    template: str
    question_suffix: str
    rollout: RolloutSpec
    reward: C.RewardSpec
    eval: EvalSpec
    report_name: str


def build(c) -> EvalStageSpec:
    spec = EvalStageSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), policy=C.policy_spec(c),
        task=C.task_spec(c, int(c.seed)), template=C.template(c), question_suffix=c.data.question_suffix,
        rollout=C.rollout_spec(c),
        reward=C.reward_spec(c),
        eval=C.eval_spec(c),
        report_name=c.get("report_name", "") or c.data.task.replace(":", "_"),
    )
    C.require(dict(spec.reward.weights).get("accuracy", 0) > 0, "reward.weights.accuracy",
              "evaluation grades by the accuracy reward; give it a positive weight")
    return spec


def run(spec: EvalStageSpec, workdir: str, client) -> dict:
    fileio.makedirs(workdir)
    mesh = make_mesh(spec.mesh)
    policy = load_policy(spec.policy, spec.model, mesh)
    console.say("policy", policy.origin)
    problems = load_benchmark(spec.task)
    if spec.question_suffix:
        problems = [{**e, "question": f"{e['question']} {spec.question_suffix}"} for e in problems]
    console.say("task", f"{spec.task.task}: {len(problems)} problems, k={spec.eval.k} samples each at "
                        f"T={spec.eval.temperature}, top-p {spec.eval.top_p}, template {spec.template}")
    generate = Generator(policy.graphdef, mesh, policy.tokenizer, spec.rollout, policy.model_cfg)
    evaluate = Evaluator(generate, Scorer(client, spec.template, dict(spec.reward.weights)), problems, spec.template,
                         spec.eval, spec.seed)
    result = evaluate(policy.params, policy.model_state, step=0)
    settings = {"policy": policy.origin, "task": spec.task.task, "template": spec.template,
                "temperature": spec.eval.temperature, "top_p": spec.eval.top_p,
                "max_new_tokens": evaluate.sampling.max_new_tokens, "k": spec.eval.k}
    paths = write_report(result, workdir, spec.report_name, settings=settings)
    console.say("report", "\n".join(paths.values()))
    return {**result.scalars(prefix=""), "report": paths}
