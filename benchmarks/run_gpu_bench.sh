#!/usr/bin/env bash
# On a CUDA machine: remat-bench under every checkpointing policy and the
# Python anchors (Hugging Face Trainer, torch.compile + fused AdamW) with
# checkpointing off and on, on the two anchor shapes (GPT-2 124M at 16 x 1024,
# Llama 0.85B at 4 x 2048, bf16); then benchmarks/compare.py. Writes at most
# 7 files into OUTDIR: device.txt, remat.json, hf.json, compiled.json,
# comparison.md, comparison.png, bench.log.
#
#   benchmarks/run_gpu_bench.sh OUTDIR [JOBS]
#
# JOBS (default "remat,hf,compiled") picks what runs, so a long run can be
# split over two calls; compare.py merges whatever JSONs OUTDIR holds. Each
# job has a time limit (REMAT_BENCH_TIMEOUT seconds, default 240), and a job
# that fails or times out is logged and skipped. Builds the remat-bench target
# in REMAT_BUILD_DIR (default /tmp/remat-gpu-build, as scripts/gpu_run.sh;
# configured there first if it is not yet).
# STEPS / WARMUP override the timed and warm-up steps (default 10 and 3),
# BEFORE=0 skips remat's before/after runs (--plain_loss, --optim adamw_torch),
# PRESETS the shapes; PROFILE=K (default 0: off) passes --profile K to every
# remat-bench run (K more steps under the Kineto profiler after the timed
# ones; comparison.md then says where the time goes); a CPU dry run of the
# script itself:
#   PRESETS=tiny STEPS=1 WARMUP=1 COMPILED_ARGS=--no_compile \
#     REMAT_BUILD_DIR=build benchmarks/run_gpu_bench.sh /tmp/bench
set -uo pipefail
out=${1:?usage: benchmarks/run_gpu_bench.sh OUTDIR [remat,hf,compiled]}
jobs=${2:-remat,hf,compiled}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REMAT_BUILD_DIR:-/tmp/remat-gpu-build}
python=${PYTHON:-python3}
limit=${REMAT_BENCH_TIMEOUT:-240}
steps=${STEPS:-10}
warmup=${WARMUP:-3}
presets=${PRESETS:-gpt2-124m llama-0.85b}
profile=${PROFILE:-0}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/bench.log"
exec > >(tee -a "$log") 2>&1

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$python" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  git -C "$root" rev-parse --short HEAD 2>/dev/null || true
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

run() {  # run NAME COMMAND...: time-limited, logged, never fatal
  local name=$1
  shift
  echo "== $name"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
}

has() { [[ ",$jobs," == *",$1,"* ]]; }

if has remat; then
  bench="$build/benchmarks/remat-bench"
  prof=()  # --profile K, or nothing
  if [ "$profile" != 0 ]; then prof=(--profile "$profile"); fi
  if [ ! -f "$build/CMakeCache.txt" ]; then
    source "$root/scripts/gpu_prefix.sh"
    prefix=$(remat_gpu_prefix "$root" "$python")
    mkdir -p "$build"
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
      -DPython3_EXECUTABLE="$(command -v "$python")" >"$build/configure.log" 2>&1 ||
      { tail -40 "$build/configure.log"; echo "== configure failed"; }
  fi
  echo "== building remat-bench in $build"
  cmake --build "$build" --target remat-bench >"$build/build.log" 2>&1 ||
    { grep -E "error|FAILED" -A5 "$build/build.log" | head -40; echo "== build failed"; }
  rm -f "$out"/remat.json.*
  for preset in $presets; do
    run "remat $preset" "$bench" --preset "$preset" --bf16 --steps "$steps" --warmup "$warmup" \
      --policy none,full,every-2,attention,mlp,mlp-up ${prof[@]+"${prof[@]}"} \
      --json "$out/remat.json.$preset"
  done
  # Before/after: the loss from the full logits with the multi-tensor AdamW,
  # and the multi-tensor AdamW alone (BEFORE=0 skips them).
  [ "${BEFORE:-1}" = 0 ] && presets_before="" || presets_before=$presets
  for preset in $presets_before; do
    run "remat $preset, before" "$bench" --preset "$preset" --bf16 --steps "$steps" \
      --warmup "$warmup" --policy none,full --plain_loss --optim adamw_torch \
      ${prof[@]+"${prof[@]}"} --json "$out/remat.json.$preset-before"
    run "remat $preset, multi-tensor AdamW" "$bench" --preset "$preset" --bf16 --steps "$steps" \
      --warmup "$warmup" --policy none --optim adamw_torch ${prof[@]+"${prof[@]}"} \
      --json "$out/remat.json.$preset-foreach"
  done
  # One file: the arrays joined.
  "$python" - "$out/remat.json" "$out"/remat.json.* <<'PY'
import json, os, sys
rows = []
for path in sys.argv[2:]:
    if os.path.exists(path):
        rows += json.load(open(path))
        os.remove(path)
json.dump(rows, open(sys.argv[1], "w"), indent=2)
PY
fi

anchor() {  # anchor SCRIPT JSON: both presets, checkpointing off and on
  local script=$1 json=$2
  rm -f "$json"
  local extra=${3:-}
  for preset in $presets; do
    for gc in "" --gradient_checkpointing; do
      run "$(basename "$script") $preset ${gc:-no checkpointing}" "$python" "$script" \
        --preset "$preset" --bf16 --steps "$steps" --warmup "$warmup" $gc $extra --json "$json"
    done
  done
}
# Python wheels the Hugging Face Trainer needs (accelerate), for a machine
# without network: unpacked under .deps/wheels.
if has hf && [ -d "$root/.deps/wheels" ] && ! "$python" -c 'import accelerate' >/dev/null 2>&1; then
  "$python" -m pip install --quiet --no-index --no-deps "$root"/.deps/wheels/*.whl >/dev/null 2>&1 ||
    "$python" -m pip install --quiet --break-system-packages --no-index --no-deps \
      "$root"/.deps/wheels/*.whl >/dev/null 2>&1 || echo "could not install .deps/wheels"
fi
has hf && anchor "$root/benchmarks/anchors/hf_trainer.py" "$out/hf.json"
has compiled && anchor "$root/benchmarks/anchors/compiled.py" "$out/compiled.json" \
  "${COMPILED_ARGS:-}"

inputs=()
for f in remat.json hf.json compiled.json; do [ -s "$out/$f" ] && inputs+=("$out/$f"); done
if [ ${#inputs[@]} -gt 0 ]; then
  "$python" "$root/benchmarks/compare.py" "${inputs[@]}" --markdown "$out/comparison.md" \
    --png "$out/comparison.png" >/dev/null && cat "$out/comparison.md"
fi
