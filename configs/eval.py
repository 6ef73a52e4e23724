"""Evaluation as the paper reports it (§3): pass@1 averaged over k samples at T = 0.6, top-p 0.95;
cons@k (votes grouped by mathematical equivalence); unbiased pass@k. The config of `r1jax eval`.

  r1jax eval --config configs/eval.py:gsm8k --config.policy.path=runs/r1_zero_tiny --workdir runs/eval

The problem set is evaluated whole: `data.task` is a procedural task (its held-out split of
data.n_eval problems), gsm8k_test100, humaneval, rg:<name>, or file (data.eval_path or data.path with
the field mapping data.fields).

Variants: tiny (held-out arithmetic), gsm8k (GSM8K-100, boxed answers), humaneval (HumanEval-164).
"""

from ml_collections import ConfigDict

from r1jax.trainer.config import default_sections, task_section


def _base() -> ConfigDict:
    c = default_sections(("mesh", "model", "policy", "rollout", "reward", "eval"), data=task_section(n_train=1))
    c.name = "eval"
    c.report_name = ""  # the report's file name; "" = the task's name
    c.eval.update(dict(k=4, temperature=0.6, top_p=0.95, batch_prompts=16, pass_ks=(1,)))
    c.rollout.update(dict(max_prompt_len=1024, max_new_tokens=256, stop_strings=("</answer>",)))
    c.reward.weights = ConfigDict(dict(accuracy=1.0, format=0.5))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "eval_tiny"
    c.rollout.max_prompt_len = 64
    c.rollout.max_new_tokens = 48
    return c


def _gsm8k(c: ConfigDict) -> ConfigDict:
    c.name = "eval_gsm8k"
    c.data.task = "gsm8k_test100"
    c.data.question_suffix = "Please reason step by step, and put your final answer within \\boxed{}."
    c.eval.k = 8
    c.eval.pass_ks = (1, 8)
    return c


def _humaneval(c: ConfigDict) -> ConfigDict:
    c.name = "eval_humaneval"
    c.data.task = "humaneval"
    c.data.template = "r1_zero"
    c.rollout.max_prompt_len = 2048  # HumanEval prompts are whole functions with docstrings
    c.reward.weights = ConfigDict(dict(accuracy=1.0))
    c.eval.pass_ks = (1,)
    return c


VARIANTS = {"tiny": _tiny, "gsm8k": _gsm8k, "humaneval": _humaneval}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
