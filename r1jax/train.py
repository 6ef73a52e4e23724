"""The R1-Zero loop (paper §2.2), top to bottom:

  ① prompts ─▶ ② rollout ─▶ ③ reward server ─▶ ④ advantages ─▶ ⑤ GRPO update ─▶ ⑥ checkpoint

`run(config, workdir)` is the whole job: the base model (pretrained here or loaded), the reward
server (auto-started subprocess unless `reward.urls` names a fleet), evaluation of the base model,
the GRPO steps with periodic evaluation and checkpoints, and the plots. Started again with the same
workdir it resumes from the last checkpoint: same parameters, optimizer, data position and rng
stream (rng of step s = fold_in(seed, s)), and metrics.jsonl continues without gaps or repeats.

The config (an ml-collections ConfigDict) stops here: everything below takes frozen dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from r1jax import base_model
from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.data import REWARD_FORMAT, PromptPipelineConfig, TaskSpec, load_splits, make_prompt_dataset
from r1jax.evals.harness import evaluate
from r1jax.grpo import (
    GRPOConfig,
    OptimConfig,
    TrainBatch,
    advantages,
    check_finite,
    init_train_state,
    make_logprob_fn,
    make_optimizer,
    make_update_step,
    shard_batch,
    step_key,
    train_state_shardings,
    validate_batch,
    zero_variance_fraction,
)
from r1jax.grpo.advantages import informative_groups
from r1jax.metrics import MetricsWriter, plot_run, reflection_rate
from r1jax.model import get_variant
from r1jax.model.api import replicated_params
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.reward import RewardBatch, RewardClient, start_local_server
from r1jax.reward.mathcheck import extract_answer
from r1jax.rollout import Rollout, Sampler, SamplingParams
from r1jax.rollout.types import FINISH_LENGTH

log = logging.getLogger(__name__)


def run(config, workdir: str) -> dict:
    """The whole job. The reward server comes first, so a missing one fails before any compute."""
    with _reward_server(config) as urls:
        client = RewardClient(urls, timeout_s=config.reward.timeout_s)
        try:
            client.health()
        except Exception as e:
            raise ConnectionError(f"config.reward.urls: reward server {urls} is not answering: {e}") from e
        return _train(config, workdir, client)


def _train(config, workdir: str, client: RewardClient) -> dict:
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    seed = int(config.seed)

    # ── setup: mesh and the policy to start from ────────────────────────────────────────────
    mesh = make_mesh(MeshConfig(**config.mesh.to_dict()))
    log.info("mesh %s", dict(mesh.shape))
    task = TaskSpec(task=config.data.task, n_train=config.data.n_train, n_eval=config.data.n_eval,
                    difficulty=config.data.difficulty, seed=seed, path=config.data.path)
    # held-out eval problems never appear in training (disjoint seeds + dedup by normalised prompt)
    train_examples, eval_examples, split_info = load_splits(task)
    log.info("task %s: %s", task.task, split_info)
    if config.data.question_suffix:  # e.g. the R1 paper's "put your final answer within \boxed{}"
        train_examples, eval_examples = (
            [{**e, "question": f"{e['question']} {config.data.question_suffix}"} for e in examples]
            for examples in (train_examples, eval_examples))
    if config.base.source == "pretrain":
        policy = base_model.pretrain_base(
            base_model.PretrainConfig(**config.pretrain.to_dict(), difficulty=config.data.difficulty, seed=seed),
            dataclasses.replace(get_variant(config.model.variant), **config.model.overrides.to_dict()),
            mesh, os.path.join(workdir, "base"),
            exclude_questions=[e["question"] for e in train_examples + eval_examples],  # no RL prompt
        )
    else:
        policy = base_model.load_pretrained(config.base.source, config.base.path, mesh, config.model.dtype)
    unsharded = replicated_params(policy.params)
    if unsharded:  # a forgotten logical axis would cost a full copy of these on every device
        raise ValueError(f"config.mesh {dict(mesh.shape)}: large parameters left fully replicated: {unsharded[:8]}")
    tokenizer, graphdef = policy.tokenizer, policy.graphdef

    grpo_cfg = GRPOConfig(**config.grpo.to_dict())
    G = grpo_cfg.group_size
    optimizer = make_optimizer(
        OptimConfig(learning_rate=config.optim.lr, warmup_steps=config.optim.warmup_steps,
                    total_steps=max(config.rl.steps * grpo_cfg.mu, config.optim.warmup_steps + 1),
                    weight_decay=config.optim.weight_decay, b1=config.optim.b1, b2=config.optim.b2,
                    clip_norm=config.optim.clip_norm, end_lr_ratio=config.optim.min_lr_ratio),
        policy.params,
    )
    state_sh = train_state_shardings(policy.params, policy.model_state, optimizer, mesh)
    state = init_train_state(policy.params, policy.model_state, optimizer, mesh, seed)
    # π_ref: the base model, frozen (refreshed every rl.ref_refresh_every steps if > 0). A copy,
    # since the update donates the state's buffers; not kept at all when β = 0.
    ref_params = _copy(policy.params) if grpo_cfg.beta > 0 else None

    # ── ① prompts ───────────────────────────────────────────────────────────────────────────
    template = config.data.template
    prompt_cfg = PromptPipelineConfig(batch_size=config.data.prompts_per_step,
                                      max_prompt_len=config.rollout.max_prompt_len, template=template,
                                      seed=seed)
    prompt_ds, _ = make_prompt_dataset(train_examples, tokenizer, prompt_cfg)
    prompts = iter(prompt_ds)
    eval_ds, _ = make_prompt_dataset(
        eval_examples, tokenizer,
        dataclasses.replace(prompt_cfg, batch_size=min(config.eval.batch_prompts, len(eval_examples)),
                            shuffle=False, num_epochs=1, drop_remainder=False),
    )

    # ⑥ resume: parameters, optimizer, step, rng and the prompt iterator's position
    ckpt = CheckpointManager(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    start = ckpt.latest_step() or 0
    if start:
        saved, data_state = ckpt.restore(start, abstract_state(
            {"train": state_sh, "ref": None if ref_params is None else state_sh.params},
            {"train": state, "ref": ref_params}))
        state, ref_params = saved["train"], saved["ref"]
        prompts.set_state(data_state["prompts"])
        log.info("resumed from step %d", start)
    # rows are written as `step + 1` after each update: resuming from checkpoint k keeps rows <= k
    writer = MetricsWriter(workdir, start_step=start + 1 if start else 0, enabled=is_main)

    # ── ② rollout / ⑤ update programs, compiled once per shape ──────────────────────────────
    sampler = Sampler(graphdef, mesh=mesh, pad_id=int(tokenizer.pad_id))
    stop_ids = tuple(int(i) for i in {tokenizer.eos_id} | set(config.rollout.stop_token_ids))
    train_sampling = SamplingParams(
        temperature=config.rollout.temperature, top_p=config.rollout.top_p, top_k=config.rollout.top_k,
        max_new_tokens=config.rollout.max_new_tokens, stop_token_ids=stop_ids,
        stop_strings=tuple(config.rollout.stop_strings), n=G,
    )
    eval_sampling = dataclasses.replace(train_sampling, temperature=config.eval.temperature,
                                        top_p=config.eval.top_p, top_k=0, n=config.eval.k)
    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, state_sh)
    logprob_fn = make_logprob_fn(graphdef, mesh, grpo_cfg.logprob_chunk, state_sh.params, state_sh.model_state)
    weights = config.reward.weights.to_dict()
    reward_format = REWARD_FORMAT[template]

    def generate(params, model_state, batch, sampling, key):
        full = nnx.merge_state(params, model_state)
        return sampler.generate(full, batch.tokens_bp, batch.lens_b, sampling, key, tokenizer=tokenizer)

    def reward_items(examples, texts):
        return [{"completion": t, "task": ex["task"], "answer": ex.get("answer"), "meta": ex.get("meta", {}),
                 "template": reward_format, "weights": weights} for ex, t in zip(examples, texts)]

    # ③ rewards come from the reward server process(es) that run() started or was pointed at
    def score(examples, texts):
        return client.score(reward_items(examples, texts))

    def rollout_and_score(batch, key):
        t0 = time.perf_counter()
        rollout = generate(state.params, state.model_state, batch, train_sampling, key)
        jax.block_until_ready(rollout.tokens_bl)
        t1 = time.perf_counter()
        examples = [ex for ex in batch.examples for _ in range(G)]
        rewards = score(examples, rollout.texts)
        return rollout, examples, rewards, t1 - t0, time.perf_counter() - t1

    def run_eval(step: int) -> dict:
        key = jax.random.fold_in(jax.random.key(seed + 1), step)  # same problems, fresh samples
        result = evaluate(
            lambda b, k: generate(state.params, state.model_state, b, eval_sampling, key), score,
            list(eval_ds), k=config.eval.k,
            extract_fn=lambda text: extract_answer(text, reward_format)[0],
        )
        writer.write_samples(step, [{"eval": True, **s} for s in result.samples])
        log.info("eval @%d: pass@1 %.3f cons@%d %.3f format %.3f", step, result.pass_at_1,
                 result.k, result.cons_at_k, result.format_rate)
        return result.scalars()

    if start == 0:
        writer.write(0, run_eval(0))
    history = {}
    bar = tqdm(range(start, config.rl.steps), initial=start, total=config.rl.steps, desc="GRPO",
               disable=not is_main, mininterval=1)
    for step in bar:
        t0 = time.perf_counter()
        key = step_key(state, step)

        # ── ① prompts + ② rollout (G samples per prompt, rows prompt-major) + ③ rewards ─────
        rollout, examples, rewards, t_rollout, t_reward = rollout_and_score(next(prompts), key)
        extra_rounds = 0
        if config.rl.dynamic_sampling:  # DAPO: replace groups whose rewards all tie (no gradient)
            draw = lambda r, key=key: rollout_and_score(next(prompts), jax.random.fold_in(key, r))[:3]
            rollout, examples, rewards, extra_rounds = fill_informative_groups(
                (rollout, examples, rewards), draw, G, config.rl.dynamic_sampling_rounds)
        t2 = time.perf_counter()

        # ── ④ advantages (eq. 3); infrastructure failures are masked, not rewarded 0 ────────
        adv_b = advantages(rewards.rewards, G, grpo_cfg.adv_scale, rewards.valid, grpo_cfg.adv_eps)
        mask_bl = jnp.asarray(rollout.completion_mask_bl) * jnp.asarray(rewards.valid, jnp.float32)[:, None]

        # ── ⑤ GRPO update: π_old recomputed by the trainer (ratio 1 at the first of μ steps);
        #    the sampler's own log-probs give the sampler/trainer mismatch metric ───────────
        old_logp = logprob_fn(state.params, state.model_state, rollout.tokens_bl, mask_bl)
        ref_logp = (logprob_fn(ref_params, state.model_state, rollout.tokens_bl, mask_bl)
                    if ref_params is not None else jnp.zeros_like(old_logp))
        train_batch = TrainBatch(
            tokens_bl=rollout.tokens_bl, completion_mask_bl=mask_bl, advantages_b=jnp.asarray(adv_b),
            old_logp_bl=old_logp, ref_logp_bl=ref_logp,
            truncated_b=(rollout.finish_reason_b == FINISH_LENGTH).astype(jnp.float32),
            sampler_logp_bl=rollout.logp_policy_bl * mask_bl,
        )
        validate_batch(train_batch, G, grpo_cfg.micro_batches)
        train_batch = shard_batch(train_batch, mesh)
        for _ in range(grpo_cfg.mu):
            with jax.transfer_guard("disallow"):  # everything the step needs is already on device
                state, step_metrics = update(state, train_batch)
        step_metrics = jax.device_get(step_metrics)
        check_finite(step_metrics, step)
        if ref_params is not None and config.rl.ref_refresh_every and \
                (step + 1) % config.rl.ref_refresh_every == 0:
            ref_params = _copy(state.params)
        t3 = time.perf_counter()

        # ── what a researcher watches ───────────────────────────────────────────────────────
        lengths = np.asarray(rollout.completion_lens_b)
        n_tokens = float(lengths.sum())
        scalars = {
            "reward/total": float(np.mean(rewards.rewards)),
            **{f"reward/{k}": float(np.mean(v)) for k, v in rewards.components.items()},
            "reward/invalid_frac": float(1.0 - np.mean(rewards.valid)),
            "rollout/length_mean": float(lengths.mean()),
            "rollout/length_max": float(lengths.max()),
            "rollout/truncated_frac": float(np.mean(np.asarray(rollout.finish_reason_b) == FINISH_LENGTH)),
            "rollout/reflection_rate": reflection_rate(rollout.texts),
            "rollout/zero_var_groups": zero_variance_fraction(rewards.rewards, G, rewards.valid),
            **{f"grpo/{k}": float(v) for k, v in step_metrics.items()
               if k != "kl" or grpo_cfg.beta > 0},  # without π_ref (β = 0) there is no KL to show
            "time/rollout_s": t_rollout, "time/reward_s": t_reward, "time/update_s": t3 - t2,
            "time/step_s": t3 - t0, "throughput/rollout_tokens_per_s": n_tokens / max(t_rollout, 1e-9),
            "rollout/dynamic_sampling_rounds": extra_rounds,
        }
        done = step + 1
        if done % config.eval.every == 0 or done == config.rl.steps:
            scalars.update(run_eval(done))
        writer.write(done, scalars)
        if done % config.rl.samples_every == 0:
            writer.write_samples(done, [
                {"question": examples[i]["question"], "completion": rollout.texts[i],
                 "reward": float(rewards.rewards[i]), "status": rewards.status[i]}
                for i in range(0, len(examples), G)][:4])
        bar.set_postfix(reward=f"{scalars['reward/total']:.2f}",
                        acc=f"{scalars.get('reward/accuracy', float('nan')):.2f}",
                        len=f"{scalars['rollout/length_mean']:.0f}")

        # ── ⑥ checkpoint (async; the loop goes on while it is written) ──────────────────────
        if done % config.checkpoint.every == 0 or done == config.rl.steps:
            ckpt.save(done, {"train": state, "ref": ref_params}, data_state={"prompts": prompts.get_state()})
        history = scalars
    ckpt.close()
    writer.close()
    if is_main and config.rl.steps > 0:
        for path in plot_run(workdir):
            log.info("plot: %s", path)
    return history


def _copy(params):
    return jax.tree.map(lambda x: x.copy(), params)  # same shardings, own buffers


@contextlib.contextmanager
def _reward_server(config):
    urls = [u for u in str(config.reward.urls).split(",") if u.strip()]
    if urls:
        yield urls
        return
    with start_local_server(workers=config.reward.workers) as url:
        yield [url]


def fill_informative_groups(first, draw, group_size: int, max_rounds: int):
    """DAPO dynamic sampling with a fixed batch shape: groups whose rewards all tie carry no gradient,
    so they are replaced by informative groups drawn from up to `max_rounds` fresh rollouts
    (`draw(round) -> (rollout, examples, rewards)`). If too few are found the batch is topped up with
    tied groups (zero advantage, no effect on the update). Returns (rollout, examples, rewards, rounds)."""
    G = group_size
    n_groups = len(first[1]) // G
    informative = lambda src: [(src, g) for g in np.flatnonzero(informative_groups(src[2].rewards, G, src[2].valid))]
    pool = informative(first)
    tied = [(first, g) for g in range(n_groups) if (first, g) not in pool]
    rounds = 0
    while len(pool) < n_groups and rounds < max_rounds:
        rounds += 1
        pool += informative(draw(rounds))
    chosen = (pool + tied)[:n_groups]

    def rows(x, g):
        return x[g * G : (g + 1) * G]

    arrays = {f.name: np.concatenate([rows(np.asarray(getattr(src[0], f.name)), g) for src, g in chosen])
              for f in dataclasses.fields(Rollout) if f.name != "texts"}
    rollout = Rollout(**arrays, texts=[t for src, g in chosen for t in rows(src[0].texts, g)])
    examples = [e for src, g in chosen for e in rows(src[1], g)]
    cat = lambda get: np.concatenate([rows(np.asarray(get(src[2])), g) for src, g in chosen])
    rewards = RewardBatch(
        rewards=cat(lambda r: r.rewards),
        components={k: cat(lambda r, k=k: r.components[k]) for k in first[2].components},
        status=[x for src, g in chosen for x in rows(src[2].status, g)],
        valid=cat(lambda r: r.valid),
        details=[x for src, g in chosen for x in rows(src[2].details, g)],
    )
    return rollout, examples, rewards, rounds
