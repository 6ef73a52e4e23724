"""FP8 checkpoints as DeepSeek-V3/R1 are released: float8_e4m3fn linear weights with float32
`<name>_scale_inv` block scales (quantization_config.weight_block_size), dequantised at load.

A tiny DeepSeek-V3 model is quantised here with torch (block 16, shapes that do not divide by it, so
edge blocks are partial), written with safetensors.torch, and loaded with load_hf: every parameter must
equal a NumPy float64 dequantisation of the stored bytes, on one device and sharded over 8, and the
forward must equal that of the same dequantised weights saved as plain float32 (and differ from the
unquantised model only by the fp8 rounding).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from flax import nnx  # noqa: E402

from r1jax.model import api, hf_io  # noqa: E402
from r1jax.model.config import get_variant  # noqa: E402
from r1jax.parallel.mesh import MeshConfig, make_mesh  # noqa: E402

BLOCK = (16, 16)
# d_model 72, kv_a out 40 (kv_lora 32 + rope 8), q_b out 4 x 24: none a multiple of 16
CFG = dataclasses.replace(get_variant("tiny_moe"), d_model=72, n_mtp=0, init_std=0.05)
TOKENS_BT = np.array([[3, 17, 99, 42, 7, 120, 64, 5], [11, 2, 2, 76, 31, 9, 100, 45]], np.int32)


def _quantised(name: str, t: np.ndarray) -> bool:
    """Which tensors DeepSeek's release stores in fp8: the linear weights of attention and MLPs (not the
    embedding, output head, norms or router)."""
    return t.ndim == 2 and name.endswith("proj.weight")


def _quantise(w: np.ndarray):
    """torch fp8 e4m3 with one float32 scale per BLOCK (amax / 448), as DeepSeek's fp8 cast does."""
    rows, cols = w.shape
    br, bc = -(-rows // BLOCK[0]), -(-cols // BLOCK[1])
    scale = np.zeros((br, bc), np.float32)
    q = torch.zeros(w.shape, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK[0]:(i + 1) * BLOCK[0], j * BLOCK[1]:(j + 1) * BLOCK[1]]
            s = np.float32(max(np.abs(blk).max(), 1e-12) / 448.0)
            scale[i, j] = s
            q[i * BLOCK[0]:(i + 1) * BLOCK[0], j * BLOCK[1]:(j + 1) * BLOCK[1]] = (
                torch.from_numpy(blk / s).to(torch.float8_e4m3fn))
    return q, torch.from_numpy(scale)


def _reference(q, scale) -> np.ndarray:
    """NumPy float64 dequantisation: each stored fp8 value times its block's scale."""
    w = q.to(torch.float32).numpy().astype(np.float64)  # fp8 -> f32 is exact
    s = np.kron(scale.numpy().astype(np.float64), np.ones(BLOCK))[: w.shape[0], : w.shape[1]]
    return w * s


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    _, state = api.create_sharded(CFG, make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1]), rng_seed=0)
    original = hf_io.hf_tensors(CFG, state)
    fp8, reference = {}, {}
    for name, t in original.items():
        if _quantised(name, t):
            q, s = _quantise(t.astype(np.float32))
            fp8[name], fp8[name + "_scale_inv"] = q, s
            reference[name] = _reference(q, s)
            # e4m3 keeps 3 mantissa bits: within half an ulp (2^-4 relative), or 2^-10 of the scale if subnormal
            bound = np.maximum(2.0**-4 * np.abs(t), 2.0**-10 * np.kron(s.numpy(), np.ones(BLOCK))[: t.shape[0],
                                                                                                 : t.shape[1]])
            assert np.all(np.abs(reference[name] - t) <= bound * (1 + 1e-6)), name
        else:
            fp8[name] = torch.from_numpy(np.array(t))
            reference[name] = t.astype(np.float64)
    assert sum(t.dtype == torch.float8_e4m3fn for t in fp8.values()) >= 10
    hf = hf_io.config_to_hf(CFG)
    dirs = {k: root / k for k in ("fp8", "dequantised", "original")}
    for d in dirs.values():
        d.mkdir()
    safetensors_torch.save_file(fp8, str(dirs["fp8"] / "model.safetensors"), metadata={"format": "pt"})
    (dirs["fp8"] / "config.json").write_text(json.dumps({**hf, "quantization_config": {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(BLOCK)}}))
    for key, tensors in (("dequantised", reference), ("original", original)):
        hf_io.write_safetensors(str(dirs[key] / "model.safetensors"),
                                {n: t.astype(np.float32) for n, t in tensors.items()})
        (dirs[key] / "config.json").write_text(json.dumps(hf))
    return dirs, reference


def _forward(cfg, graphdef, state):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(TOKENS_BT.shape[1]), TOKENS_BT.shape)
    hidden, _, _ = model(jnp.asarray(TOKENS_BT), positions)
    return np.asarray(model.logits(hidden), np.float64)


def test_fp8_weights_load_as_their_dequantisation(checkpoints):
    dirs, reference = checkpoints
    cfg, _, state = hf_io.load_hf(dirs["fp8"])
    assert cfg.param_dtype == "float32" and cfg.n_layers == CFG.n_layers
    loaded = hf_io.hf_tensors(cfg, state)
    assert set(loaded) == set(reference)  # the *_scale_inv tensors are consumed, not parameters
    n_partial = 0
    for name, ref in reference.items():
        # fp8 (4 mantissa bits) x a float32 scale is exact in float64: one rounding to float32 either way
        np.testing.assert_array_equal(loaded[name], ref.astype(np.float32), err_msg=name)
        n_partial += any(d % b for d, b in zip(ref.shape, BLOCK)) and name + "_scale_inv" in _names(dirs["fp8"])
    assert n_partial >= 3  # edge blocks were exercised


def _names(directory):
    return set(hf_io.SafetensorsSource(directory).names())


def test_sharded_fp8_load_reads_partial_blocks_per_shard(checkpoints):
    dirs, reference = checkpoints
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, expert=2, tensor=1))
    cfg, _, state = hf_io.load_hf(dirs["fp8"], mesh, param_dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16"
    sharded = [v for _, v in nnx.to_flat_state(state) if len(jax.tree.leaves(v)[0].sharding.device_set) > 1
               and not jax.tree.leaves(v)[0].sharding.is_fully_replicated]
    assert sharded, "nothing was sharded: the per-shard read path was not exercised"
    loaded = hf_io.hf_tensors(cfg, state)
    for name, ref in reference.items():
        np.testing.assert_array_equal(loaded[name].astype(np.float32),
                                      ref.astype(np.float32).astype(jnp.bfloat16).astype(np.float32), err_msg=name)


def test_forward_equals_the_dequantised_float32_model(checkpoints):
    dirs, _ = checkpoints
    outs = {k: _forward(*hf_io.load_hf(dirs[k])) for k in ("fp8", "dequantised", "original")}
    np.testing.assert_array_equal(outs["fp8"], outs["dequantised"])
    # the unquantised model differs by the fp8 rounding only: close, but not equal
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    rel = rms(outs["fp8"] - outs["original"]) / rms(outs["original"])
    print("relative RMS logit change from fp8 rounding:", rel)
    assert 0 < rel < 0.15, rel


def test_bad_scales_are_one_error_naming_them(checkpoints, tmp_path):
    dirs, _ = checkpoints
    tensors = safetensors_torch.load_file(str(dirs["fp8"] / "model.safetensors"))
    name = next(n for n in sorted(tensors) if n.endswith("_scale_inv"))
    tensors[name] = tensors[name][:-1]
    tensors["model.layers.0.mlp.nothing.weight_scale_inv"] = torch.ones(1, 1)
    safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((dirs["fp8"] / "config.json").read_text())
    with pytest.raises(hf_io.CheckpointError) as e:
        hf_io.load_hf(tmp_path)
    assert name in str(e.value) and "nothing.weight_scale_inv" in str(e.value)


def test_other_quantisation_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="quantization_config"):
        hf_io.fp8_block_size({"quantization_config": {"quant_method": "awq"}})
    with pytest.raises(ValueError, match="weight_block_size"):
        hf_io.fp8_block_size({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}})
    assert hf_io.fp8_block_size({}) is None
