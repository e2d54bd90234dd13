#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs the main job: remat-demo trains
# a small GPT-style model without and with gradient checkpointing and prints
# memory and step time of both. Arguments go to remat-demo (--help lists them).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${REMAT_BUILD_DIR:-$root/build}
"$root/scripts/setup.sh"
exec "$build/examples/remat-demo" "$@"
