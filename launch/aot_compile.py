"""Check that an RL config fits a TPU pod before booking it, on a machine without TPUs (MaxText's
train_compile idea; docs/pod.md).

The programs of one GRPO step are built through the rl stage's own translation of the config
(`stages.rl.build`) and the policy loader's rules (`trainer.policy.planned_config`: the dtypes an HF
checkpoint loads with, the runtime settings, MTP dropped), then lowered and compiled for the pod's
topology on `jax.ShapeDtypeStruct` inputs; nothing is allocated and no checkpoint or data is read.

  update     the GRPO update step (fwd + bwd + AdamW; the train state donated)
  logprobs   π_old's log-probs recomputed by the trainer (with routing replay when rl.routing_replay)
  rollout    the sampler's one program: prefill of the prompts, then the decode loop over the MLA/KV
             cache for G samples each, built by rollout.Sampler.lower on the rollout's mesh

For each: XLA's per-chip bytes (arguments, outputs, temporaries, generated code), the program's total,
the peak with what else stays resident on the chip while it runs (the optimizer state, π_ref), that
against the chip's HBM, and XLA's FLOP estimate per chip (`cost_analysis()`, which counts a loop body
once: with scanned layers and the decode while-loop it is not the step's total). A table is printed;
--out writes JSON.

    pip install --target /tmp/tpu_site "libtpu==0.0.42.*"     # the libtpu matching jax 0.10.2 (no TPU needed)
    PYTHONPATH=/tmp/tpu_site python launch/aot_compile.py --config configs/r1_zero.py:dsv3_pod \\
        --topology v5p:8x8x16 [--set rollout.max_new_tokens=65536] [--out fit.json]
    PYTHONPATH=/tmp/tpu_site python launch/aot_compile.py --tiny     # CI: tiny MoE on v5p:2x2x1
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import math
import os
import sys
import time

# Per-chip HBM (GiB) by TPU generation, as the topology names them.
HBM_GIB = {"v5p": 95.74, "v6e": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v4": 32.0}
PROGRAMS = ("update", "logprobs", "rollout")
TINY = dict(config="configs/r1_zero.py:tiny", topology="v5p:2x2x1", set=[
    "model.variant=tiny_moe", "model.overrides={}", "policy.source=hf", "model.dtype=bfloat16",
    "model.param_dtype=float32", "mesh.fsdp=2", "mesh.expert=2", "data.prompts_per_step=4", "grpo.group_size=4",
    "rollout.max_prompt_len=32", "rollout.max_new_tokens=32", "rollout.compaction_levels=0", "rl.routing_replay=True"])


def _load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _assign(config, item: str) -> None:
    """--set a.b=value (a Python literal, else a string), as --config.a.b=value does for a run."""
    key, _, raw = item.partition("=")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    if isinstance(value, dict):
        from ml_collections import ConfigDict

        value = ConfigDict(value)
    with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
        node[leaf] = value


@contextlib.contextmanager
def _abstract_device_put():
    """jax.device_put returning ShapeDtypeStructs with the asked sharding: the sampler places its host
    inputs itself, onto devices that do not exist here, so its `lower` is run on their shapes."""
    import jax
    import numpy as np
    from jax.sharding import Sharding

    real = jax.device_put

    def leaf(x, sharding):
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)

    def put(tree, sharding=None, **_):
        if sharding is None or isinstance(sharding, Sharding):
            return jax.tree.map(lambda x: leaf(x, sharding), tree)
        return jax.tree.map(leaf, tree, sharding)

    jax.device_put = put
    try:
        yield
    finally:
        jax.device_put = real


class _ByteTokenizer:
    """Stand-in for the checkpoint's tokenizer (shapes only): ids below 256 are bytes. The stop-string
    automaton it builds has the real one's shape (one row per state, a column per vocabulary id)."""

    pad_id, eos_id = 0, 1

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of abstract arrays (ShapeDtypeStructs with shardings): the largest shard."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        if x is None:
            continue
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def _measure(name: str, lowered, resident_extra: int, hbm: float, t_lower: float) -> dict:
    import jax

    t0 = time.time()
    out = {"program": name, "lower_s": round(t_lower, 1)}
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # XLA refuses a program that cannot fit: that is an answer too
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        out.update(fits=False, compile_s=round(time.time() - t0, 1), error=str(e)[:2000])
        return out
    mem = compiled.memory_analysis()
    b = {k: int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "alias", "temp",
                                                                   "generated_code")}
    # donated arguments alias their outputs: counted once
    total = b["argument"] + b["output"] - b["alias"] + b["temp"] + b["generated_code"]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.update(compile_s=round(time.time() - t0, 1), per_chip_bytes=b, program_gib=round(total / 2**30, 2),
               resident_other_gib=round(resident_extra / 2**30, 2),
               peak_gib=round((total + resident_extra) / 2**30, 2), hbm_gib=hbm,
               flops_per_chip=float((cost or {}).get("flops", float("nan"))))
    out["fits"] = out["peak_gib"] <= hbm
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/r1_zero.py:dsv3_pod")
    ap.add_argument("--topology", default="v5p:8x8x16", help="TPU topology name (v5p:8x8x16 = 1024 chips)")
    ap.add_argument("--chips_per_host", default="2,2,1")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field, e.g. rollout.max_new_tokens=65536 (repeatable)")
    ap.add_argument("--programs", default=",".join(PROGRAMS), help=f"comma-separated subset of {PROGRAMS}")
    ap.add_argument("--tiny", action="store_true", help=f"CI check: {TINY['config']} as a tiny MoE on "
                                                        f"{TINY['topology']}")
    ap.add_argument("--out", default="", help="write the report as JSON here")
    args = ap.parse_args(argv)
    if args.tiny:
        args.config, args.topology, args.set = TINY["config"], TINY["topology"], TINY["set"] + args.set
    programs = [p for p in args.programs.split(",") if p]
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        ap.error(f"--programs: unknown {unknown}; choose from {PROGRAMS}")
    generation = args.topology.split(":")[0]
    if generation not in HBM_GIB:
        ap.error(f"--topology {args.topology}: unknown generation {generation!r}; known {sorted(HBM_GIB)}")
    n_chips = math.prod(int(x) for x in args.topology.split(":")[1].split("x"))
    cores = 2 if generation in ("v5p", "v4") else 1  # v5p-N / v4-N count TensorCores
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{generation}-{n_chips * cores}")
    # only compiles: several checks may run at once (libtpu otherwise takes a machine-wide lock file)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.experimental import topologies

    from r1jax.checkpoint import abstract_state
    from r1jax.grpo import TrainBatch, make_update_step
    from r1jax.model import abstract_model, param_counts, state_shardings
    from r1jax.model.transformer import main_moe_layers
    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.stages import rl
    from r1jax.trainer.generation import Generator
    from r1jax.trainer.logprobs import make_logprob_fn
    from r1jax.trainer.optimizer import make_optimizer
    from r1jax.trainer.policy import planned_config
    from r1jax.trainer.state import TrainState, batch_sharding, train_state_shardings

    config = _load_config(args.config)
    for item in args.set:
        _assign(config, item)
    # The run needs its data and weights; the fit check reads neither (their shapes come from the config)
    placeholders = []
    for field, value in (("data.path", "<not read by the fit check>"), ("policy.path", "<not read>")):
        section, key = field.split(".")
        if key in config[section] and not config[section][key] and (section != "data" or config.data.task == "file"):
            config[section][key] = value
            placeholders.append(field)
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=args.topology, chip_config_name="default",
        chips_per_host_bounds=tuple(int(x) for x in args.chips_per_host.split(",")), num_slices=1,
    )
    devices = topo.devices
    spec = rl.build(config, n_devices=len(devices))
    trainer_devices = devices[: len(devices) - spec.sampler_devices]
    mesh = make_mesh(spec.mesh, devices=trainer_devices)
    sampler_mesh = mesh if not spec.sampler_devices else make_mesh(MeshConfig(fsdp=-1),
                                                                    devices=devices[len(trainer_devices):])
    cfg = planned_config(spec.policy, spec.model)
    graphdef, abstract = abstract_model(cfg)
    params, model_state = nnx.split_state(abstract, nnx.Param, ...)
    optimizer = make_optimizer(spec.optim, params)
    state_sh = train_state_shardings(params, model_state, optimizer, mesh)
    like = TrainState(params=params, model_state=model_state, opt_state=jax.eval_shape(optimizer.init, params),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    train_state = abstract_state(state_sh, like)
    G = spec.grpo.group_size
    rows = spec.prompts_per_step * G
    length = spec.rollout.max_prompt_len + spec.rollout.max_new_tokens
    moe = main_moe_layers(cfg) > 0
    replay = spec.routing_replay and moe
    bsh = batch_sharding(mesh)
    bl = lambda dt, *rest: jax.ShapeDtypeStruct((rows, length, *rest), dt, sharding=bsh)  # noqa: E731
    routing = bl(jnp.int32, main_moe_layers(cfg), cfg.n_experts_per_tok) if replay else None

    # what stays on every chip besides a program's own arguments: the train state, and π_ref (a copy of
    # the policy, rl.py) when β > 0
    state_bytes = per_chip_bytes(train_state)
    policy_bytes = per_chip_bytes((train_state.params, train_state.model_state))
    ref_bytes = policy_bytes if spec.grpo.beta > 0 else 0
    hbm = HBM_GIB[generation]
    counts = param_counts(cfg)
    report = {
        "config": args.config, "overrides": args.set, "placeholders": placeholders, "topology": args.topology,
        "chips": len(devices), "hbm_gib_per_chip": hbm, "mesh": dict(mesh.shape),
        "sampler_mesh": dict(sampler_mesh.shape), "jax": jax.__version__, "libtpu": _libtpu_version(),
        "dtypes": {"params": cfg.param_dtype, "compute": cfg.dtype,
                   "adam_moments": ",".join(sorted({str(x.dtype) for x in jax.tree.leaves(like.opt_state)
                                                    if x.ndim >= 1}))},
        "model": {"n_mtp": cfg.n_mtp, "scan_layers": cfg.scan_layers, "remat": cfg.remat,
                  "remat_policy": cfg.remat_policy, "moe_dispatch": cfg.moe_dispatch,
                  "train_attention_block": cfg.train_attention_block, "attention_block": cfg.attention_block},
        "params_total": counts["total"], "params_active_per_token": counts["active_per_token"],
        "rows": rows, "prompt_len": spec.rollout.max_prompt_len, "max_new_tokens": spec.rollout.max_new_tokens,
        "seq_len": length, "routing_replay": replay, "micro_batches": spec.step.micro_batches,
        "resident_gib": {"train_state": round(state_bytes / 2**30, 2), "pi_ref": round(ref_bytes / 2**30, 2)},
        "programs": [],
    }

    if "update" in programs:
        batch = TrainBatch(tokens_bl=bl(jnp.int32), completion_mask_bl=bl(jnp.float32),
                           advantages_b=jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=bsh),
                           old_logp_bl=bl(jnp.float32), ref_logp_bl=bl(jnp.float32),
                           truncated_b=jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=bsh),
                           sampler_logp_bl=bl(jnp.float32), routing_btlk=routing)
        update = make_update_step(graphdef, spec.grpo, optimizer, mesh, state_sh, spec.step)
        t0 = time.time()
        with jax.set_mesh(mesh):
            lowered = update.jitted.lower(train_state, batch)
        report["programs"].append(_measure("update", lowered, ref_bytes, hbm, time.time() - t0))
        _progress(report["programs"][-1])

    if "logprobs" in programs:  # π_old (π_ref is the same program without replay)
        logprobs = make_logprob_fn(graphdef, mesh, spec.step.logprob_chunk, state_sh.params, state_sh.model_state,
                                   with_router_choice=moe)
        t0 = time.time()
        with jax.set_mesh(mesh):
            lowered = _jitted(logprobs).lower(train_state.params, train_state.model_state, bl(jnp.int32),
                                              bl(jnp.float32), routing)
        extra = state_bytes - policy_bytes + ref_bytes
        report["programs"].append(_measure("logprobs", lowered, extra, hbm, time.time() - t0))
        _progress(report["programs"][-1])

    if "rollout" in programs:
        tokenizer = _ByteTokenizer(cfg.vocab_size)
        generate = Generator(graphdef, sampler_mesh, tokenizer, spec.rollout, cfg)
        sampling = generate.sampling(n=G)
        full = nnx.merge_state(params, model_state)
        weights = abstract_state(state_shardings(full, sampler_mesh), full)
        prompts = np.full((spec.prompts_per_step, spec.rollout.max_prompt_len), 2, np.int32)
        lens = np.full((spec.prompts_per_step,), spec.rollout.max_prompt_len, np.int32)
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
        t0 = time.time()
        with _abstract_device_put():
            lowered = generate.sampler.lower(weights, prompts, lens, sampling, rng, tokenizer=tokenizer,
                                             record_routing=moe)
        # on the trainer's mesh the weights are the train state's own; on sampler devices, a copy
        extra = state_bytes - policy_bytes + ref_bytes if sampler_mesh is mesh else 0
        report["programs"].append(_measure("rollout", lowered, extra, hbm, time.time() - t0))
        _progress(report["programs"][-1])

    report["fits"] = all(p["fits"] for p in report["programs"])
    print(json.dumps(report, indent=2))
    print(table(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def _jitted(run):
    """The jitted program inside a trainer wrapper (`run.jitted`, or the one its closure holds)."""
    found = getattr(run, "jitted", None) or next(
        (c.cell_contents for c in run.__closure__ or () if hasattr(c.cell_contents, "lower")), None)
    if found is None:
        raise TypeError(f"{run.__qualname__}: no jitted program to lower")
    return found


def _libtpu_version() -> str:
    try:
        from importlib.metadata import version

        return version("libtpu")
    except Exception:  # noqa: BLE001 - a report field, never a reason to fail
        return "unknown"


def _progress(p: dict) -> None:
    print(f"[aot] {p['program']}: lowered in {p['lower_s']} s, compiled in {p['compile_s']} s, "
          f"peak {p.get('peak_gib', '-')} GiB {p.get('error', '')[:300]}", file=sys.stderr, flush=True)


def table(report: dict) -> str:
    """The per-chip table (GiB; TFLOP per chip) of a report."""
    g = lambda b: f"{b / 2**30:8.2f}"  # noqa: E731
    head = (f"{report['config']} {' '.join(report['overrides'])} on {report['topology']} ({report['chips']} chips, "
            f"{report['hbm_gib_per_chip']} GiB HBM each), mesh {report['mesh']}, {report['rows']} rows x "
            f"{report['seq_len']} tokens\n"
            f"{'program':<9} {'args':>8} {'outputs':>8} {'alias':>8} {'temps':>8} {'code':>8} {'program':>8} "
            f"{'+resident':>9} {'peak':>8} {'TFLOP':>9}  fits")
    lines = [head]
    for p in report["programs"]:
        if "per_chip_bytes" not in p:
            lines.append(f"{p['program']:<9} compile refused: {p.get('error', '')[:200]}")
            continue
        b = p["per_chip_bytes"]
        lines.append(f"{p['program']:<9} {g(b['argument'])} {g(b['output'])} {g(b['alias'])} {g(b['temp'])} "
                     f"{g(b['generated_code'])} {p['program_gib']:8.2f} {p['resident_other_gib']:9.2f} "
                     f"{p['peak_gib']:8.2f} {p['flops_per_chip'] / 1e12:9.1f}  {'yes' if p['fits'] else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main()["fits"] else 1)
