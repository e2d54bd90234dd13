#!/usr/bin/env bash
# On a CUDA machine, after scripts/gpu_run.sh has built the tree: DDP and FSDP
# training of a GPT-2-shaped model with NCCL, launched by torchrun at world
# size 1 and, when the machine has two or more GPUs, 2. Each rank writes a
# JSON line (tokens/s over all ranks, step time, peak allocated MiB of its
# GPU) into OUTDIR/dist/; OUTDIR/dist/summary.jsonl collects them.
#
#   scripts/gpu_dist.sh OUTDIR [BUILD_DIR]
set -uo pipefail
out=${1:?usage: scripts/gpu_dist.sh OUTDIR [BUILD_DIR]}
build=${2:-${REMAT_BUILD_DIR:-/tmp/remat-gpu-build}}
worker="$build/tests/dist_worker"
mkdir -p "$out/dist"
torchrun=$(command -v torchrun || true)
if [ -z "$torchrun" ]; then
  torchrun="$(dirname "$(command -v python3)")/torchrun"
fi
if [ ! -x "$worker" ]; then
  echo "gpu_dist: $worker not built" | tee "$out/dist/error.txt"
  exit 1
fi
if [ ! -x "$torchrun" ]; then
  echo "gpu_dist: torchrun not found (it comes with the torch pip package)" | tee "$out/dist/error.txt"
  exit 1
fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
worlds="1"
if [ "${gpus:-0}" -ge 2 ]; then worlds="1 2"; fi
echo "gpu_dist: $gpus GPU(s); world sizes: $worlds" | tee "$out/dist/worlds.txt"

status=0
port=29611
# Each run's log and JSON stay in $work; OUTDIR/dist gets summary.jsonl and
# dist.log (the end of every run's log), so a whole run is two files.
work=$(mktemp -d /tmp/remat-gpu-dist.XXXXXX)
: >"$out/dist/dist.log"
# GPT-2 124M shape (12 x 768, vocab 50304), batch 8 x 1024 per rank, bf16.
for world in $worlds; do
  for dp in ddp full_shard shard_grad_op; do
    for ckpt in 0 1; do
      name="$dp-ckpt$ckpt-w$world"
      port=$((port + 1))
      timeout 900 "$torchrun" --no-python --nproc-per-node "$world" --master-addr 127.0.0.1 \
        --master-port "$port" "$worker" bench "$work" --dp "$dp" --checkpointing "$ckpt" \
        --layers 12 --dim 768 --heads 12 --vocab 50304 --batch 8 --seq 1024 --steps 20 \
        --warmup 5 >"$work/$name.log" 2>&1 || { echo "gpu_dist: $name failed"; status=1; }
      { echo "== $name"; tail -n 20 "$work/$name.log"; } >>"$out/dist/dist.log"
      tail -n 2 "$work/$name.log"
    done
  done
done
python3 - "$work" >"$out/dist/summary.jsonl" <<'PY' || status=1
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench-*.json"))):
    with open(path) as f:
        print(json.dumps(json.load(f)))
PY
cat "$out/dist/summary.jsonl"
exit $status
