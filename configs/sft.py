"""Supervised fine-tuning: R1's cold start (§2.3.1), SFT on rejection-sampled data (§2.3.3), and
distillation of a dense student on a teacher's outputs (§2.4). The config of `r1jax sft`.

  r1jax sft --config configs/sft.py:tiny --workdir runs/cold_start \\
      --config.policy.path=runs/r1_zero_tiny/base --config.data.path=cold_start.jsonl

The SFT file is JSONL or Parquet: prompt/response columns (`data.fields.question` / `.response`) or
chat messages (`data.fields.format=messages`). The loss covers the response tokens only.

Variants:
  tiny      the tiny CPU policy of the R1-Zero run (a previous stage's workdir), readable r1 format,
            held-out loss and pass@1 on arithmetic problems.
"""

from ml_collections import ConfigDict

from r1jax.data.readers import SFTFieldMap
from r1jax.trainer.config import config_fields, default_sections, task_section


def _base() -> ConfigDict:
    c = default_sections(
        data=dict(path="", eval_path="", n_heldout=0, on_error="fail", template="r1", seq_len=512, batch_size=8,
                  pack=True, truncation="truncate",
                  fields=ConfigDict(config_fields(SFTFieldMap))),
        sft=dict(epochs=2, steps=0),
        # a problem set for the paper's evaluation during SFT; task="" = held-out loss only
        eval_task=task_section(prompts=False, task="", n_train=1),
    )
    c.name = "sft"
    c.optim.update(dict(learning_rate=1e-5, warmup_steps=10, weight_decay=0.0, end_lr_ratio=0.1))
    c.eval.update(dict(every=50, k=4, temperature=0.6, top_p=0.95, batch_prompts=16))
    c.checkpoint.every = 50
    c.reward.weights = ConfigDict(dict(accuracy=1.0, format=0.5))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "sft_tiny"
    c.data.seq_len = 256
    c.data.batch_size = 8
    c.data.n_heldout = 16
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 5
    c.eval.every = 25
    c.eval_task.task = "arithmetic"
    c.eval_task.n_eval = 32
    c.rollout.update(dict(max_prompt_len=160, max_new_tokens=64))
    c.checkpoint.every = 25
    return c


VARIANTS = {"tiny": _tiny}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/sft.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
