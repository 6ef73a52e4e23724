"""Rollout throughput: r1jax's sampler vs transformers' model.generate, same shapes, same run.

    python benchmarks/bench_rollout.py                 # small_dense (Qwen2-0.5B shape), B=64 and 256,
                                                       # prompt 128, 512 new tokens, T=0.6, top-p 0.95
    python benchmarks/bench_rollout.py --tiny          # CPU smoke run of the same code path

Both sides use random weights in bf16 with no stop tokens, so every row generates exactly
--new tokens (transformers: min_new_tokens = max_new_tokens). tokens/s counts generated tokens.
Roofline: each decode step must read every weight once plus the KV cache of the tokens so far;
bytes/step over the measured HBM bandwidth (a large device copy) gives the best possible step time.
Our decode attends over all cache slots (slot = absolute position) and reads the whole
preallocated cache each step, so both the ideal and our actual KV bytes are reported.
Status: written and run on CPU with --tiny only; NOT yet run on a GPU (no numbers claimed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.model import Transformer, get_variant
from r1jax.rollout import Sampler, SamplingParams
from r1jax.rollout.sampler import bucket


def hbm_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Bytes/s of a device copy (read + write), best of 5."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)
    copy(x).block_until_ready()
    best = min(_timed(lambda: copy(x).block_until_ready()) for _ in range(5))
    return 2 * n_bytes / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bytes_per_step(cfg, state, batch: int, kv_slots: float) -> float:
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    kv_per_slot = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.d_head * jnp.dtype(cfg.dtype).itemsize
    return weights + batch * kv_slots * kv_per_slot


def bench_r1jax(cfg, batch, prompt, new, temperature, top_p, repeats):
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    sampler = Sampler(graphdef)
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    lens = np.full((batch,), prompt, np.int32)
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=new, n=1)
    run = lambda seed: jax.block_until_ready(
        sampler.generate(state, prompts, lens, sampling, jax.random.key(seed))
    )
    compile_s = _timed(lambda: run(0))
    times = [_timed(functools.partial(run, i + 1)) for i in range(repeats)]
    generated = int(np.asarray(run(0).completion_lens_b).sum())
    return state, dict(compile_and_first_s=compile_s, seconds=min(times), tokens_per_s=generated / min(times))


def bench_transformers(cfg, batch, prompt, new, temperature, top_p, repeats):
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_eps,
        max_position_embeddings=cfg.max_position_embeddings,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
    ids = torch.randint(3, cfg.vocab_size, (batch, prompt), device=device)
    kwargs = dict(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )

    def run():
        with torch.no_grad():
            out = model.generate(ids, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    first_s = _timed(run)
    times = [_timed(run) for _ in range(repeats)]
    return dict(device=device, first_s=first_s, seconds=min(times), tokens_per_s=batch * new / min(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small_dense")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--tiny", action="store_true", help="tiny_dense, B=4, prompt 16, 32 new tokens (CPU)")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.batch, args.prompt, args.new, args.repeats = "tiny_dense", [4], 16, 32, 1
    # inference keeps weights in the compute dtype (bf16 for small_dense): half the bytes per step
    base = get_variant(args.model)
    cfg = dataclasses.replace(base, param_dtype=base.dtype)
    bandwidth = hbm_bandwidth(1 << 26 if args.tiny else 1 << 30)
    print(json.dumps(dict(devices=str(jax.devices()), model=args.model, hbm_bytes_per_s=bandwidth)))
    for batch in args.batch:
        state, ours = bench_r1jax(
            cfg, batch, args.prompt, args.new, args.temperature, args.top_p, args.repeats
        )
        steps = args.new
        ideal = bytes_per_step(cfg, state, batch, args.prompt + args.new / 2)  # KV of the tokens so far
        actual = bytes_per_step(cfg, state, batch, bucket(args.prompt) + bucket(args.new))  # whole cache
        roofline_tps = batch * steps / (steps * ideal / bandwidth)
        row = dict(
            batch=batch,
            prompt=args.prompt,
            new=args.new,
            temperature=args.temperature,
            top_p=args.top_p,
            r1jax=ours,
            roofline_tokens_per_s=roofline_tps,
            fraction_of_roofline=ours["tokens_per_s"] / roofline_tps,
            bytes_per_step_ideal=ideal,
            bytes_per_step_full_cache=actual,
        )
        if not args.no_hf:
            hf = bench_transformers(
                cfg, batch, args.prompt, args.new, args.temperature, args.top_p, args.repeats
            )
            row["transformers"] = hf
            row["speedup_vs_transformers"] = ours["tokens_per_s"] / hf["tokens_per_s"]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
