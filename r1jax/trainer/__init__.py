"""r1jax.trainer: what every stage shares and no stage owns (it knows nothing of GRPO).

  config.py      the one ml-collections config -> dataclass translation, with start-up checks
  state.py       TrainState and its shardings; optimizer.py: AdamW + schedule + clipping + freezing
  logprobs.py    chunked per-token log-probs / entropies (never the full [B, T, V] logits)
  step.py        make_train_step(objective): micro-batching, finite guard, router-bias update, donation
  nll.py         next-token cross-entropy on packed rows (pretraining, SFT, distillation)
  policy.py      where a policy comes from (a stage's workdir, GGUF, HF) and the record a stage leaves
  session.py     a stage's workdir: mesh, resume, metrics, checkpoints
  supervised.py  the supervised loop (pretraining and SFT)
  generation.py  prompt batches -> Rollout; rewards.py: the reward client and scorer
  evaluation.py  the eval hook: the paper's pass@1 / cons@k / pass@k on a problem set
"""
