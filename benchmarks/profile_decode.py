"""Where a decode step's time goes: the rollout under JAX's profiler, each executed HLO op's time summed
by what it computes (weight products, cache attention, sampling, the rest), per decode step.

    python benchmarks/profile_decode.py --model smollm2_135m --batch 16 --prompt 64 --new 128
    python benchmarks/profile_decode.py --tiny

Same shapes and random weights as bench_rollout.py. Op times come from the profiler's trace (one event
per executed HLO op); what an op computes from the optimized HLO's metadata (the JAX source file it was
traced from, and whether it is a dot). Container ops (while loops, conditionals) are not counted
themselves: their bodies' ops are. Ops on different threads can overlap, so the categories can sum to
more than the wall time of a step; both are printed. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

DUMP = tempfile.mkdtemp(prefix="r1jax_hlo_")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP} --xla_dump_hlo_as_text"

import jax  # noqa: E402  (XLA_FLAGS first)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from r1jax.model import Transformer, get_variant  # noqa: E402
from r1jax.rollout import Sampler, SamplingParams  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(.*metadata=\{([^}]*)\}")
_CONTAINERS = {"while", "conditional", "call"}
_BY_FILE = {"layers.py": "weight products", "transformer.py": "weight products", "attention.py": "cache attention",
            "sampling.py": "sampling", "stops.py": "sampling", "sampler.py": "decode loop"}


def _frame_files(hlo_text: str) -> dict[int, str]:
    """Stack frame id -> the source file (basename) of that frame, from the module's frame tables."""
    tables, section = collections.defaultdict(dict), None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
        elif section and (m := re.match(r"^(\d+) (.*)$", line)):
            tables[section][int(m.group(1))] = m.group(2)
        elif section and line.strip():
            section = None
    files = {i: os.path.basename(v.strip('"')) for i, v in tables["FileNames"].items()}
    locations = tables["FileLocations"].items()
    loc_file = {i: files[int(re.search(r"file_name_id=(\d+)", v).group(1))] for i, v in locations}
    frames = tables["StackFrames"].items()
    return {i: loc_file[int(re.search(r"file_location_id=(\d+)", v).group(1))] for i, v in frames}


def op_categories(hlo_text: str) -> dict[str, str]:
    """HLO op name -> what it computes, from the innermost source file it was traced from and whether it
    is a dot (a dot in layers.py / transformer.py is a weight product; everything in attention.py
    outside its projections is cache attention)."""
    frame_file = _frame_files(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode, meta = m.groups()
        frame = re.search(r"stack_frame_id=(\d+)", meta)
        src = frame_file.get(int(frame.group(1)), "") if frame else ""
        if opcode in _CONTAINERS:
            out[name] = "container"
        elif src in ("layers.py", "transformer.py") and "dot_general" not in meta:
            out[name] = "norms, rope, activations"
        else:
            out[name] = _BY_FILE.get(src, "other")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--tiny", action="store_true", help="tiny_dense, B=4, prompt 16, 32 new tokens")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.batch, args.prompt, args.new = "tiny_dense", 4, 16, 32
    base = get_variant(args.model)
    cfg = dataclasses.replace(base, param_dtype=base.dtype)
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    sampler = Sampler(graphdef, compaction_levels=0)  # every step at the full batch: one program to read
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    lens = np.full((args.batch,), args.prompt, np.int32)
    sampling = SamplingParams(temperature=0.6, top_p=args.top_p, max_new_tokens=args.new, n=1)
    run = lambda seed: jax.block_until_ready(  # noqa: E731
        sampler.generate(state, prompts, lens, sampling, jax.random.key(seed)))
    run(0)  # compile
    t0 = time.perf_counter()
    run(1)
    wall = time.perf_counter() - t0

    trace_dir = tempfile.mkdtemp(prefix="r1jax_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    run(2)
    jax.profiler.stop_trace()
    events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[-1]))["traceEvents"]

    modules = glob.glob(f"{DUMP}/*_decode_program*after_optimizations.txt")
    if not modules:
        sys.exit(f"no optimized HLO of the decode program under {DUMP}")
    category = {}
    for path in modules:
        category.update(op_categories(open(path).read()))

    steps = args.new - 1  # the first token comes from the prefill
    seconds = collections.Counter()
    for e in events:
        args_ = e.get("args") or {}
        if e.get("ph") != "X" or "decode_program" not in str(args_.get("hlo_module", "")):
            continue
        cat = category.get(args_.get("hlo_op", e["name"]), "other")
        if cat != "container":
            seconds[cat] += e.get("dur", 0) * 1e-6
    print(json.dumps(dict(
        model=args.model, batch=args.batch, prompt=args.prompt, new=args.new, top_p=args.top_p,
        devices=str(jax.devices()),
        rollout_wall_ms_per_step=wall / steps * 1e3,
        op_ms_per_step={k: round(v / steps * 1e3, 3) for k, v in seconds.most_common()},
    )))


if __name__ == "__main__":
    main()
