"""Model forward+backward throughput and MFU: small dense (Qwen2-0.5B shape) and small MoE
(DeepSeek-V3 style) in bf16, optionally next to the same step in PyTorch + transformers.

    python benchmarks/bench_model.py                # GPU: small_dense and small_moe, B=16, L=640
    python benchmarks/bench_model.py --variant small_moe --batch 8 --length 2048
    python benchmarks/bench_model.py --peer         # also transformers (random weights, same shapes)
    python benchmarks/bench_model.py --tiny         # CPU smoke run (tiny variants)

One step = forward + backward of the next-token cross-entropy (+ the MoE sequence aux loss when
enabled) w.r.t. all parameters; log-probs are computed in vocabulary chunks from the unembedding
(r1jax.grpo.token_logprobs), as training does. No optimizer. Random weights, random tokens.

MFU = r1jax.model.model_flops_per_token(cfg, L) · tokens / step time / peak bf16 dense FLOP/s
(H100/H200 989e12, A100 312e12). Printed as JSON lines. NOT YET RUN ON A GPU by its author: no
GPU numbers are claimed here; see docs/benchmarks.md once a GPU session has run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_kind), None)


def bench_r1jax(cfg, batch: int, length: int, steps: int, chunk: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import r1jax.model as M
    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.trainer.logprobs import token_logprobs

    mesh = make_mesh(MeshConfig(fsdp=-1))
    graphdef, state = M.create_sharded(cfg, mesh, rng_seed=0)
    graphdef, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)

    def loss_fn(params, rest, tokens_bt):
        model = nnx.merge(graphdef, params, rest)
        positions = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        hidden, _, aux = model(tokens_bt, positions)
        logp = token_logprobs(hidden[:, :-1], model.unembed_weight(), tokens_bt[:, 1:], chunk)
        return -jnp.mean(logp) + aux.aux_loss

    grad_step = jax.jit(jax.value_and_grad(loss_fn))
    rng = np.random.default_rng(0)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    tokens = jax.device_put(rng.integers(1, cfg.vocab_size, (batch, length)).astype(np.int32), batch_sharding)

    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        loss, grads = grad_step(params, rest, tokens)
        jax.block_until_ready(grads)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, grads = grad_step(params, rest, tokens)
        jax.block_until_ready(grads)
        sec = (time.perf_counter() - t0) / steps
    return {"loss": float(loss), "step_s": sec, "compile_s": compile_s,
            "device": jax.devices()[0].device_kind, "n_devices": len(jax.devices())}


def bench_transformers(cfg, batch: int, length: int, steps: int) -> dict:
    """The same step in PyTorch: full logits + cross-entropy, bf16 weights, random init."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if cfg.attention == "mla":
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        hf_cfg = DeepseekV3Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
            moe_intermediate_size=cfg.moe_mlp_dim, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
            n_shared_experts=cfg.n_shared_experts, n_routed_experts=cfg.n_routed_experts,
            routed_scaling_factor=cfg.routed_scaling_factor,
            kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim, qk_nope_head_dim=cfg.qk_nope_head_dim, n_group=cfg.n_group,
            topk_group=cfg.topk_group, num_experts_per_tok=cfg.n_experts_per_tok,
            first_k_dense_replace=cfg.first_k_dense, tie_word_embeddings=cfg.tie_word_embeddings,
            max_position_embeddings=cfg.max_position_embeddings)
        model = DeepseekV3ForCausalLM(hf_cfg)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        hf_cfg = Qwen2Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads, tie_word_embeddings=cfg.tie_word_embeddings,
            max_position_embeddings=cfg.max_position_embeddings)
        model = Qwen2ForCausalLM(hf_cfg)
    model = model.to(device=device, dtype=dtype).train()
    tokens = torch.randint(1, cfg.vocab_size, (batch, length), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(tokens, labels=tokens)
        out.loss.backward()
        return out.loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"loss": float(loss), "step_s": (time.perf_counter() - t0) / steps, "device": name}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", help="model variant(s); default small_dense and small_moe")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=640)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=128, help="sequence chunk of the log-prob computation")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--remat", action="store_true", help="recompute block activations in the backward pass")
    ap.add_argument("--peer", action="store_true", help="also time transformers (PyTorch) on the same shapes")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke run: tiny variants cut to 2 layers without MTP, float32, B=2, L=32, 2 steps")
    args = ap.parse_args()

    import r1jax.model as M

    if args.tiny:
        variants = ["tiny_dense", "tiny_moe"]
        args.batch, args.length, args.steps, args.dtype = 2, 32, 2, "float32"
    else:
        variants = args.variant or ["small_dense", "small_moe"]
    for name in variants:
        cfg = dataclasses.replace(M.get_variant(name), dtype=args.dtype, param_dtype=args.dtype, remat=args.remat)
        if args.tiny:  # the same code paths (tiny_moe keeps a dense and an MoE layer), half the compile time
            cfg = dataclasses.replace(cfg, n_layers=min(cfg.n_layers, 2), n_mtp=0)
        tokens = args.batch * args.length
        flops = M.model_flops_per_token(cfg, args.length) * tokens
        rows = [("r1jax", bench_r1jax(cfg, args.batch, args.length, args.steps, args.chunk))]
        if args.peer:
            rows.append(("transformers", bench_transformers(cfg, args.batch, args.length, args.steps)))
        for impl, r in rows:
            peak = peak_flops(str(r["device"]))
            n_dev = r.get("n_devices", 1)
            out = {"bench": "model_fwd_bwd", "impl": impl, "variant": name, "dtype": args.dtype, "remat": args.remat,
                   "batch": args.batch, "length": args.length, "tokens_per_s": tokens / r["step_s"],
                   "tflops_per_s": flops / r["step_s"] / 1e12,
                   "mfu": None if peak is None else flops / r["step_s"] / (peak * n_dev), **r}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
