"""GGUF import for the llama and qwen2 architectures (llama.cpp's single-file format).

A GGUF file is turned into exactly what an HF directory gives `hf_io`: an HF-style config dict and
a lazy tensor source with HF tensor names, [out, in] matrices and the rotate-half RoPE layout. So
there is one HF -> r1jax mapping and GGUF is only a different way to read the bytes:

    ckpt = GGUFCheckpoint(path)              # metadata parsed, tensors memory-mapped, nothing dequantised
    ckpt.hf_config                           # {"model_type": "llama", "hidden_size": 576, ...}
    ckpt.chat_template                       # tokenizer.chat_template, or None
    cfg, graphdef, state = load_gguf(path, mesh)   # -> hf_io.load_source(...)

Quantised tensors are dequantised with the `gguf` package, one tensor at a time, when the sharded
array for it is built.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import struct
from typing import Any

import numpy as np

SUPPORTED_ARCHS = ("llama", "qwen2")

# GGUF tensor name (after "blk.N.") -> HF tensor name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


# GGUF value type codes (gguf spec) -> struct format; 8 = string, 9 = array.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest first), i.e. the ggml dims reversed
    qtype: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute byte offset in the file


class _Cursor:
    """Sequential little-endian reads over a memory map. `gguf.GGUFReader` builds a numpy view
    per metadata item and takes ~10 s on a 49k-token vocabulary; this takes well under one."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def scalar(self, fmt: str):
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error as e:
            raise ValueError(f"{self.path}: truncated GGUF file at byte {self.pos}") from e
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        if len(raw) != n:
            raise ValueError(f"{self.path}: truncated GGUF string at byte {self.pos}")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item_type, key) for _ in range(count)]
        if vtype not in _SCALAR_FORMATS:
            raise ValueError(f"{self.path}: metadata {key!r} has unknown GGUF value type {vtype}")
        return self.scalar(_SCALAR_FORMATS[vtype])


def read_gguf_header(path: str) -> tuple[dict[str, Any], dict[str, TensorInfo], np.memmap]:
    """(metadata, tensor infos by GGUF name, the file's bytes memory-mapped)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"), key)
    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        raw_infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
    align = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // align) * align
    infos = {n: TensorInfo(n, s, q, data_start + off) for n, s, q, off in raw_infos}
    return metadata, infos, buf


def hf_tensor_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; unknown names raise."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ValueError(
        f"GGUF tensor {gguf_name!r} has no HF equivalent in the llama/qwen2 mapping "
        f"(known per-layer names: {sorted(_LAYER_NAMES)}; global: {sorted(_GLOBAL_NAMES)})"
    )


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> rotate-half layout).

    llama.cpp's converter maps each head's rows [h0 | h1] (the two halves rotated together) to
    pairs (h0[0], h1[0], h0[1], h1[1], ...); this is its exact inverse.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """A GGUF file seen as an HF checkpoint: `hf_config` plus a lazy `TensorSource` (see hf_io)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        self.metadata, infos, self._buf = read_gguf_header(self.path)
        self.arch = self.metadata.get("general.architecture")
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(
                f"{self.path}: general.architecture={self.arch!r} is not supported; "
                f"supported: {SUPPORTED_ARCHS}"
            )
        if "rope_freqs.weight" in infos:
            raise ValueError(
                f"{self.path}: tensor 'rope_freqs.weight' (Llama-3.1 RoPE scaling) is unsupported"
            )
        self._tensors = {hf_tensor_name(name): info for name, info in infos.items()}
        self.hf_config = self._hf_config()

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    # -- TensorSource protocol (hf_io) ------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        full = self._dequantized(name)
        return full if index is None else full[index]

    # ---------------------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=2)  # noqa: B019 - one tensor is read once per device shard in a row
    def _dequantized(self, name: str) -> np.ndarray:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize

        info = self._tensors[name]
        try:
            qtype = GGMLQuantizationType(info.qtype)
        except ValueError as e:
            raise ValueError(f"{self.path}: tensor {name!r} has unknown ggml type {info.qtype}") from e
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if info.shape[-1] % block:
            raise ValueError(
                f"{self.path}: tensor {name!r}: rows of {info.shape[-1]} are not whole {qtype.name} blocks"
            )
        row_bytes = info.shape[-1] // block * block_bytes
        n_rows = int(np.prod(info.shape[:-1], dtype=np.int64))
        raw = self._buf[info.offset : info.offset + n_rows * row_bytes]
        if raw.size != n_rows * row_bytes:
            raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file")
        try:
            w = dequantize(raw.reshape(n_rows, row_bytes), qtype)
        except NotImplementedError as e:
            raise ValueError(f"{self.path}: tensor {name!r}: gguf cannot dequantise {qtype.name}") from e
        w = np.asarray(w, dtype=np.float32).reshape(info.shape)
        if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.hf_config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            w = unpermute_rope_rows(w, heads)
        w.flags.writeable = False  # cached and shared between device shards
        return w

    def _hf_config(self) -> dict:
        md, a = self.metadata, self.arch

        def need(key):
            if key not in md:
                raise ValueError(f"{self.path}: GGUF metadata key {key!r} is missing")
            return md[key]

        for key in (f"{a}.rope.scaling.type", f"{a}.rope.scaling.factor"):
            if key in md and md[key] not in ("none", 1.0, 0.0):
                raise ValueError(f"{self.path}: {key}={md[key]!r} (RoPE scaling) is not supported from GGUF")
        n_heads = int(need(f"{a}.attention.head_count"))
        hidden = int(need(f"{a}.embedding_length"))
        head_dim = int(md.get(f"{a}.attention.key_length", hidden // n_heads))
        if int(md.get(f"{a}.attention.value_length", head_dim)) != head_dim:
            raise ValueError(f"{self.path}: {a}.attention.value_length differs from key_length; unsupported")
        if f"{a}.rope.dimension_count" in md and int(md[f"{a}.rope.dimension_count"]) != head_dim:
            raise ValueError(f"{self.path}: {a}.rope.dimension_count != head_dim (partial RoPE): unsupported")
        if "model.embed_tokens.weight" not in self._tensors:
            raise ValueError(f"{self.path}: tensor 'token_embd.weight' is missing")
        vocab = self._tensors["model.embed_tokens.weight"].shape[0]
        if int(md.get(f"{a}.vocab_size", vocab)) != vocab:
            raise ValueError(f"{self.path}: {a}.vocab_size={md[f'{a}.vocab_size']} but token_embd.weight "
                             f"has {vocab} rows")
        return {
            "model_type": a,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(need(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(need(f"{a}.block_count")),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(md.get(f"{a}.attention.head_count_kv", n_heads)),
            "head_dim": head_dim,
            "rms_norm_eps": float(need(f"{a}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(md.get(f"{a}.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(md.get(f"{a}.context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self._tensors,
            "hidden_act": "silu",
            "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        }


def load_gguf(path: str | os.PathLike, mesh=None, *, dtype: str | None = None, param_dtype: str | None = None,
              rng_seed: int = 0):
    """(cfg, graphdef, state) from a llama/qwen2 GGUF, parameters placed sharded on `mesh`."""
    from r1jax.model import hf_io

    ckpt = GGUFCheckpoint(path)
    cfg = hf_io.config_from_hf(ckpt.hf_config, dtype=dtype, param_dtype=param_dtype)
    graphdef, state = hf_io.load_source(cfg, ckpt, mesh, rng_seed=rng_seed, where=ckpt.path)
    return cfg, graphdef, state
