"""Check that a config fits a TPU pod before booking it, on a machine without TPUs (MaxText's
train_compile idea).

The GRPO update step is built through the rl stage's own config translation (`stages.rl.build`),
then lowered and compiled for the pod's topology with `jax.ShapeDtypeStruct` inputs. Nothing is
allocated. The script prints XLA's per-chip memory analysis, so you can see whether the step fits
the chip's HBM.

    pip install --target /tmp/tpu_site "libtpu==0.0.42.*"     # the libtpu matching jax (no TPU needed)
    PYTHONPATH=/tmp/tpu_site TPU_ACCELERATOR_TYPE=v5p-2048 python launch/aot_compile.py \\
        --config configs/r1_zero.py:dsv3_pod --topology v5p:8x8x16 [--seq_len 4096]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time


def _load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/r1_zero.py:dsv3_pod")
    ap.add_argument("--topology", default="v5p:8x8x16", help="TPU topology name (v5p:8x8x16 = 1024 chips)")
    ap.add_argument("--chips_per_host", default="2,2,1")
    ap.add_argument("--seq_len", type=int, default=0,
                    help="tokens per rollout row; 0 = rollout.max_prompt_len + rollout.max_new_tokens")
    ap.add_argument("--out", default="", help="write the report as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-2048")

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import topologies

    from r1jax.checkpoint import abstract_state
    from r1jax.grpo import TrainBatch, make_update_step
    from r1jax.model import abstract_model, param_counts
    from r1jax.parallel.mesh import make_mesh
    from r1jax.stages import rl
    from r1jax.trainer.optimizer import make_optimizer
    from r1jax.trainer.state import TrainState, batch_sharding, train_state_shardings

    config = _load_config(args.config)
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=args.topology, chip_config_name="default",
        chips_per_host_bounds=tuple(int(x) for x in args.chips_per_host.split(",")), num_slices=1,
    )
    devices = topo.devices
    # the stage's own translation of the config: the program compiled here is the one `r1jax rl` runs
    spec = rl.build(config, n_devices=len(devices))
    mesh = make_mesh(spec.mesh, devices=devices)
    model_cfg = spec.model.resolve()
    graphdef, abstract = abstract_model(model_cfg)
    params, model_state = nnx.split_state(abstract, nnx.Param, ...)
    grpo_cfg = spec.grpo
    optimizer = make_optimizer(spec.optim, params)
    state_sh = train_state_shardings(params, model_state, optimizer, mesh)

    like = TrainState(params=params, model_state=model_state, opt_state=jax.eval_shape(optimizer.init, params),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    abstract_train_state = abstract_state(state_sh, like)
    rows = spec.prompts_per_step * grpo_cfg.group_size
    length = args.seq_len or spec.rollout.max_prompt_len + spec.rollout.max_new_tokens
    bsh = batch_sharding(mesh)
    bl = lambda dt: jax.ShapeDtypeStruct((rows, length), dt, sharding=bsh)
    b = lambda: jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=bsh)
    batch = TrainBatch(tokens_bl=bl(jnp.int32), completion_mask_bl=bl(jnp.float32), advantages_b=b(),
                       old_logp_bl=bl(jnp.float32), ref_logp_bl=bl(jnp.float32), truncated_b=b(),
                       sampler_logp_bl=bl(jnp.float32))
    update = make_update_step(graphdef, grpo_cfg, optimizer, mesh, state_sh, spec.step)
    t0 = time.time()
    with jax.set_mesh(mesh):
        lowered = update.jitted.lower(abstract_train_state, batch)
    t1 = time.time()
    counts = param_counts(model_cfg)
    report = {
        "config": args.config, "topology": args.topology, "chips": len(devices), "mesh": dict(mesh.shape),
        "rows": rows, "seq_len": length, "params_total": counts["total"],
        "params_active_per_token": counts["active_per_token"], "lower_s": round(t1 - t0, 1),
    }
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # XLA refuses a program that cannot fit: that is the answer
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.update(fits=False, compile_s=round(time.time() - t1, 1), error=str(e).splitlines()[0][:400])
    else:
        mem = compiled.memory_analysis()
        report.update(fits=True, compile_s=round(time.time() - t1, 1), per_chip_bytes={
            k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                              "temp_size_in_bytes", "generated_code_size_in_bytes")
            if hasattr(mem, k)})
        report["per_chip_gib_total"] = round(sum(report["per_chip_bytes"].values()) / 2**30, 2)
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
