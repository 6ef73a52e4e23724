"""Hugging Face checkpoint import/export for Qwen2, Llama and DeepSeek-V3.

    cfg, graphdef, state = load_hf("/ckpt/Qwen2.5-0.5B", mesh)    # config.json + *.safetensors
    save_hf("/out", cfg, state)                                   # transformers loads it back

Import is validated before anything is placed: every tensor the model needs must be in the
checkpoint with the expected shape, and every checkpoint tensor must be used; otherwise one error
lists each missing / extra / mis-shaped tensor with the shape expected. Tensors are read lazily
(safetensors memory-mapped, one slice per device shard) and placed with
`jax.make_array_from_callback`, so no device ever holds a full copy of a sharded parameter.

The same path serves GGUF files (gguf_io): anything with `names() / shape(name) / read(name, index)`
and HF tensor names is a `TensorSource`.

Name mapping (r1jax parameter path -> HF tensor; r1jax matrices are [in, out], HF's [out, in]):
    embed_tokens.embedding                   model.embed_tokens.weight
    layers.{i}.<module>.kernel / .bias       model.layers.{i}.<module>.weight (transposed) / .bias
    layers.{i}.<norm>.scale                  model.layers.{i}.<norm>.weight
    layers.{i}.mlp.gate.e_score_correction_bias   (same name; the router's selection bias)
    layers.{i}.mlp.w_gate / w_up / w_down    model.layers.{i}.mlp.experts.{e}.gate_proj / up_proj /
                                             down_proj.weight, transposed and stacked over e
    norm.scale, lm_head.kernel               model.norm.weight, lm_head.weight
    mtp.{k}.block.<as a layer>               model.layers.{L+k}.<...> (DeepSeek-V3 MTP modules)
    mtp.{k}.enorm / hnorm / eh_proj / norm   model.layers.{L+k}.enorm / hnorm / eh_proj / shared_head.norm
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from r1jax.model.config import ModelConfig, RopeScaling

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "deepseek_v3")

# ModelConfig field -> the config.json key it comes from (to name the HF field in errors)
_HF_KEY = {
    "arch": "model_type", "vocab_size": "vocab_size", "d_model": "hidden_size",
    "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim", "mlp_dim": "intermediate_size", "rms_eps": "rms_norm_eps",
    "rope_theta": "rope_theta", "rope_scaling": "rope_parameters", "rope_interleave": "rope_interleave",
    "max_position_embeddings": "max_position_embeddings", "qkv_bias": "attention_bias",
    "o_bias": "attention_bias", "tie_word_embeddings": "tie_word_embeddings", "hidden_act": "hidden_act",
    "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim", "v_head_dim": "v_head_dim",
    "n_routed_experts": "n_routed_experts", "n_shared_experts": "n_shared_experts",
    "n_experts_per_tok": "num_experts_per_tok", "moe_mlp_dim": "moe_intermediate_size",
    "first_k_dense": "first_k_dense_replace", "moe_layer_freq": "moe_layer_freq", "n_group": "n_group",
    "topk_group": "topk_group", "norm_topk_prob": "norm_topk_prob",
    "routed_scaling_factor": "routed_scaling_factor", "scoring_func": "scoring_func",
    "topk_method": "topk_method", "n_mtp": "num_nextn_predict_layers", "init_std": "initializer_range",
}
# non-parameter buffers some checkpoints carry; recomputed from the config
_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")
# DeepSeek-V3's MTP layers store copies of the shared embedding and output head
_MTP_SHARED_COPY = re.compile(r"model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight")


class TensorSource(Protocol):
    """Named tensors in HF layout, read lazily; `index` is a tuple of slices (None = whole tensor)."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray: ...


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: every problem is listed, nothing is loaded."""


# ============================================================================ config.json <-> ModelConfig


def config_from_hf(hf: dict[str, Any], *, has_mtp_weights: bool | None = None, dtype: str | None = None,
                   param_dtype: str | None = None) -> ModelConfig:
    """ModelConfig from a config.json dict. Unsupported values raise naming the config.json key.

    `has_mtp_weights`: transformers does not implement (or save) DeepSeek's MTP modules although
    its config keeps `num_nextn_predict_layers`; the importer passes whether the checkpoint holds
    them, and MTP is built only then. None trusts the config.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json model_type={model_type!r} is not supported; supported: "
                         f"{SUPPORTED_MODEL_TYPES}")

    def bad(key, why):
        raise ValueError(f"config.json {key}={hf.get(key)!r}: {why}")

    if hf.get("quantization_config"):
        fp8_block_size(hf)  # FP8 block-scaled weights (DeepSeek-V3's release) load dequantised; others raise
    if hf.get("mlp_bias"):
        bad("mlp_bias", "MLP biases are not supported")
    if hf.get("use_sliding_window"):
        bad("use_sliding_window", "sliding-window attention is not supported")
    if hf.get("pretraining_tp", 1) not in (1, None):
        bad("pretraining_tp", "only 1 (no tensor-parallel weight slicing) is supported")

    def need(key):
        if key not in hf:
            raise ValueError(f"config.json is missing {key!r} (model_type={model_type})")
        return hf[key]

    n_heads = int(need("num_attention_heads"))
    fields: dict[str, Any] = dict(
        arch=model_type,
        vocab_size=int(need("vocab_size")),
        d_model=int(need("hidden_size")),
        n_layers=int(need("num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        mlp_dim=int(need("intermediate_size")),
        rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=hf.get("hidden_act", "silu"),
        init_std=float(hf.get("initializer_range", 0.02)),
    )
    fields["rope_theta"], fields["rope_scaling"] = _rope_from_hf(hf)
    if model_type in ("llama", "qwen2"):
        head_dim = hf.get("head_dim")
        fields["head_dim"] = None if head_dim in (None, fields["d_model"] // n_heads) else int(head_dim)
        if model_type == "qwen2":  # Qwen2 always has q/k/v biases and never an o bias
            fields.update(qkv_bias=True, o_bias=False)
        else:
            bias = bool(hf.get("attention_bias", False))
            fields.update(qkv_bias=bias, o_bias=bias)
    else:
        bias = bool(hf.get("attention_bias", False))
        n_mtp = int(hf.get("num_nextn_predict_layers", 0) or 0)
        if has_mtp_weights is not None and not has_mtp_weights:
            n_mtp = 0
        fields.update(
            attention="mla", qkv_bias=bias, o_bias=bias,
            rope_interleave=bool(hf.get("rope_interleave", True)),
            q_lora_rank=None if hf.get("q_lora_rank") is None else int(hf["q_lora_rank"]),
            kv_lora_rank=int(need("kv_lora_rank")),
            qk_nope_head_dim=int(need("qk_nope_head_dim")),
            qk_rope_head_dim=int(need("qk_rope_head_dim")),
            v_head_dim=int(need("v_head_dim")),
            n_routed_experts=int(need("n_routed_experts")),
            n_shared_experts=int(hf.get("n_shared_experts") or 0),
            n_experts_per_tok=int(need("num_experts_per_tok")),
            moe_mlp_dim=int(need("moe_intermediate_size")),
            first_k_dense=int(hf.get("first_k_dense_replace", 0)),
            moe_layer_freq=int(hf.get("moe_layer_freq", 1)),
            n_group=int(hf.get("n_group") or 1),
            topk_group=int(hf.get("topk_group") or 1),
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
            scoring_func=hf.get("scoring_func", "sigmoid"),
            topk_method=hf.get("topk_method", "noaux_tc"),
            n_mtp=n_mtp,
        )
    if dtype is not None:
        fields["dtype"] = dtype
    if param_dtype is not None:
        fields["param_dtype"] = param_dtype
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        m = re.match(r"(?:ModelConfig|RopeScaling)\.(\w+)", str(e))
        key = _HF_KEY.get(m.group(1), m.group(1)) if m else "?"
        raise ValueError(f"config.json {key}: not supported by r1jax ({e})") from e


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling]:
    """transformers >= 5 writes `rope_parameters` (theta inside); older files rope_theta + rope_scaling."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if not params:
        params = dict(legacy)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        raise ValueError(f"config.json rope_parameters.rope_type={rope_type!r} is not supported; "
                         "supported: default, linear, llama3, yarn")
    if rope_type == "default":
        return theta, RopeScaling()
    known = {f.name for f in dataclasses.fields(RopeScaling)} - {"type"}
    kwargs = {}
    for key, value in params.items():
        if key in ("attention_factor", "partial_rotary_factor") and value not in (None, 1.0):
            raise ValueError(f"config.json rope_parameters.{key}={value!r} is not supported")
        if key in known and value is not None:
            kwargs[key] = value
    try:
        return theta, RopeScaling(type=rope_type, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.json rope_parameters: not supported by r1jax ({e})") from e


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for a ModelConfig: the transformers >= 5 layout (rope_parameters) plus the legacy
    rope_theta / rope_scaling keys, which transformers 4.x reads instead (without them it silently uses
    rope_theta=10000 and no scaling). transformers 5 and load_hf read rope_parameters first."""
    arch_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "deepseek_v3": "DeepseekV3ForCausalLM"}[cfg.arch]
    rope = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_scaling.type}
    rs = cfg.rope_scaling
    if rs.type in ("linear", "llama3", "yarn"):
        rope["factor"] = rs.factor
    if rs.type in ("llama3", "yarn"):
        rope["original_max_position_embeddings"] = rs.original_max_position_embeddings
    if rs.type == "llama3":
        rope.update(low_freq_factor=rs.low_freq_factor, high_freq_factor=rs.high_freq_factor)
    if rs.type == "yarn":
        rope.update(beta_fast=rs.beta_fast, beta_slow=rs.beta_slow, mscale=rs.mscale,
                    mscale_all_dim=rs.mscale_all_dim, truncate=rs.truncate)
    hf: dict[str, Any] = {
        "architectures": [arch_class], "model_type": cfg.arch, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads if cfg.attention == "gqa" else cfg.n_heads,
        "intermediate_size": cfg.mlp_dim, "rms_norm_eps": cfg.rms_eps, "rope_parameters": rope,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": cfg.hidden_act,
        "initializer_range": cfg.init_std, "dtype": cfg.param_dtype, "rope_theta": cfg.rope_theta,
    }
    if rs.type != "default":  # "type": what transformers < 4.45 read
        hf["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"}, "type": rs.type}
    if cfg.arch == "qwen2":
        if not cfg.qkv_bias or cfg.o_bias:
            raise ValueError("qwen2 export needs qkv_bias=True and o_bias=False (Qwen2's fixed layout)")
        hf.update(use_sliding_window=False)
    elif cfg.qkv_bias != cfg.o_bias:
        raise ValueError(f"{cfg.arch} export: HF has one attention_bias flag, but qkv_bias={cfg.qkv_bias} "
                         f"and o_bias={cfg.o_bias}")
    else:
        hf["attention_bias"] = cfg.qkv_bias
    if cfg.attention == "gqa":
        hf["head_dim"] = cfg.d_head
    else:
        hf.update(
            q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, head_dim=cfg.qk_rope_head_dim,
            rope_interleave=cfg.rope_interleave, n_routed_experts=cfg.n_routed_experts,
            n_shared_experts=cfg.n_shared_experts, num_experts_per_tok=cfg.n_experts_per_tok,
            moe_intermediate_size=cfg.moe_mlp_dim, first_k_dense_replace=cfg.first_k_dense,
            n_group=cfg.n_group, topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
            routed_scaling_factor=cfg.routed_scaling_factor, num_nextn_predict_layers=cfg.n_mtp,
        )
    return hf


# ============================================================================ the parameter <-> tensor plan


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How one r1jax parameter is made of HF tensors.

    kind: "copy" (same layout), "t" (2-d transpose), "stack_t" (experts: stack of transposed matrices).
    """

    path: tuple
    names: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]  # the r1jax parameter's shape

    def hf_shape(self) -> tuple[int, ...]:
        if self.kind == "copy":
            return self.shape
        if self.kind == "t":
            return self.shape[::-1]
        return self.shape[1:][::-1]


_EXPERT_MATS = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}


def _hf_layer_name(prefix: str, rest: Sequence[str]) -> tuple[str, str]:
    """('self_attn', 'q_proj', 'kernel') -> ('<prefix>.self_attn.q_proj.weight', 't')."""
    *mods, leaf = rest
    base = ".".join([prefix, *mods])
    if leaf == "kernel":
        return base + ".weight", "t"
    if leaf == "scale":
        return base + ".weight", "copy"
    if leaf in ("bias", "e_score_correction_bias"):
        return f"{base}.{leaf}", "copy"
    raise ValueError(f"no HF name rule for parameter leaf {leaf!r} under {prefix}")


def _entry(path: tuple, shape: tuple[int, ...], cfg: ModelConfig) -> _Entry:
    keys = [str(p) for p in path]
    if keys == ["embed_tokens", "embedding"]:
        return _Entry(path, ("model.embed_tokens.weight",), "copy", shape)
    if keys == ["norm", "scale"]:
        return _Entry(path, ("model.norm.weight",), "copy", shape)
    if keys == ["lm_head", "kernel"]:
        return _Entry(path, ("lm_head.weight",), "t", shape)
    if keys[0] == "layers":
        prefix, rest = f"model.layers.{keys[1]}", keys[2:]
    elif keys[0] == "mtp" and keys[2] == "block":
        prefix, rest = f"model.layers.{cfg.n_layers + int(keys[1])}", keys[3:]
    elif keys[0] == "mtp":
        prefix = f"model.layers.{cfg.n_layers + int(keys[1])}"
        rest = ["shared_head", *keys[2:]] if keys[2] == "norm" else keys[2:]
    else:
        raise ValueError(f"no HF name rule for r1jax parameter {'.'.join(keys)}")
    if rest[-1] in _EXPERT_MATS and rest[:-1] == ["mlp"]:
        names = tuple(f"{prefix}.mlp.experts.{e}.{_EXPERT_MATS[rest[-1]]}.weight" for e in range(shape[0]))
        return _Entry(path, names, "stack_t", shape)
    name, kind = _hf_layer_name(prefix, rest)
    return _Entry(path, (name,), kind, shape)


def _plan(abstract_state, cfg: ModelConfig) -> list[_Entry]:
    return [_entry(path, tuple(v.shape), cfg) for path, v in nnx.to_flat_state(abstract_state)]


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint for `cfg` must hold, with its shape (shapes only, no memory)."""
    from r1jax.model.api import abstract_model

    return {name: e.hf_shape() for e in _plan(abstract_model(cfg)[1], cfg) for name in e.names}


class ArraySource:
    """A TensorSource over in-memory HF-named arrays (tests, conversions done in NumPy)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self._tensors = tensors

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        t = self._tensors[name]
        return np.asarray(t if index is None else t[index])


def _check(plan: list[_Entry], source: TensorSource, cfg: ModelConfig, where: str) -> set[str]:
    """Raises CheckpointError listing every missing / mis-shaped / extra tensor; returns the names
    that are present but deliberately unused (a tied lm_head copy, MTP copies of shared weights)."""
    available = {n: tuple(source.shape(n)) for n in source.names()}
    problems, used = [], set()
    for e in plan:
        for name in e.names:
            used.add(name)
            if name not in available:
                problems.append(f"missing tensor {name!r} (expected shape {e.hf_shape()})")
            elif available[name] != e.hf_shape():
                problems.append(f"tensor {name!r} has shape {available[name]}, expected {e.hf_shape()}")
    ignored = set()
    for name in sorted(set(available) - used):
        if _IGNORED_TENSORS.match(name):
            ignored.add(name)
        elif name == "lm_head.weight" and cfg.tie_word_embeddings:
            ignored.add(name)  # checked below: must equal the embedding it is tied to
        elif cfg.n_mtp and _MTP_SHARED_COPY.fullmatch(name) and int(name.split(".")[2]) >= cfg.n_layers:
            ignored.add(name)  # DeepSeek-V3's MTP layers repeat the shared embedding and output head
        else:
            problems.append(f"unexpected tensor {name!r} {available[name]} (unused by the {cfg.arch} model)")
    if "lm_head.weight" in ignored and not problems:
        if not np.array_equal(source.read("lm_head.weight"), source.read("model.embed_tokens.weight")):
            problems.append("tie_word_embeddings=true, but lm_head.weight != model.embed_tokens.weight")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the model config "
                              f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return ignored


def _reader(entry: _Entry, source: TensorSource, dtype) -> Callable[[tuple], np.ndarray]:
    """The make_array_from_callback callback: reads only the slice a device shard needs."""

    def norm(index):
        return tuple(slice(None) if i is None else i for i in index) + (slice(None),) * (
            len(entry.shape) - len(index))

    def read(index):
        index = norm(index)
        if entry.kind == "copy":
            out = source.read(entry.names[0], index)
        elif entry.kind == "t":
            out = source.read(entry.names[0], index[::-1]).T
        else:
            experts = range(entry.shape[0])[index[0]]
            sub = index[1:][::-1]
            out = np.stack([source.read(entry.names[e], sub).T for e in experts])
        return np.ascontiguousarray(out, dtype=dtype)

    return read


def load_source(cfg: ModelConfig, source: TensorSource, mesh=None, *, rng_seed: int = 0,
                where: str = "checkpoint"):
    """(graphdef, state) of a Transformer(cfg) filled from `source`, each array placed directly in
    its sharding on `mesh` (default: one device). Validation happens before any array is built."""
    from r1jax.model.api import abstract_model, state_shardings
    from r1jax.parallel.mesh import single_device_mesh

    mesh = single_device_mesh() if mesh is None else mesh
    graphdef, abstract = abstract_model(cfg, rng_seed)
    plan = _plan(abstract, cfg)
    _check(plan, source, cfg, where)
    shardings = dict(nnx.to_flat_state(state_shardings(abstract, mesh)))
    flat = []
    for entry, (path, var) in zip(plan, nnx.to_flat_state(abstract)):
        sharding = shardings[path]
        sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
        arr = jax.make_array_from_callback(entry.shape, sharding, _reader(entry, source, var.dtype))
        flat.append((path, var.replace(arr)))
    return graphdef, nnx.from_flat_state(flat)


# ============================================================================ safetensors directories


# safetensors dtype names <-> numpy dtypes. Read and written here (not with safetensors.numpy, which
# has no bfloat16) so bf16/fp8 checkpoints load through ml_dtypes, memory-mapped, one slice at a time.
_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _safetensors_index(path: str) -> dict[str, tuple[np.dtype, tuple[int, ...], int]]:
    """name -> (dtype, shape, absolute byte offset) from a .safetensors header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    size = os.path.getsize(path)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        dtype, shape = _ST_DTYPES[meta["dtype"]], tuple(meta["shape"])
        start, end = (8 + n + o for o in meta["data_offsets"])
        if end - start != math.prod(shape) * dtype.itemsize or end > size:
            raise CheckpointError(f"{path}: tensor {name!r} {shape} {meta['dtype']}: byte range "
                                  f"{meta['data_offsets']} does not match its shape or the file size")
        out[name] = (dtype, shape, start)
    return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Writes numpy arrays (bfloat16 included) as one .safetensors file, tensors sorted by name."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"write_safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name]).tobytes())


class SafetensorsSource:
    """A directory of *.safetensors shards (with or without model.safetensors.index.json), memory-mapped."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index_path = os.path.join(self.directory, "model.safetensors.index.json")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            found = glob.glob(os.path.join(self.directory, "*.safetensors"))
            files = sorted(os.path.basename(p) for p in found)
        if not files:
            raise FileNotFoundError(f"{self.directory}: no *.safetensors files")
        self._tensors: dict[str, tuple[str, np.dtype, tuple[int, ...], int]] = {}
        for fname in files:
            path = os.path.join(self.directory, fname)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{index_path} names {fname}, which does not exist")
            for name, (dtype, shape, start) in _safetensors_index(path).items():
                if name in self._tensors:
                    raise CheckpointError(f"{self.directory}: tensor {name!r} is in both "
                                          f"{self._tensors[name][0]} and {fname}")
                self._tensors[name] = (path, dtype, shape, start)

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name][2]

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        path, dtype, shape, start = self._tensors[name]
        if not math.prod(shape):
            return np.zeros(shape, dtype)
        view = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
        return np.array(view if index is None else view[index])  # copies only the slice asked for


# ============================================================================ FP8 block-scaled checkpoints


def fp8_block_size(hf: dict) -> tuple[int, int] | None:
    """(rows, cols) of the scale blocks of an FP8 checkpoint's config.json, None when unquantised.

    DeepSeek-V3/R1 as released: `quantization_config = {"quant_method": "fp8", "fmt": "e4m3",
    "weight_block_size": [128, 128], ...}`; most linear weights are float8_e4m3fn [out, in] with a
    float32 `<name>_scale_inv` [ceil(out/128), ceil(in/128)]. Any other quantisation raises naming the key."""
    q = hf.get("quantization_config")
    if not q:
        return None
    if q.get("quant_method") != "fp8" or q.get("fmt", "e4m3") != "e4m3":
        raise ValueError(f"config.json quantization_config={q!r}: only FP8 (quant_method 'fp8', fmt 'e4m3') with "
                         "block scales is supported")
    block = q.get("weight_block_size")
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0
                                                                         for b in block)):
        raise ValueError(f"config.json quantization_config.weight_block_size={block!r}: need [rows, cols] > 0")
    return int(block[0]), int(block[1])


SCALE_SUFFIX = "_scale_inv"


class Fp8BlockSource:
    """A TensorSource that dequantises FP8 weights as they are read: w = fp8.astype(float32) * scale_inv,
    each scale covering a block of `block` = (rows, cols) elements of the [out, in] HF weight (edge blocks
    partial). Only the slice asked for is read and dequantised (one device shard at a time), in float32;
    the loader then casts to the parameter dtype. The `*_scale_inv` tensors are consumed, not listed."""

    def __init__(self, source: TensorSource, block: tuple[int, int], where: str = "checkpoint"):
        self.source, self.block = source, block
        names = set(source.names())
        self._scaled = {n[: -len(SCALE_SUFFIX)] for n in names if n.endswith(SCALE_SUFFIX)}
        problems = []
        for w in sorted(self._scaled):
            if w not in names:
                problems.append(f"scale {w + SCALE_SUFFIX!r} has no weight {w!r}")
                continue
            shape = tuple(source.shape(w))
            want = tuple(-(-d // b) for d, b in zip(shape, block))
            if len(shape) != 2 or tuple(source.shape(w + SCALE_SUFFIX)) != want:
                problems.append(f"scale {w + SCALE_SUFFIX!r} has shape {tuple(source.shape(w + SCALE_SUFFIX))}; "
                                f"weight {w!r} {shape} in blocks of {block} needs {want}")
        if problems:
            raise CheckpointError(f"{where}: FP8 block scales do not match their weights:\n  " + "\n  ".join(problems))
        self._names = sorted(n for n in names if not (n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in names))

    def names(self) -> list[str]:
        return self._names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        if name not in self._scaled:
            return self.source.read(name, index)
        shape = tuple(self.source.shape(name))
        index = tuple(index or ()) + (slice(None),) * (2 - len(index or ()))
        ranges = [s.indices(d) for s, d in zip(index, shape)]
        if any(step != 1 for _, _, step in ranges):  # not a shard slice: dequantise all, then index
            return self.read(name)[index]
        w = self.source.read(name, index).astype(np.float32)
        scale_index = tuple(slice(a // b, -(-b_stop // b)) for (a, b_stop, _), b in zip(ranges, self.block))
        scale = self.source.read(name + SCALE_SUFFIX, scale_index).astype(np.float32)
        for axis, ((a, stop, _), b) in enumerate(zip(ranges, self.block)):
            offset = a - (a // b) * b
            scale = np.repeat(scale, b, axis=axis).take(range(offset, offset + stop - a), axis=axis)
        return w * scale


def load_hf(directory: str | os.PathLike, mesh=None, *, dtype: str | None = None,
            param_dtype: str | None = None, rng_seed: int = 0):
    """(cfg, graphdef, state) from an HF directory (config.json + safetensors), placed sharded on `mesh`.

    An FP8 checkpoint (DeepSeek-V3/R1 as released, `fp8_block_size`) is dequantised while it is read,
    straight to the parameter dtype (`param_dtype`, default float32): no bf16 copy of it is needed."""
    directory = os.fspath(directory)
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{directory}: no config.json")
    with open(cfg_path) as f:
        hf = json.load(f)
    source = SafetensorsSource(directory)
    block = fp8_block_size(hf)
    if block is not None:
        source = Fp8BlockSource(source, block, where=directory)
    n_layers = hf.get("num_hidden_layers")
    has_mtp = any(n.startswith(f"model.layers.{n_layers}.") for n in source.names())
    cfg = config_from_hf(hf, has_mtp_weights=has_mtp, dtype=dtype, param_dtype=param_dtype)
    graphdef, state = load_source(cfg, source, mesh, rng_seed=rng_seed, where=directory)
    return cfg, graphdef, state


# ============================================================================ export


def _host(value) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as one host array."""
    if getattr(value, "is_fully_addressable", True):
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def _to_hf(entry: _Entry, host: np.ndarray) -> dict[str, np.ndarray]:
    if entry.kind == "copy":
        return {entry.names[0]: host}
    if entry.kind == "t":
        return {entry.names[0]: np.ascontiguousarray(host.T)}
    return {name: np.ascontiguousarray(host[i].T) for i, name in enumerate(entry.names)}


def _values(state) -> list[tuple[tuple, Any]]:
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    return [(path, var.get_value() if isinstance(var, nnx.Variable) else var)
            for path, var in nnx.to_flat_state(state)]


def hf_tensors(cfg: ModelConfig, state) -> dict[str, np.ndarray]:
    """The HF-named host tensors of a model state (nnx.State, or an nnx.Module)."""
    out = {}
    for path, value in _values(state):
        out.update(_to_hf(_entry(path, tuple(value.shape), cfg), _host(value)))
    return out


def save_hf(directory: str | os.PathLike, cfg: ModelConfig, state, *, max_shard_bytes: int = 4 << 30) -> None:
    """Writes config.json and model.safetensors, or model-0000i-of-0000n.safetensors plus
    model.safetensors.index.json when larger than `max_shard_bytes`.

    Parameters are gathered to the host one file at a time (peak host memory is about one file).
    With several processes every process must call this (the gathers are collective); process 0
    writes.
    """
    directory = os.fspath(directory)
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(directory, exist_ok=True)
    files, current, size = [], [], 0
    for path, value in _values(state):
        nbytes = math.prod(value.shape) * np.dtype(value.dtype).itemsize
        if current and size + nbytes > max_shard_bytes:
            files.append(current)
            current, size = [], 0
        current.append((path, value))
        size += nbytes
    files.append(current)
    weight_map, total = {}, 0
    for i, group in enumerate(files, start=1):
        fname = "model.safetensors" if len(files) == 1 else f"model-{i:05d}-of-{len(files):05d}.safetensors"
        tensors = {}
        for path, value in group:
            tensors.update(_to_hf(_entry(path, tuple(value.shape), cfg), _host(value)))
        if writer:
            write_safetensors(os.path.join(directory, fname), tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        total += sum(t.nbytes for t in tensors.values())
    if not writer:
        return
    if len(files) > 1:
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)
