"""Reward models (DeepSeek-R1 §2.3.4): a Bradley–Terry reward model on preference pairs. The config of
`r1jax rm`.

  r1jax rm --config configs/rm.py:tiny --workdir runs/rm_helpful \\
      --config.policy.path=runs/r1_zero_tiny/base --config.data.path=helpful.jsonl

The preference file is JSONL or Parquet: prompt/chosen/rejected text columns (`data.fields.*`) or
chat-message lists (`data.fields.format=messages`). `rm.view` is what the model reads of a response:
the summary only (helpfulness) or the whole response (harmlessness). The miniature preference data
of the tiny pipeline: `r1jax.data.general.write_preference_files` (helpful.jsonl, harmless.jsonl).

Variants:
  tiny            the helpful reward model of the tiny CPU pipeline (rm.view=summary; the question in
                  the r1_zero prompt the tiny base model knows), held-out pair accuracy on 200 pairs
                  held out from the end of the file.
  tiny_harmless   the harmless reward model (rm.view=response), otherwise the same.
"""

from ml_collections import ConfigDict

from r1jax.data.preferences import PreferenceFieldMap
from r1jax.trainer.config import config_fields, default_sections


def _base() -> ConfigDict:
    c = default_sections(
        shared=("mesh", "model", "policy", "trainer", "optim", "checkpoint"),
        data=dict(path="", eval_path="", n_heldout=0, on_error="fail", template="r1", seq_len=512, batch_size=16,
                  fields=ConfigDict(config_fields(PreferenceFieldMap))),
        rm=dict(view="summary", epochs=1, steps=0, head_init_std=0.0, eval_every=50),
    )
    c.name = "rm"
    c.optim.update(dict(learning_rate=1e-5, warmup_steps=10, weight_decay=0.0, end_lr_ratio=0.1))
    c.checkpoint.every = 50
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "rm_tiny"
    # the question in the R1-Zero prompt: the one the tiny base model saw its instruction tasks in, and half
    # as long as r1's (the reward model's template is its own; the scorer renders every question with it)
    c.data.template = "r1_zero"
    c.data.seq_len = 192
    c.data.batch_size = 16
    c.data.n_heldout = 200
    c.rm.epochs = 1
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 10
    c.rm.eval_every = 25
    c.checkpoint.every = 25
    return c


def _tiny_harmless(c: ConfigDict) -> ConfigDict:
    c = _tiny(c)
    c.name = "rm_tiny_harmless"
    c.rm.view = "response"
    return c


VARIANTS = {"tiny": _tiny, "tiny_harmless": _tiny_harmless}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/rm.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
