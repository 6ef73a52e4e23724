"""Rollout throughput: r1jax's sampler vs transformers' model.generate, same shapes, same run.

    python benchmarks/bench_rollout.py                 # small_dense (Qwen2-0.5B shape), B=64 and 256,
                                                       # prompt 128, 512 new tokens, T=0.6, top-p 0.95
    python benchmarks/bench_rollout.py --model smollm2_135m --batch 16 --prompt 64 --new 128   # CPU
    python benchmarks/bench_rollout.py --model smollm2_135m --tail --batch 32 --new 512 --no-hf
    python benchmarks/bench_rollout.py --tiny          # CPU smoke run of the same code path

Both sides use random weights with no stop tokens, so every row generates exactly --new tokens
(transformers: min_new_tokens = max_new_tokens). tokens/s counts generated tokens.

Roofline (the hardware limit of one decode step): max(bytes / bandwidth, FLOPs / peak), where the
bytes are every weight plus the KV cache of the tokens so far, the FLOPs 2 x parameters x rows plus
attention over the filled cache, the bandwidth a read-only reduction over 1 GiB and the peak a large
float32 matmul, both measured here on the same device (best of 5). Beside it, products_only: one step's
weight products alone (x [B, in] @ W for every matrix, chained), timed here: what this device's matmul
kernels reach on the step's own shapes, with nothing else in the step.

--tail: a GRPO-like length distribution. With random weights the next token is near-uniform, so
stopping on k = V / mean token ids ends each row with probability ~1/mean per step: lengths are
geometric (mean --tail-mean, default max_new/3: then about 5% of rows run to the cap). Reported: useful tokens
(completions) / decoded tokens (rows x steps of the batch the decode loop ran at), wall time and
useful tokens/s, for --compaction-levels (rollout.compaction_levels; 0 = decode all rows to the end).
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
from bench_grpo import torch_config
from flax import nnx

from r1jax.model import Transformer, get_variant, param_counts
from r1jax.rollout import Sampler, SamplingParams
from r1jax.rollout.sampler import bucket, compaction_widths


def _best(fn, repeats: int = 5) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def memory_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Bytes/s read by a reduction over n_bytes (a copy would also time page faults of its output)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return n_bytes / _best(lambda: total(x).block_until_ready())


def matmul_peak(n: int = 2048) -> float:
    """float32 FLOP/s of an n x n x n matmul."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    return 2 * n**3 / _best(lambda: mm(a).block_until_ready())


def weight_products_s(cfg, state, batch: int) -> float | None:
    """Seconds for one decode step's weight products alone, as XLA runs them on this device: x [batch, in]
    @ W for every weight matrix (the tied embedding as the unembedding), chained so they run one after
    another as in the model. Nothing else (attention, norms, sampling): the kernel bound of a step on
    these shapes. None for stacked weights (MoE experts, scanned layers)."""
    mats = []
    for path, w in jax.tree_util.tree_flatten_with_path(state)[0]:
        if w.ndim > 2:
            return None
        if w.ndim == 2:
            is_embedding = "embedding" in jax.tree_util.keystr(path)
            if is_embedding and not cfg.tie_word_embeddings:
                continue  # a row lookup, not a product
            mats.append(w.T if is_embedding else w)
    xs = [jnp.ones((batch, w.shape[0]), w.dtype) for w in mats]

    @jax.jit
    def products(xs, mats):
        c = jnp.zeros((), mats[0].dtype)
        for x, w in zip(xs, mats):
            c = (x + c) @ w  # the next product waits for this one
            c = c[0, 0]
        return c

    return _best(lambda: products(xs, mats).block_until_ready())


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_cost(cfg, state, batch: int, kv_slots: float) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step of `batch` rows with kv_slots filled cache slots each."""
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    kv_per_slot = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.d_head * jnp.dtype(cfg.dtype).itemsize
    flops = 2 * param_counts(cfg)["active_per_token"] * batch
    flops += 4 * cfg.n_layers * cfg.n_heads * cfg.d_head * kv_slots * batch  # q.k and p.v
    return weights + batch * kv_slots * kv_per_slot, flops


def bench_r1jax(cfg, batch, prompt, new, temperature, top_p, repeats, levels, stop_ids=()):
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    sampler = Sampler(graphdef, compaction_levels=levels)
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    lens = np.full((batch,), prompt, np.int32)
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=new, n=1,
                              stop_token_ids=tuple(stop_ids))
    run = lambda seed: jax.block_until_ready(  # noqa: E731
        sampler.generate(state, prompts, lens, sampling, jax.random.key(seed))
    )
    compile_s = _timed(lambda: run(0))
    times = [_timed(functools.partial(run, i + 1)) for i in range(repeats)]
    completion_lens = np.asarray(run(1).completion_lens_b)
    generated = int(completion_lens.sum())
    row = dict(compile_and_first_s=compile_s, seconds=min(times), tokens_per_s=generated / min(times),
               attention_block=cfg.attention_block, compaction_levels=levels)
    return state, row, completion_lens


def decoded_tokens(completion_lens: np.ndarray, widths: tuple[int, ...]) -> int:
    """Rows x steps the decode loop runs for these completion lengths (the sampler's stage rule: a stage
    ends when its unfinished rows fit the next width). Step 0 (the first token) comes from the prefill."""
    total, stage = 0, 0
    for t in range(1, int(completion_lens.max())):
        unfinished = int((completion_lens > t).sum())
        while stage + 1 < len(widths) and unfinished <= widths[stage + 1]:
            stage += 1
        total += widths[stage]
    return total


def bench_transformers(cfg, batch, prompt, new, temperature, top_p, repeats):
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    hf_cfg = torch_config(cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(device=device, dtype=dtype).eval()
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
    ap.add_argument("--tail", action="store_true", help="geometric completion lengths (see above)")
    ap.add_argument("--tail-mean", type=float, default=None,
                    help="mean completion length of --tail (default --new / 3): a budget far above it "
                         "shows what decode pays for the unfilled cache")
    ap.add_argument("--compaction-levels", type=int, nargs="+", default=[2],
                    help="rollout.compaction_levels values to run (each a separate measurement)")
    ap.add_argument("--attention-block", type=int, default=None,
                    help="ModelConfig.attention_block (0 = attend over every cache slot)")
    ap.add_argument("--tiny", action="store_true", help="tiny_dense, B=4, prompt 16, 32 new tokens (CPU)")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.batch, args.prompt, args.new, args.repeats = "tiny_dense", [4], 16, 32, 1
    # inference keeps weights in the compute dtype (bf16 for small_dense): half the bytes per step
    base = get_variant(args.model)
    cfg = dataclasses.replace(base, param_dtype=base.dtype)
    if args.attention_block is not None:
        cfg = dataclasses.replace(cfg, attention_block=args.attention_block)
    bandwidth = memory_bandwidth(1 << 26 if args.tiny else 1 << 30)
    peak = matmul_peak(256 if args.tiny else 2048)
    print(json.dumps(dict(devices=str(jax.devices()), model=args.model, bytes_per_s=bandwidth, flops_per_s=peak)))
    stop_ids = ()
    if args.tail:  # k ids: ~1/mean of the (near-uniform) next-token mass
        k = max(1, round(cfg.vocab_size / (args.tail_mean or args.new / 3)))
        stop_ids = tuple(int(i) for i in np.random.default_rng(1).choice(np.arange(3, cfg.vocab_size), k, False))
    for batch in args.batch:
        for levels in args.compaction_levels:
            state, ours, lens = bench_r1jax(cfg, batch, args.prompt, args.new, args.temperature, args.top_p,
                                            args.repeats, levels, stop_ids)
            steps = int(lens.max())
            kv_bytes, flops = step_cost(cfg, state, batch, args.prompt + steps / 2)  # KV of the tokens so far
            roofline_step_s = max(kv_bytes / bandwidth, flops / peak)
            roofline_tps = batch / roofline_step_s
            products_s = weight_products_s(cfg, state, batch)
            row = dict(
                batch=batch,
                prompt=args.prompt,
                new=args.new,
                temperature=args.temperature,
                top_p=args.top_p,
                r1jax=ours,
                roofline_tokens_per_s=roofline_tps,
                roofline_bound="memory" if kv_bytes / bandwidth >= flops / peak else "compute",
                fraction_of_roofline=ours["tokens_per_s"] / roofline_tps,
                # one step's weight products alone, XLA's kernels on these shapes: a bound below the roofline
                products_only_tokens_per_s=None if products_s is None else batch / products_s,
                products_only_fraction_of_roofline=None if products_s is None else roofline_step_s / products_s,
                cache_slots=bucket(args.prompt) + bucket(args.new),
            )
            if args.tail:
                decoded = decoded_tokens(lens, compaction_widths(batch, levels))
                row["tail"] = dict(
                    stop_ids=len(stop_ids),
                    length_quantiles={q: float(np.quantile(lens, q)) for q in (0.1, 0.5, 0.9, 1.0)},
                    at_cap=float(np.mean(lens >= args.new)),
                    useful_tokens=int(lens.sum()),
                    decoded_tokens=decoded + batch,  # + the first token of every row (prefill)
                    useful_over_decoded=float(lens.sum() / (decoded + batch)),
                )
            elif not args.no_hf:
                hf = bench_transformers(cfg, batch, args.prompt, args.new, args.temperature, args.top_p,
                                        args.repeats)
                row["transformers"] = hf
                row["speedup_vs_transformers"] = ours["tokens_per_s"] / hf["tokens_per_s"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
