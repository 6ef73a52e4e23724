"""GRPO update-step throughput: r1jax (JAX, jitted sharded step) vs the same step in PyTorch +
transformers, on the same shapes, in the same run.

    python benchmarks/bench_grpo.py --variant small_dense --batch 16 --length 640   # GPU (bf16)
    python benchmarks/bench_grpo.py --variant small_moe  --batch 16 --length 640
    python benchmarks/bench_grpo.py --tiny                                          # CPU smoke run

One step = forward + backward of the GRPO loss (token-mean, clip 0.2/0.28, β = 0.04 with given
reference log-probs) + global-norm clipping + AdamW, on B sequences of L tokens (prompt L/5, the
rest completion). Both sides use random weights of the same shape (no downloads). The PyTorch step
is written the way the peers do it: full logits, log_softmax, gather.

MFU = model FLOPs / time / peak, with model FLOPs = 6 · N_active · tokens + 12 · layers · heads ·
d_qk · L · tokens (the PaLM convention; attention counted non-causally). Peak bf16 dense: H100 /
H200 989 TFLOP/s, A100 312. Printed as JSON lines; not yet run on a GPU by the author of this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_batch(b: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_len = length // 5
    tokens = rng.integers(1, vocab, (b, length)).astype(np.int32)
    mask = np.zeros((b, length), np.float32)
    mask[:, p_len:] = 1.0
    old = np.where(mask > 0, -rng.uniform(0.5, 4.0, (b, length)), 0).astype(np.float32)
    ref = np.where(mask > 0, old + 0.1 * rng.normal(size=(b, length)), 0).astype(np.float32)
    adv = rng.normal(size=b).astype(np.float32)
    return {"tokens": tokens, "mask": mask, "old": old, "ref": ref, "adv": adv}


def model_flops_per_token(cfg, length: int) -> float:
    from r1jax.model import param_counts

    n_active = param_counts(cfg)["active_per_token"]
    d_qk = cfg.qk_head_dim if cfg.attention == "mla" else cfg.d_head
    return 6.0 * n_active + 12.0 * cfg.n_layers * cfg.n_heads * d_qk * length


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_kind), None)


def timed(step, n_warmup: int, n_steps: int, sync) -> float:
    for _ in range(n_warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()
    return (time.perf_counter() - t0) / n_steps


def bench_jax(cfg, batch, args) -> dict:
    import jax

    from r1jax.grpo import GRPOConfig, TrainBatch, make_update_step
    from r1jax.model import create_sharded
    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.trainer.optimizer import OptimConfig, make_optimizer
    from r1jax.trainer.state import init_train_state, shard_batch, split_model_state, train_state_shardings
    from r1jax.trainer.step import StepConfig

    mesh = make_mesh(MeshConfig(fsdp=-1))
    graphdef, model_state = create_sharded(cfg, mesh, 0)
    params, rest = split_model_state(model_state)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000), params)
    shardings = train_state_shardings(params, rest, optimizer, mesh)
    state = init_train_state(params, rest, optimizer, mesh, 0)
    grpo_cfg = GRPOConfig(group_size=args.group_size, beta=0.04)
    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, shardings,
                              StepConfig(logprob_chunk=args.chunk, micro_batches=args.micro_batches))
    tb = TrainBatch(tokens_bl=batch["tokens"], completion_mask_bl=batch["mask"], advantages_b=batch["adv"],
                    old_logp_bl=batch["old"], ref_logp_bl=batch["ref"])
    tb = shard_batch(tb, mesh)
    holder = {"state": state}

    def step():
        holder["state"], holder["metrics"] = update(holder["state"], tb)

    t0 = time.perf_counter()
    step()
    jax.block_until_ready(holder["metrics"])
    compile_s = time.perf_counter() - t0
    sec = timed(step, 1, args.steps, lambda: jax.block_until_ready(holder["metrics"]))
    return {"impl": "r1jax", "sec_per_step": sec, "compile_s": compile_s,
            "loss": float(holder["metrics"]["loss"]), "device": jax.devices()[0].device_kind,
            "n_devices": len(jax.devices())}


def torch_config(cfg):
    import transformers

    if cfg.arch in ("qwen2", "llama"):
        cls = transformers.Qwen2Config if cfg.arch == "qwen2" else transformers.LlamaConfig
        return cls(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
                   num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                   num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
                   rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_eps,
                   tie_word_embeddings=cfg.tie_word_embeddings)
    return transformers.DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        moe_intermediate_size=cfg.moe_mlp_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, n_shared_experts=cfg.n_shared_experts,
        n_routed_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.n_experts_per_tok,
        first_k_dense_replace=cfg.first_k_dense, n_group=cfg.n_group, topk_group=cfg.topk_group,
        routed_scaling_factor=cfg.routed_scaling_factor, q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
    )


def bench_torch(cfg, batch, args) -> dict:
    import torch
    import transformers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    model = transformers.AutoModelForCausalLM.from_config(torch_config(cfg), dtype=dtype).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.99), weight_decay=0.01,
                            fused=dev == "cuda")
    t = {k: torch.from_numpy(v).to(dev) for k, v in batch.items()}
    tokens = t["tokens"].long()

    def step():
        logits = model(input_ids=tokens).logits[:, :-1].float()
        logp = torch.gather(torch.log_softmax(logits, -1), 2, tokens[:, 1:, None])[..., 0]
        logp = torch.nn.functional.pad(logp, (1, 0))
        mask, adv = t["mask"], t["adv"][:, None]
        ratio = torch.exp(logp - t["old"])
        obj = torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.28) * adv)
        kl = torch.exp(t["ref"] - logp) - (t["ref"] - logp) - 1
        loss = ((-obj + 0.04 * kl) * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step.loss = float(loss.detach())

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sec = timed(step, 2, args.steps, sync)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    return {"impl": "torch+transformers", "sec_per_step": sec, "loss": step.loss, "device": name}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="small_dense")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=640)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny_dense, B=8, L=64, 3 steps (CPU smoke run)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.variant, args.batch, args.length, args.steps, args.group_size = "tiny_dense", 8, 64, 3, 4

    from r1jax.model import get_variant

    cfg = get_variant(args.variant)
    if cfg.n_mtp:  # GRPO trains the main model; MTP modules would only add unused compute
        cfg = dataclasses.replace(cfg, n_mtp=0)
    batch = make_batch(args.batch, args.length, cfg.vocab_size)
    tokens = args.batch * args.length
    flops = model_flops_per_token(cfg, args.length) * tokens
    results = [bench_jax(cfg, batch, args)]
    if not args.no_torch:
        try:
            results.append(bench_torch(cfg, batch, args))
        except Exception as e:  # a peer that cannot build this shape is reported, not fatal
            results.append({"impl": "torch+transformers", "error": f"{type(e).__name__}: {e}"})
    for r in results:
        if "sec_per_step" in r:
            peak = peak_flops(r["device"])
            r["tokens_per_s"] = tokens / r["sec_per_step"]
            r["mfu"] = None if peak is None else flops / r["sec_per_step"] / peak
        print(json.dumps({"variant": args.variant, "dtype": cfg.dtype, "batch": args.batch,
                          "length": args.length, **r}), flush=True)


if __name__ == "__main__":
    main()
