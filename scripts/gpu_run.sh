#!/usr/bin/env bash
# On a CUDA machine: builds remat, runs the CUDA tests, the checkpoint
# benchmark and the demo, and writes the logs and results into OUTDIR. Expects torch importable by python3 (or
# CMAKE_PREFIX_PATH) and the build tools installed.
#
#   scripts/gpu_run.sh OUTDIR
set -uo pipefail
out=${1:?usage: scripts/gpu_run.sh OUTDIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REMAT_BUILD_DIR:-/tmp/remat-gpu-build}
mkdir -p "$out"
prefix=${CMAKE_PREFIX_PATH:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}

# A machine with the Oniguruma runtime but without its development files:
# .deps/onig holds the unpacked libonig-dev package (headers and the
# unversioned library link), pointed at the installed runtime here.
if [ -d "$root/.deps/onig/usr/include" ] && [ ! -f /usr/include/oniguruma.h ]; then
  onig=/tmp/remat-deps/onig
  rm -rf "$onig" && mkdir -p "$onig/lib"
  cp -r "$root/.deps/onig/usr/include" "$onig/include"
  ln -sf "$(ls /usr/lib/x86_64-linux-gnu/libonig.so.* | head -n 1)" "$onig/lib/libonig.so"
  prefix="$prefix;$onig"
fi
# Likewise utf8proc (.deps/utf8proc: the unpacked runtime and -dev packages).
if [ -d "$root/.deps/utf8proc/usr/include" ] && [ ! -f /usr/include/utf8proc.h ]; then
  prefix="$prefix;$root/.deps/utf8proc/usr"
fi
# The Gloo headers (.deps/gloo: the unpacked libgloo-dev package) are found by
# CMakeLists.txt itself; only headers are needed, no library.
if [ ! -f /usr/include/gloo/algorithm.h ] && [ ! -d "$root/.deps/gloo/usr/include/gloo" ]; then
  echo "gpu_run: no Gloo headers: install libgloo-dev or unpack it into .deps/gloo" >&2
fi

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  git -C "$root" rev-parse --short HEAD 2>/dev/null || true
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

set -e
mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DPython3_EXECUTABLE="$(command -v python3)" \
  >"$build/configure.log" 2>&1 || { cp "$build/configure.log" "$out/"; tail -40 "$out/configure.log"; exit 1; }
cmake --build "$build" >"$build/build.log" 2>&1 ||
  { cp "$build/build.log" "$out/"; grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
set +e

status=0
# The CUDA tests (and the oracles they read); CI runs the rest on CPU.
(cd "$build" && ctest -R Cuda --output-on-failure -j 8 >"$out/ctest.log" 2>&1) || status=1
tail -15 "$out/ctest.log"
REMAT_ORACLE_DIR="$build/tests/oracle" "$build/tests/cuda_test" --gtest_output=json:"$out/cuda_test.json" \
  >"$out/cuda_test.log" 2>&1 || status=1
grep -E "peak allocated|held after|relative error|FAILED" "$out/cuda_test.log"
"$build/benchmarks/checkpoint_bench" --benchmark_filter='cuda:1' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/checkpoint_bench.json" \
  --benchmark_out_format=json 2>&1 | tee "$out/checkpoint_bench.txt" | tail -12
"$build/examples/remat-demo" --device cuda --layers 12 --dim 768 --heads 12 --batch 16 --seq 512 \
  --steps 30 2>&1 | tee "$out/demo_cuda.txt" | tail -8
# Deterministic kernels on both runs: the two loss columns must agree exactly.
CUBLAS_WORKSPACE_CONFIG=:4096:8 "$build/examples/remat-demo" --device cuda --deterministic \
  --steps 10 2>&1 | tee "$out/demo_cuda_deterministic.txt" | tail -5
# Distributed training with NCCL (world size 1, and 2 with two GPUs).
bash "$root/scripts/gpu_dist.sh" "$out" "$build" || status=1
exit $status
