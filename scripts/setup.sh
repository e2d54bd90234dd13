#!/usr/bin/env bash
# Sets up a Debian 12 (or Ubuntu) machine to build remat, then configures and
# builds it. Idempotent: what is already there is not installed again.
#
#   scripts/setup.sh              # install what is missing, configure, build
#
# Environment:
#   CMAKE_PREFIX_PATH / Torch_DIR  use this LibTorch (zip or own build) instead
#                                  of the pip wheel's
#   REMAT_VENV        Python venv with torch and the Hugging Face packages the
#                     tests compare against (default ~/.cache/remat/venv)
#   REMAT_BUILD_DIR   build directory (default ./build)
#   REMAT_TORCH_SPEC  pip requirement for torch (default torch==2.11.0)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REMAT_VENV:-$HOME/.cache/remat/venv}
build=${REMAT_BUILD_DIR:-$root/build}
torch_spec=${REMAT_TORCH_SPEC:-torch==2.11.0}

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local wanted=(g++ cmake ninja-build git python3 python3-venv python3-pip
    libfmt-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
    libcli11-dev nlohmann-json3-dev libonig-dev libutf8proc-dev libgloo-dev)
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# The venv: torch (whose LibTorch is built against unless the user gives
# one), the Hugging Face packages the tests use as the reference (accelerate
# for the Hugging Face Trainer benchmark anchor), tensorboard (reads back the
# event files remat writes) and matplotlib (scripts/plot_metrics.py and the
# benchmark plots).
python_packages=("$torch_spec" numpy transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0
  accelerate==1.15.0 tensorboard==2.21.0 matplotlib==3.11.2)
ensure_venv() {
  if "$venv/bin/python" -c \
    'import torch, transformers, tokenizers, safetensors, accelerate, tensorboard, matplotlib' \
    >/dev/null 2>&1; then
    return
  fi
  log "installing ${python_packages[*]} into $venv (torch is a CUDA build of several GB; once)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "${python_packages[@]}"
}

# Prints the CMake prefix of the LibTorch to build against.
torch_prefix() {
  if [ -n "${Torch_DIR:-}" ]; then
    echo "$Torch_DIR"
  elif [ -n "${CMAKE_PREFIX_PATH:-}" ]; then
    echo "$CMAKE_PREFIX_PATH"
  else
    "$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)'
  fi
}

install_packages
ensure_venv
prefix=$(torch_prefix)
if [ ! -f "$build/build.ninja" ] || [ "$prefix" != "$(cat "$build/.remat-torch-prefix" 2>/dev/null)" ]; then
  log "configuring $build against $prefix"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$venv/bin/python" >/dev/null
  echo "$prefix" >"$build/.remat-torch-prefix"
fi
log "building"
cmake --build "$build"
