"""Rejection sampling (paper §2.3.3) and distillation data from a teacher (§2.4). The config of
`r1jax sample`.

  r1jax sample --config configs/sample.py:tiny --workdir runs/rs --config.policy.path=runs/r1_zero_tiny
  r1jax sft --config configs/sft.py:tiny --config.data.path=runs/rs/sft_data.jsonl \\
            --config.data.template=<stats.json's template> --config.policy.path=...

Variants:
  tiny        k samples per arithmetic training problem from a previous stage's policy, the paper's
              readability filters, at most 2 kept per prompt.
  cold_start  the same, rewriting correct R1-Zero outputs into the readable |special_token| format with
              a summary: the cold-start data of §2.3.1 in miniature (train the SFT with template "r1").
"""

from ml_collections import ConfigDict

from r1jax.trainer.config import default_sections, task_section


def _base() -> ConfigDict:
    c = default_sections(
        ("mesh", "model", "policy", "rollout", "reward"),
        data=task_section(),
        sample=dict(
            split="train",  # which problems: "train" (an SFT set) or "eval"
            k=4,  # samples per prompt
            batch_prompts=16,
            # the readability filters of §2.3.3, by name (r1jax/data/rejection.py), applied in this order
            filters=("mixed_language", "long_paragraph", "code_block"),
            min_language_share=0.9, max_paragraph_chars=1000, allow_code_blocks=False,
            dedupe=True, max_per_prompt=0,  # 0 = no cap
            keep_incorrect=False,
            rewrite="",  # "readable": R1-Zero outputs -> |special_token| reasoning |special_token| summary
        ),
    )
    c.name = "sample"
    c.rollout.update(dict(max_prompt_len=64, max_new_tokens=48, temperature=1.0, top_p=1.0,
                          stop_strings=("</answer>",)))
    c.reward.weights = ConfigDict(dict(accuracy=1.0, format=0.5))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "sample_tiny"
    c.data.n_train = 256
    c.sample.max_per_prompt = 2
    return c


def _cold_start(c: ConfigDict) -> ConfigDict:
    c = _tiny(c)
    c.name = "cold_start_tiny"
    c.sample.rewrite = "readable"
    return c


VARIANTS = {"tiny": _tiny, "cold_start": _cold_start}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/sample.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
