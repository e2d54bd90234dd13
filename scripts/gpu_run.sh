#!/usr/bin/env bash
# On a CUDA machine: builds remat and runs the GPU jobs, writing logs and
# results into OUTDIR (a few files per job, so a whole run is easy to collect).
#
#   scripts/gpu_run.sh OUTDIR [JOBS]
#
# JOBS, a comma-separated list (default "tests,demo,finetune"):
#   tests     the CUDA tests (ctest -R Cuda; cuda_test's details)  -> ctest.log, cuda_test.log
#   demo      remat-demo, checkpointing off vs on, and a deterministic run -> demo.txt
#   finetune  the main job, remat-finetune's embedded default      -> finetune.txt
#   bench     remat-bench under every policy and the Hugging Face Trainer anchor
#             (benchmarks/run_gpu_bench.sh OUTDIR remat,hf)       -> remat.json, hf.json,
#                                                                     comparison.md/.png, bench.log
#   compiled  the torch.compile anchor (run_gpu_bench.sh OUTDIR compiled) -> compiled.json, ...
#   dist      DDP and FSDP with NCCL through torchrun (scripts/gpu_dist.sh) -> dist.jsonl
#   profile   remat-bench on both anchor shapes with a kernel profile of 3 steps per policy
#             (PROFILE_POLICIES, default none,full,every-2,mlp,mlp-up), then none and
#             full with the fused kernels off (REMAT_FUSED_KERNELS=0)
#                                                    -> profile-PRESET.json/.txt, -plain.json
# Expects torch importable by python3 (or CMAKE_PREFIX_PATH) and the build
# tools installed. Development packages the machine lacks can come unpacked
# under .deps/ (see README, "GPU machine without network").
set -uo pipefail
out=${1:?usage: scripts/gpu_run.sh OUTDIR [tests,demo,finetune,bench,compiled,dist]}
jobs=${2:-tests,demo,finetune}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REMAT_BUILD_DIR:-/tmp/remat-gpu-build}
export REMAT_BUILD_DIR=$build
mkdir -p "$out"
out=$(cd "$out" && pwd)
has() { [[ ",$jobs," == *",$1,"* ]]; }
source "$root/scripts/gpu_prefix.sh"
prefix=$(remat_gpu_prefix "$root" python3)
# Python wheels the benchmark anchors need (accelerate for the Hugging Face
# Trainer), for a machine without network.
if [ -d "$root/.deps/wheels" ] && ! python3 -c 'import accelerate' >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps "$root"/.deps/wheels/*.whl >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages --no-index --no-deps \
      "$root"/.deps/wheels/*.whl >/dev/null 2>&1 || echo "could not install .deps/wheels"
fi

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  git -C "$root" rev-parse --short HEAD 2>/dev/null || true
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

mkdir -p "$build"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DPython3_EXECUTABLE="$(command -v python3)" >"$build/configure.log" 2>&1 ||
    { cp "$build/configure.log" "$out/"; tail -40 "$out/configure.log"; exit 1; }
fi
start=$SECONDS
cmake --build "$build" -- -k 0 >"$build/build.log" 2>&1 ||
  { cp "$build/build.log" "$out/"; grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
echo "built in $((SECONDS - start)) s"

status=0
if has tests; then
  # The CUDA tests (and the oracles they read); CI runs the rest on CPU.
  (cd "$build" && ctest -R Cuda --output-on-failure -j 4 --timeout 600 >"$out/ctest.log" 2>&1) ||
    status=1
  tail -25 "$out/ctest.log"
  REMAT_ORACLE_DIR="$build/tests/oracle" "$build/tests/cuda_test" >"$out/cuda_test.log" 2>&1 ||
    status=1
  grep -E "peak allocated|held after|relative error|FAILED" "$out/cuda_test.log"
fi
if has demo; then
  {
    "$build/examples/remat-demo" --device cuda --layers 12 --dim 768 --heads 12 --batch 16 \
      --seq 512 --steps 30
    # Deterministic kernels on both runs: the two loss columns must agree exactly.
    CUBLAS_WORKSPACE_CONFIG=:4096:8 "$build/examples/remat-demo" --device cuda --deterministic \
      --steps 10
  } >"$out/demo.txt" 2>&1 || status=1
  tail -12 "$out/demo.txt"
fi
if has finetune; then
  # The main job on CUDA: remat-finetune's embedded default, as scripts/demo.sh runs it.
  rm -rf /tmp/remat-finetune-out
  /usr/bin/time -f "wall %e s" "$build/examples/remat-finetune" --output_dir /tmp/remat-finetune-out \
    >"$out/finetune.txt" 2>&1 || status=1
  tail -30 "$out/finetune.txt"
fi
if has bench; then
  bash "$root/benchmarks/run_gpu_bench.sh" "$out" remat,hf || status=1
fi
if has compiled; then
  bash "$root/benchmarks/run_gpu_bench.sh" "$out" compiled || status=1
fi
if has profile; then
  for preset in gpt2-124m llama-0.85b; do
    {
      "$build/benchmarks/remat-bench" --preset "$preset" --bf16 \
        --policy "${PROFILE_POLICIES:-none,full,every-2,mlp,mlp-up}" --profile 3 \
        --json "$out/profile-$preset.json"
      # Before/after the fused kernels: the plain ATen expressions instead.
      REMAT_FUSED_KERNELS=0 "$build/benchmarks/remat-bench" --preset "$preset" --bf16 \
        --policy none,full --json "$out/profile-$preset-plain.json"
    } >"$out/profile-$preset.txt" 2>&1 || status=1
    grep -E "^(policy|none|full|every-|attention|mlp)" "$out/profile-$preset.txt"
  done
fi
if has dist && [ -f "$root/scripts/gpu_dist.sh" ]; then
  bash "$root/scripts/gpu_dist.sh" "$out" "$build" || status=1
fi
exit $status
