"""Per-device temporaries of one MoE layer's forward + backward under expert parallelism, by dispatch.

A fixed GLOBAL batch of tokens on meshes whose only axis > 1 is `expert` (2, 4, 8 devices): the
"all_gather" dispatch gathers every token of the axis onto every shard, so its temporaries stay at the
global size; "all_to_all" moves only each shard's capacity-bounded buffers, so they fall like 1/expert.
Numbers are XLA's compiled `memory_analysis().temp_size_in_bytes` (compile only, nothing runs).

Two tables: the variant's own expert count E (experts per shard E/expert shrink as the axis grows), and
a fixed number of experts per shard (E = that x expert). The second isolates the dispatch: the CPU
backend lowers jax.lax.ragged_dot densely (temporaries ~ rows x local experts), which in the first
table also shrinks all_gather's numbers; a grouped-matmul backend (TPU, GPU) does not.

  python benchmarks/moe_dispatch_memory.py                 # 8 simulated CPU devices
  python benchmarks/moe_dispatch_memory.py --tokens 16384  # another global batch

On a TPU/GPU host the same script measures the real backend (it needs >= 8 devices).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from r1jax.model.config import get_variant  # noqa: E402
from r1jax.model.moe import moe_all_to_all, moe_expert_parallel, route  # noqa: E402
from r1jax.parallel.mesh import MeshConfig, make_mesh  # noqa: E402


def layer_temp_bytes(dispatch: str, n_expert: int, n_tokens: int, cfg, capacity_factor: float = 2.0) -> int:
    """temp_size_in_bytes of jit(grad of one routed-expert layer) on an expert=n_expert mesh."""
    mesh = make_mesh(MeshConfig(fsdp=1, expert=n_expert), devices=jax.devices()[:n_expert])
    e, d, f = cfg.n_routed_experts, cfg.d_model, cfg.moe_mlp_dim

    def loss(x_nd, w_de, wg, wu, wd):
        w_nk, idx_nk, _ = route(x_nd, w_de, jnp.zeros((e,)), cfg)
        am = jax.sharding.get_abstract_mesh()
        if dispatch == "all_to_all":
            y, _ = moe_all_to_all(x_nd, idx_nk, w_nk, wg, wu, wd, am, capacity_factor)
        else:
            y = moe_expert_parallel(x_nd, idx_nk, w_nk, wg, wu, wd, am)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    tok, rep, exp = (NamedSharding(mesh, s) for s in (P(("data", "fsdp", "expert")), P(), P("expert")))
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n_tokens, d), (d, e), (e, d, f), (e, d, f), (e, f, d))]
    shardings = (tok, rep, exp, exp, exp)
    with jax.set_mesh(mesh):
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), in_shardings=shardings, out_shardings=shardings)
        return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="global tokens N")
    ap.add_argument("--capacity_factor", type=float, default=2.0)
    ap.add_argument("--variant", default="small_moe", help="model variant giving E, K, d, f")
    ap.add_argument("--experts_per_shard", type=int, default=4, help="for the second table")
    args = ap.parse_args()
    base = get_variant(args.variant)
    print(f"{args.variant}: K={base.n_experts_per_tok} d={base.d_model} f={base.moe_mlp_dim}, N={args.tokens} "
          f"global tokens, f32, capacity factor {args.capacity_factor}, backend {jax.default_backend()}")
    print("per-device temporaries of one MoE layer forward+backward (MiB)")
    tables = [(f"E = {base.n_routed_experts}", lambda s: base.n_routed_experts),
              (f"E = {args.experts_per_shard} x expert", lambda s: args.experts_per_shard * s)]
    for title, n_experts in tables:
        print(f"\n{title:<22} | {'all_gather':>10} | {'all_to_all':>10}")
        for s in (2, 4, 8):
            cfg = dataclasses.replace(base, n_routed_experts=n_experts(s), n_group=1, topk_group=1)
            ag = layer_temp_bytes("all_gather", s, args.tokens, cfg)
            a2a = layer_temp_bytes("all_to_all", s, args.tokens, cfg, args.capacity_factor)
            print(f"{'expert = ' + str(s):<22} | {ag / 2**20:>10.2f} | {a2a / 2**20:>10.2f}")

if __name__ == "__main__":
    main()
