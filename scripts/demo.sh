#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs the main job: remat-finetune's
# embedded default, which trains a small Llama-style model on generated
# two-digit additions with gradient checkpointing on, reports eval loss and
# exact-match accuracy before and after, tokens/s and peak memory, and
# measures a training step with checkpointing off and on. Arguments go to
# remat-finetune (`--help` lists them; `--model_name_or_path DIR --train_file
# FILE` fine-tunes your own model instead). CUDA is used when present.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REMAT_BUILD_DIR:-$root/build}
# Only the main job's program is built first: scripts/test.sh builds the rest.
"$root/scripts/setup.sh" remat-finetune
exec "$build/examples/remat-finetune" "$@"
