"""Building blocks: parameters with logical axes, Linear, RMSNorm, Embed, SwiGLU MLP, RoPE.

Every matrix is stored [in, out] (the transpose of a torch `nn.Linear.weight`), so a Hugging Face
tensor maps to a parameter by one transpose. Each parameter carries its logical axis names in the
variable metadata `out_sharding` (flax's field; read by `nnx.get_partition_spec`), with flax's eager
sharding off: the names are logical, and `api.create_sharded` maps them to the mesh through
`r1jax.parallel.rules` — the one rules table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.model.config import ModelConfig, RopeScaling


def param(value: jax.Array, names: tuple[str | None, ...]) -> nnx.Param:
    """A trainable parameter annotated with logical axis names (one per dimension)."""
    if len(names) != value.ndim:
        raise ValueError(f"param: {len(names)} axis names {names} for a {value.ndim}-d value {value.shape}")
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class KeyStream:
    """Stands in for nnx.Rngs during model construction: `params()` gives fold_in(key, i).

    flax's Rngs advances a counter Variable on every draw; under jit/eval_shape that counter is a
    tracer and each draw costs ~0.1 s in flax 0.12.8 (an error message built for `.sharding` on a
    tracer), minutes for DeepSeek-V3's ~700 matrices. A Python counter costs nothing."""

    def __init__(self, key: jax.Array):
        self.key, self.count = key, 0

    def params(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def normal(rngs: nnx.Rngs | KeyStream, shape, std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias). kernel [in, out] with logical names (in_name, out_name)."""

    def __init__(self, d_in: int, d_out: int, names: tuple[str | None, str | None], cfg: ModelConfig,
                 *, bias: bool = False, rngs: nnx.Rngs):
        self.dtype = cfg.jnp_dtype
        self.kernel = param(normal(rngs, (d_in, d_out), cfg.init_std, cfg.jnp_param_dtype), names)
        self.bias = param(jnp.zeros((d_out,), cfg.jnp_param_dtype), (names[1],)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 (as transformers does), returned in cfg.dtype."""

    def __init__(self, dim: int, cfg: ModelConfig, *, eps: float | None = None):
        self.eps = cfg.rms_eps if eps is None else eps
        self.dtype = cfg.jnp_dtype
        self.scale = param(jnp.ones((dim,), cfg.jnp_param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # transformers casts back to the input dtype before multiplying by the weight
        return (y.astype(self.dtype) * self.scale[...].astype(self.dtype)).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding [vocab, d]; `attend` is the tied unembedding."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = cfg.jnp_dtype
        self.embedding = param(normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, cfg.jnp_param_dtype),
                               ("vocab", "embed"))

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens_bt, axis=0).astype(self.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, hidden: int, *, rngs: nnx.Rngs):
        self.gate_proj = Linear(cfg.d_model, hidden, ("embed", "mlp"), cfg, rngs=rngs)
        self.up_proj = Linear(cfg.d_model, hidden, ("embed", "mlp"), cfg, rngs=rngs)
        self.down_proj = Linear(hidden, cfg.d_model, ("mlp", "embed"), cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(dim: int, theta: float, rs: RopeScaling, max_position_embeddings: int):
    """Inverse frequencies [dim/2] and the cos/sin multiplier (YaRN's attention factor).

    Computed in NumPy at trace time (they are constants); formulas as transformers'
    modeling_rope_utils (default, linear, llama3, yarn)."""
    base = theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    inv = (1.0 / base).astype(np.float32)
    if rs.type == "default":
        return inv, 1.0
    if rs.type == "linear":
        return inv / np.float32(rs.factor), 1.0
    if rs.type == "llama3":
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn: interpolate low frequencies, extrapolate high ones, linear ramp between
    from r1jax.model.config import yarn_mscale

    factor = rs.factor
    if rs.mscale and rs.mscale_all_dim:
        attn_factor = yarn_mscale(factor, rs.mscale) / yarn_mscale(factor, rs.mscale_all_dim)
    else:
        attn_factor = yarn_mscale(factor)

    def corr_dim(rot):
        return dim * np.log(rs.original_max_position_embeddings / (rot * 2 * np.pi)) / (2 * np.log(theta))

    low, high = corr_dim(rs.beta_fast), corr_dim(rs.beta_slow)
    if rs.truncate:
        low, high = np.floor(low), np.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrap = 1 - ramp
    inv_interp = 1.0 / (factor * base)
    inv = inv_interp * (1 - extrap) + (1.0 / base) * extrap
    return inv.astype(np.float32), float(attn_factor)


def rope_cos_sin(positions_bt: jax.Array, cfg: ModelConfig):
    """cos, sin [B, T, rope_dim/2] in float32."""
    inv, attn_factor = rope_inv_freq(cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling,
                                     cfg.max_position_embeddings)
    ang = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv)
    return jnp.cos(ang) * attn_factor, jnp.sin(ang) * attn_factor


def apply_rope(x_bthd: jax.Array, cos_btf: jax.Array, sin_btf: jax.Array, interleave: bool) -> jax.Array:
    """Rotates x [B, T, H, d] (d = 2f). Halves layout (Llama/Qwen): pairs (i, i+f). Interleaved
    layout (DeepSeek): pairs (2i, 2i+1), output de-interleaved to halves as transformers does —
    q and k get the same permutation, so their dot product is unchanged."""
    dtype = x_bthd.dtype
    x = x_bthd.astype(jnp.float32)
    c, s = cos_btf[:, :, None, :], sin_btf[:, :, None, :]
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        f = x.shape[-1] // 2
        x1, x2 = x[..., :f], x[..., f:]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(dtype)
