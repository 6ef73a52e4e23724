"""Stage: reinforcement learning with verifiable rewards (R1-Zero §2.2, R1 §2.3.2), top to bottom:

  ① prompts ─▶ ② rollout ─▶ ③ reward server ─▶ ④ advantages ─▶ ⑤ GRPO update ─▶ ⑥ checkpoint

`run(spec, workdir, client)`: the policy (any source: a previous stage's workdir, GGUF, HF),
evaluation of the starting policy, the GRPO steps with periodic evaluation and checkpoints, and the
plots. Started again on the same workdir it resumes from the last checkpoint: same parameters,
optimizer, π_ref, data position and rng stream (rng of step s = fold_in(seed, s)).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import console
from r1jax.data.pipeline import PromptPipelineConfig, make_mixed_prompt_dataset
from r1jax.data.sources import TaskSpec, load_splits
from r1jax.grpo import (
    GRPOConfig,
    TrainBatch,
    advantages,
    fill_informative_groups,
    make_update_step,
    overlong_penalty,
    validate_batch,
    zero_variance_fraction,
)
from r1jax.metrics import METRICS_FILE, plot_run, read_jsonl, reflection_rate
from r1jax.model.moe import router_disagreement
from r1jax.model.transformer import main_moe_layers
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.rollout.types import FINISH_LENGTH
from r1jax.trainer import config as C
from r1jax.trainer.evaluation import EvalSpec, Evaluator, ScoreEvaluator
from r1jax.trainer.generation import Generator, RolloutSpec
from r1jax.trainer.logprobs import make_logprob_fn
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.policy import load_policy
from r1jax.trainer.rewards import MixedScorer, Scorer
from r1jax.trainer.session import Session
from r1jax.trainer.state import copy_tree, shard_batch
from r1jax.trainer.step import StepConfig, check_finite, step_key

CONFIG_SECTIONS = {"grpo": GRPOConfig}
FIELD_DOCS = {
    "rl.steps": "GRPO steps (one rollout batch each; grpo.mu optimizer steps per batch)",
    "rl.dynamic_sampling": "DAPO dynamic sampling: replace groups whose rewards all tie by fresh informative ones",
    "rl.dynamic_sampling_rounds": "at most this many extra rollouts per step to find informative groups",
    "rl.ref_refresh_every": "copy the policy into π_ref every this many steps (0 = π_ref stays the start)",
    "rl.samples_every": "write a few completions to samples.jsonl every this many steps",
    "rl.max_staleness": "asynchronous rollout: the rollout of step t+s is drawn (with the policy of step t) while "
                        "step t trains; 0 = synchronous",
    "rl.sampler_devices": "devices set aside for the sampler (the last ones); 0 = the sampler shares the trainer's",
    "rl.routing_replay": "MoE: the training forward replays the experts the sampler routed each token through (R3)",
    "sources": "extra prompt sources mixed with data's (R1 RL for all scenarios): name -> a problem set (data's "
               "fields), share (of each step's prompts; data keeps the rest), rule_weights (reward server) "
               "and model_weights (reward models)",
    "reward_models": "name -> workdir of an `r1jax rm` run; scored on the mesh in this job, weighted per source",
}


@dataclasses.dataclass(frozen=True)
class RLSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    policy: C.PolicySpec
    task: TaskSpec
    sources: tuple[C.SourceSpec, ...]
    """The data section's source (first; `task`, rewarded by reward.weights) and the extra ones."""
    reward_models: tuple[tuple[str, str], ...]
    """name -> rm workdir, loaded onto the trainer's mesh when a source weights it."""
    template: str
    question_suffix: str
    prompts_per_step: int
    rollout: RolloutSpec
    reward: C.RewardSpec
    grpo: GRPOConfig
    step: StepConfig
    optim: OptimConfig
    steps: int
    dynamic_sampling: bool
    dynamic_sampling_rounds: int
    ref_refresh_every: int
    samples_every: int
    max_staleness: int
    """s: the rollout used at step t was sampled by the policy of step t - s (π_old is that policy)."""
    sampler_devices: int
    routing_replay: bool
    """MoE policies: replay the sampler's expert choices in π_old and the update (router disagreement is
    measured every step either way)."""
    eval: EvalSpec
    checkpoint_every: int
    checkpoint_keep: int


def build(c, n_devices: int | None = None, n_processes: int | None = None) -> RLSpec:
    """Every dataclass of the stage from the config, with the checks that relate sections (for the run's
    devices and processes, or the n_devices / n_processes given)."""
    grpo = C.build(GRPOConfig, "grpo", **C.section(c, "grpo"))
    rl = C.section(c, "rl")
    C.require(rl["steps"] >= 0, "rl.steps", f"must be >= 0, got {rl['steps']}")
    C.require(grpo.group_size >= 2, "grpo.group_size",
              f"must be >= 2 (GRPO normalises rewards within a group), got {grpo.group_size}")
    spec = RLSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), policy=C.policy_spec(c),
        task=C.task_spec(c, int(c.seed)), sources=C.source_specs(c, int(c.seed)),
        reward_models=C.reward_model_paths(c), template=C.template(c), question_suffix=c.data.question_suffix,
        prompts_per_step=c.data.prompts_per_step,
        rollout=C.rollout_spec(c),
        reward=C.reward_spec(c), grpo=grpo, step=C.step_config(c),
        optim=C.optim_config(c, rl["steps"] * grpo.mu),
        steps=rl["steps"], dynamic_sampling=rl["dynamic_sampling"],
        dynamic_sampling_rounds=rl["dynamic_sampling_rounds"], ref_refresh_every=rl["ref_refresh_every"],
        samples_every=rl["samples_every"], max_staleness=rl["max_staleness"], sampler_devices=rl["sampler_devices"],
        routing_replay=rl["routing_replay"], eval=C.eval_spec(c),
        checkpoint_every=c.checkpoint.every, checkpoint_keep=c.checkpoint.keep,
    )
    C.require(spec.prompts_per_step >= 1, "data.prompts_per_step", f"must be >= 1, got {spec.prompts_per_step}")
    C.require(spec.samples_every >= 1, "rl.samples_every", f"must be >= 1, got {spec.samples_every}")
    C.require(spec.checkpoint_every >= 1, "checkpoint.every", "must be >= 1")
    C.require(spec.checkpoint_keep >= 1, "checkpoint.keep", "must be >= 1")
    C.require(spec.rollout.temperature > 0, "rollout.temperature", "must be > 0 for training rollouts")
    C.require(grpo.overlong_buffer <= spec.rollout.max_new_tokens, "grpo.overlong_buffer",
              f"must be <= rollout.max_new_tokens={spec.rollout.max_new_tokens}, got {grpo.overlong_buffer}")
    C.require(spec.max_staleness >= 0, "rl.max_staleness", f"must be >= 0, got {spec.max_staleness}")
    C.require(not (spec.max_staleness and spec.dynamic_sampling), "rl.max_staleness",
              "asynchronous rollout with rl.dynamic_sampling is not supported (the refill draws depend on rewards)")
    n_processes = jax.process_count() if n_processes is None else n_processes
    C.require(not (spec.max_staleness and n_processes > 1), "rl.max_staleness",
              "asynchronous rollout is single-process only (its rollout thread would issue collectives in a "
              "different order on each process); set it to 0 for a multi-process job")
    C.require(not (spec.sampler_devices and n_processes > 1), "rl.sampler_devices",
              "a sampler on devices of its own is single-process only (the last devices belong to one process, "
              "so the trainer's mesh would leave the other processes without a shard); set it to 0 for a "
              "multi-process job")
    n_devices = jax.device_count() if n_devices is None else n_devices
    C.require(0 <= spec.sampler_devices < n_devices, "rl.sampler_devices",
              f"must leave the trainer at least one of the {n_devices} devices, got {spec.sampler_devices}")
    C.check_rows(spec.mesh, spec.prompts_per_step * grpo.group_size, spec.step.micro_batches,
                 n_devices - spec.sampler_devices, "data.prompts_per_step",
                 "prompts_per_step * grpo.group_size rollouts")
    return spec


def run(spec: RLSpec, workdir: str, client) -> dict:
    devices = jax.devices()
    trainer_devices = devices[: len(devices) - spec.sampler_devices]
    with Session(workdir, spec.mesh, keep=spec.checkpoint_keep,
                 mesh=make_mesh(spec.mesh, devices=trainer_devices)) as session:
        sampler_mesh = session.mesh
        if spec.sampler_devices:
            sampler_mesh = make_mesh(MeshConfig(fsdp=-1), devices=devices[len(trainer_devices):])
            console.say("sampler", f"{spec.sampler_devices} devices of its own, weights moved device to device "
                                   f"every step")
        history = _loop(spec, session, client, sampler_mesh)
    if session.is_main and spec.steps > 0:
        _summary(workdir, spec.eval.k)
        console.say("plots", "\n".join(plot_run(workdir)))
    return history


def _summary(workdir: str, k: int) -> None:
    evals = [r for r in read_jsonl(os.path.join(workdir, METRICS_FILE)) if "eval/pass@1" in r]
    if len(evals) < 2:
        return
    first, last = evals[0], evals[-1]
    keys = (("eval/pass@1", "pass@1"), ("eval/cons@k", f"cons@{k}"), ("eval/format", "format"))
    console.say("result", "held-out " + ", ".join(
        f"{name} {first[key]:.3f} -> {last[key]:.3f}" for key, name in keys
        if isinstance(first.get(key), float) and isinstance(last.get(key), float))
        + f" (step {first['step']} -> {last['step']})")


@dataclasses.dataclass
class Pending:
    """A rollout in flight (asynchronous mode): drawn for `step` by `sampler` (the policy's weights when
    it was launched, kept as π_old), from the prompts after iterator state `prompts_state`."""

    step: int
    future: concurrent.futures.Future
    sampler: dict
    prompts_state: dict


def _loop(spec: RLSpec, session: Session, client, sampler_mesh) -> dict:
    G, mesh, S = spec.grpo.group_size, session.mesh, spec.max_staleness

    # ── setup: the policy, π_ref, the problems (held-out ones never in training) ───────────────
    policy = load_policy(spec.policy, spec.model, mesh)
    optimizer = make_optimizer(spec.optim, policy.params)
    state = session.init_state(policy, optimizer, spec.seed, stage="rl", template=spec.template)
    # π_ref: the starting policy, frozen with its router bias (refreshed every ref_refresh_every steps
    # if > 0). Its own buffers, since the update donates the state; not kept at all when β = 0.
    ref = copy_tree(like_of(state)) if spec.grpo.beta > 0 else None
    # the weights of the rollouts in flight at the checkpoint (asynchronous mode), to redraw them exactly
    n_inflight = min(S, spec.steps - session.start_step) if session.start_step else 0
    state, extras, data_state = session.resume(state, {"ref": ref, "inflight": [like_of(state)] * n_inflight or None})
    ref = extras["ref"]
    splits = {source.name: load_splits(source.task)[:2] for source in spec.sources}
    if spec.question_suffix:  # e.g. the R1 paper's "put your final answer within \\boxed{}" (data's source only)
        splits[spec.sources[0].name] = tuple([{**e, "question": f"{e['question']} {spec.question_suffix}"}
                                              for e in examples] for examples in splits[spec.sources[0].name])
    # every example knows its source: its rewards are routed by it
    splits = {name: tuple([{**e, "source": name} for e in examples] for examples in pair)
              for name, pair in splits.items()}
    (train_examples, eval_examples), mixed = splits[spec.sources[0].name], len(spec.sources) > 1
    console.say("task", f"{spec.task.task}: {len(train_examples):,} training problems, {len(eval_examples)} held out "
                        f"(none in training), template {spec.template}, {spec.prompts_per_step} prompts × G={G} "
                        f"per step" + "".join(f"; source {s.name} ({s.task.task}, share {s.share:.2f}): "
                                              f"{len(splits[s.name][0]):,} prompts" for s in spec.sources[1:]))

    # ── ① prompts, ② rollout, ③ scoring, evaluation, ⑤ update: built once ───────────────────────
    prompts = iter(make_mixed_prompt_dataset(
        [(splits[s.name][0], s.share) for s in spec.sources], policy.tokenizer, PromptPipelineConfig(
            batch_size=spec.prompts_per_step, max_prompt_len=spec.rollout.max_prompt_len, template=spec.template,
            seed=spec.seed))[0])
    if data_state:
        prompts.set_state(data_state["prompts"])
    generate = Generator(policy.graphdef, sampler_mesh, policy.tokenizer, spec.rollout, policy.model_cfg)
    train_sampling = generate.sampling(n=G)
    score = Scorer(client, spec.template, dict(spec.reward.weights))
    evaluate = Evaluator(generate, score, eval_examples, spec.template, spec.eval, spec.seed)
    evaluate_sources = []
    if mixed or spec.sources[0].model_weights:  # reward models on this mesh, rows routed by source
        from r1jax.trainer.reward_model import RewardModel

        wanted = {m for s in spec.sources for m, _ in s.model_weights}
        models = {name: RewardModel.load(path, mesh) for name, path in spec.reward_models if name in wanted}
        for name in sorted(models):
            console.say("reward model", f"{name}: {dict(spec.reward_models)[name]}, on the trainer's mesh")
        score = MixedScorer(client, spec.template, spec.sources, models)
        evaluate_sources = [ScoreEvaluator(generate, score, splits[s.name][1], spec.template, spec.eval, spec.seed,
                                           prefix=f"eval/{s.name}/") for s in spec.sources[1:]]
    update = make_update_step(policy.graphdef, spec.grpo, optimizer, mesh, session.shardings, spec.step)
    moe = main_moe_layers(policy.model_cfg) > 0  # the sampler records its routing: disagreement, replay
    if spec.routing_replay and not moe:
        raise ValueError("config.rl.routing_replay: the policy has no MoE layers to replay")
    logprobs = make_logprob_fn(policy.graphdef, mesh, spec.step.logprob_chunk, session.shardings.params,
                               session.shardings.model_state, with_router_choice=moe)

    def rollout_and_score(batch, key, weights):
        t0 = time.perf_counter()
        rollout = generate.block(generate(weights["params"], weights["model_state"], batch, train_sampling, key,
                                          record_routing=moe))
        if sampler_mesh is not mesh:  # from the sampler's devices to the trainer's
            rollout = shard_batch(rollout, mesh)
        t1 = time.perf_counter()
        examples = [ex for ex in batch.examples for _ in range(G)]
        return rollout, examples, score(examples, rollout.texts), (t0, t1, time.perf_counter())

    # ── asynchronous rollout (rl.max_staleness = S > 0): the rollout of step t + S is drawn by the
    #    policy of step t in a host thread while step t trains; π_old is the policy that sampled ──
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1) if S else None
    pending: collections.deque[Pending] = collections.deque()

    def launch(step: int, weights: dict) -> None:
        prompts_state = prompts.get_state()
        future = executor.submit(rollout_and_score, next(prompts), step_key(state, step), weights)
        pending.append(Pending(step, future, weights, prompts_state))

    if S:
        for i, step in enumerate(range(session.start_step, min(session.start_step + S, spec.steps))):
            launch(step, extras["inflight"][i] if extras["inflight"] else copy_tree(like_of(state)))

    def run_eval(step: int) -> dict:
        result = evaluate(state.params, state.model_state, step)
        session.log_samples(step, [{"eval": True, **s} for s in result.samples])
        scalars = result.scalars()
        for evaluate_source in evaluate_sources:  # general prompts: mean reward-model scores of k samples
            scalars.update(evaluate_source(state.params, state.model_state, step))
        return scalars

    if session.start_step == 0:
        session.log(0, run_eval(0))
    history = {}
    bar = console.progress(range(session.start_step, spec.steps), "GRPO", initial=session.start_step,
                           total=spec.steps, mininterval=1)
    t_loop = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        key = step_key(state, step)

        # ── ① prompts + ② rollout (G samples per prompt, rows prompt-major) + ③ rewards ─────────
        if S:
            drawn = pending.popleft()
            rollout, examples, rewards, times = drawn.future.result()
            sampler_weights = drawn.sampler  # π_old: the policy that sampled, S steps ago
            if step + S < spec.steps:  # the next rollout, drawn while this step trains
                launch(step + S, copy_tree(like_of(state)))
        else:
            sampler_weights = like_of(state)
            rollout, examples, rewards, times = rollout_and_score(next(prompts), key, sampler_weights)
        extra_rounds = 0
        if spec.dynamic_sampling:  # DAPO: replace groups whose rewards all tie (no gradient)
            draw = lambda r, key=key, weights=sampler_weights: rollout_and_score(
                next(prompts), jax.random.fold_in(key, r), weights)[:3]
            rollout, examples, rewards, extra_rounds = fill_informative_groups(
                (rollout, examples, rewards), draw, G, spec.dynamic_sampling_rounds)
        t2 = time.perf_counter()

        # ── ④ advantages (eq. 3) of the task reward plus DAPO's soft overlong punishment (if on);
        #    infrastructure failures are masked, not rewarded 0 ─────────────────────────────────
        penalty_b = overlong_penalty(np.asarray(rollout.completion_lens_b), spec.rollout.max_new_tokens,
                                     spec.grpo.overlong_buffer, spec.grpo.overlong_penalty_factor)
        adv_b = advantages(rewards.rewards + penalty_b, G, spec.grpo.adv_scale, rewards.valid, spec.grpo.adv_eps)
        mask_bl = jnp.asarray(rollout.completion_mask_bl) * jnp.asarray(rewards.valid, jnp.float32)[:, None]

        # ── ⑤ GRPO update: π_old recomputed by the trainer (ratio 1 at the first of μ steps); the
        #    sampler's own log-probs give the sampler/trainer mismatch metric ──────────────────
        replay_btlk = rollout.routing_btlk if spec.routing_replay else None
        old_logp = logprobs(sampler_weights["params"], sampler_weights["model_state"], rollout.tokens_bl, mask_bl,
                            replay_btlk)
        if moe:  # the trainer's own expert choice vs the sampler's, on the prompt and completion tokens
            old_logp, choice_btlk = old_logp
            used_bt = jnp.arange(rollout.tokens_bl.shape[1])[None, :] < (
                jnp.asarray(rollout.prompt_lens_b) + jnp.asarray(rollout.completion_lens_b))[:, None]
            disagreement = router_disagreement(choice_btlk, rollout.routing_btlk, used_bt)
        # π_ref routes by itself: it is the reference policy, not a replay of the sampler
        ref_logp = (logprobs(ref["params"], ref["model_state"], rollout.tokens_bl, mask_bl)
                    if ref is not None else jnp.zeros_like(old_logp))
        if moe and ref is not None:
            ref_logp = ref_logp[0]
        batch = TrainBatch(
            tokens_bl=rollout.tokens_bl, completion_mask_bl=mask_bl, advantages_b=jnp.asarray(adv_b),
            old_logp_bl=old_logp, ref_logp_bl=ref_logp,
            truncated_b=(rollout.finish_reason_b == FINISH_LENGTH).astype(jnp.float32),
            sampler_logp_bl=rollout.logp_policy_bl * mask_bl, routing_btlk=replay_btlk,
        )
        validate_batch(batch, G, spec.step.micro_batches, require_sampler_logp=spec.grpo.is_correction != "none")
        batch = shard_batch(batch, mesh)
        for _ in range(spec.grpo.mu):
            with jax.transfer_guard("disallow"):  # everything the step needs is already on device
                state, step_metrics = update(state, batch)
        step_metrics = jax.device_get(step_metrics)
        check_finite(step_metrics, step)
        done = step + 1
        if ref is not None and spec.ref_refresh_every and done % spec.ref_refresh_every == 0:
            ref = copy_tree(like_of(state))
        t3 = time.perf_counter()

        # ── what a researcher watches ───────────────────────────────────────────────────────────
        lengths = np.asarray(rollout.completion_lens_b)
        scalars = {
            "reward/total": float(np.mean(rewards.rewards)),
            **({f"reward/{k}": float(np.mean(v)) for k, v in rewards.components.items()} if not mixed else
               per_source_means(spec.sources, examples, rewards)),
            "reward/invalid_frac": float(1.0 - np.mean(rewards.valid)),
            **({"reward/overlong_penalty": float(penalty_b.mean())} if spec.grpo.overlong_buffer else {}),
            "rollout/length_mean": float(lengths.mean()),
            "rollout/length_max": float(lengths.max()),
            "rollout/truncated_frac": float(np.mean(np.asarray(rollout.finish_reason_b) == FINISH_LENGTH)),
            "rollout/reflection_rate": reflection_rate(rollout.texts),
            "rollout/zero_var_groups": zero_variance_fraction(rewards.rewards, G, rewards.valid),
            **{f"grpo/{k}": float(v) for k, v in step_metrics.items()
               if k != "kl" or spec.grpo.beta > 0},  # without π_ref (β = 0) there is no KL to show
            "time/rollout_s": times[1] - times[0], "time/reward_s": times[2] - times[1], "time/update_s": t3 - t2,
            "time/step_s": t3 - t0, "time/wait_for_rollout_s": t2 - t0,
            # one step's timeline (seconds since the loop began): does the rollout overlap the update?
            "time/rollout_start": times[0] - t_loop, "time/rollout_end": times[1] - t_loop,
            "time/update_start": t2 - t_loop, "time/update_end": t3 - t_loop,
            "throughput/rollout_tokens_per_s": float(lengths.sum()) / max(times[1] - times[0], 1e-9),
            "rollout/dynamic_sampling_rounds": extra_rounds, "rollout/staleness": float(min(S, step)),
            **({"rollout/router_disagreement": float(disagreement["set_frac"]),
                "rollout/router_slot_disagreement": float(disagreement["slot_frac"])} if moe else {}),
        }
        if spec.eval.due(done, spec.steps):
            scalars.update(run_eval(done))
        session.log(done, scalars)
        if done % spec.samples_every == 0:
            session.log_samples(done, [
                {"question": examples[i]["question"], "completion": rollout.texts[i],
                 "reward": float(rewards.rewards[i]), "status": rewards.status[i]}
                for i in range(0, len(examples), G)][:4])
        bar.set_postfix(reward=f"{scalars['reward/total']:.2f}",
                        acc=f"{scalars.get('reward/accuracy', scalars.get('reward/data/accuracy', float('nan'))):.2f}",
                        len=f"{scalars['rollout/length_mean']:.0f}")

        # ── ⑥ checkpoint (async; the loop goes on while it is written) ──────────────────────────
        if done % spec.checkpoint_every == 0 or done == spec.steps:
            session.save(done, state, {"ref": ref, "inflight": [p.sampler for p in pending] or None},
                         data_state={"prompts": pending[0].prompts_state if pending else prompts.get_state()})
        history = scalars
    if executor is not None:
        executor.shutdown()
    return history


def like_of(state) -> dict:
    """The policy part of a train state: what samples, and what π_old and π_ref are made of."""
    return {"params": state.params, "model_state": state.model_state}


def per_source_means(sources, examples: list[dict], rewards) -> dict:
    """reward/<source>/<component> (and /total, /share): each source's own components, each a mean
    over that source's rows only."""
    source_b = np.asarray([ex["source"] for ex in examples])
    out = {}
    for source in sources:
        rows = source_b == source.name
        if not rows.any():
            continue
        out[f"reward/{source.name}/total"] = float(np.mean(rewards.rewards[rows]))
        out[f"reward/{source.name}/share"] = float(np.mean(rows))
        names = [n for n, _ in source.rule_weights] + [f"rm_{m}" for m, _ in source.model_weights]
        out.update({f"reward/{source.name}/{n}": float(np.mean(np.asarray(rewards.components[n])[rows]))
                    for n in names if n in rewards.components})
    return out
