#!/usr/bin/env bash
# Sets up a Debian 12 (or Ubuntu) machine to build remat, then configures and
# builds it. Idempotent: what is already there is not installed again.
#
#   scripts/setup.sh              # install what is missing, configure, build all
#   scripts/setup.sh TARGET...    # the same, building only these targets
#   scripts/setup.sh --configure-only
#
# Environment:
#   CMAKE_PREFIX_PATH / Torch_DIR  use this LibTorch (zip or own build) instead
#                                  of the pip wheel's
#   REMAT_VENV        Python venv with torch and the Hugging Face packages the
#                     tests compare against (default ~/.cache/remat/venv)
#   REMAT_BUILD_DIR   build directory (default ./build)
#   REMAT_TORCH_SPEC  pip requirement for torch (default torch==2.11.0)
#
# The torch wheel from PyPI is a CUDA build, and LibTorch's CMake files need a
# CUDA compiler and toolkit to configure against it, even for a CPU-only
# build. A CUDA toolkit on the machine (nvcc on PATH, in CUDA_HOME or in
# /usr/local/cuda) of torch's CUDA major version is used as it is, and
# remat's fused CUDA kernels are built with it. Without one, NVIDIA's compiler
# and header wheels of torch's CUDA version are installed into the venv and
# laid out as a toolkit in $REMAT_VENV/cuda-toolkit for CMake; the fused
# kernels are then left out (they run only on a GPU, whose machine has a
# toolkit).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
configure_only=false
if [ "${1:-}" = --configure-only ]; then
  configure_only=true
  shift
fi
venv=${REMAT_VENV:-$HOME/.cache/remat/venv}
build=${REMAT_BUILD_DIR:-$root/build}
torch_spec=${REMAT_TORCH_SPEC:-torch==2.11.0}

log() { printf '[setup] %s\n' "$*" >&2; }

# Logs "$* in N s", N the seconds since the previous phase ended: the phase
# timings in the log.
phase_start=$SECONDS
log_phase() {
  log "$* in $((SECONDS - phase_start)) s"
  phase_start=$SECONDS
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local wanted=(g++ cmake ninja-build git python3 python3-venv python3-pip
    libfmt-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
    libcli11-dev nlohmann-json3-dev libonig-dev libutf8proc-dev libgloo-dev ccache)
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
  log_phase "Debian packages installed"
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
  log_phase "venv ready"
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

# The CUDA version the pip LibTorch was built with ("13.0"), or nothing for a
# CPU build.
torch_cuda_version() {
  "$venv/bin/python" -c 'import torch; print(torch.version.cuda or "")'
}

# Prints the first nvcc that runs and is of CUDA major version $1, from
# CUDACXX, CUDA_HOME, PATH or /usr/local/cuda.
system_nvcc() {
  local want_major=${1%%.*} candidate release
  for candidate in "${CUDACXX:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" \
    /usr/local/cuda/bin/nvcc; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    release=$("$candidate" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')
    if [ "$release" = "$want_major" ]; then
      echo "$candidate"
      return
    fi
    log "ignoring $candidate: CUDA ${release:-of unknown version}, torch was built with CUDA $1"
  done
}

# Installs NVIDIA's CUDA compiler, runtime and header wheels of CUDA $1 into
# the venv and lays them out as a toolkit (bin/, include/, lib64/, nvvm/) in
# $venv/cuda-toolkit, whose path it prints. The wheels keep their libraries
# in lib/ with versioned names only; lib64/ links them under the names CMake
# and nvcc look for.
wheel_cuda_toolkit() {
  local version=$1 toolkit=$venv/cuda-toolkit
  local major=${version%%.*} minor=${version#*.}
  local spec="~=$major.${minor%%.*}.0"
  if [ ! -x "$toolkit/bin/nvcc" ] || ! "$toolkit/bin/nvcc" --version >/dev/null 2>&1; then
    log "no CUDA $major toolkit on this machine: installing NVIDIA's CUDA $version compiler wheels into $venv"
    "$venv/bin/pip" install -q "nvidia-cuda-nvcc$spec" "nvidia-nvvm$spec" "nvidia-cuda-crt$spec" \
      "nvidia-cuda-cccl$spec" "nvidia-cuda-runtime$spec"
    local cu
    cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu'"$major"'"))')
    [ -x "$cu/bin/nvcc" ] || {
      log "error: the nvidia-cuda-nvcc wheel has no $cu/bin/nvcc; install a CUDA $version toolkit, or build against a CPU LibTorch (CMAKE_PREFIX_PATH)"
      exit 1
    }
    rm -rf "$toolkit"
    mkdir -p "$toolkit/lib64"
    # nvcc finds its configuration, crt/ and the libraries from where it
    # lies, so bin/ holds hard links (same file system), not symbolic ones.
    cp -al "$cu/bin" "$toolkit/bin"
    ln -s "$cu/include" "$toolkit/include"
    ln -s "$cu/nvvm" "$toolkit/nvvm"
    local lib name
    for lib in "$cu"/lib/*; do
      [ -f "$lib" ] || continue
      name=$(basename "$lib")
      ln -sf "$lib" "$toolkit/lib64/$name"
      case $name in *.so.*) ln -sf "$lib" "$toolkit/lib64/${name%%.so.*}.so" ;; esac
    done
    log_phase "CUDA toolkit from wheels laid out in $toolkit"
  fi
  echo "$toolkit"
}

# The CMake arguments that say where CUDA is, for the pip LibTorch.
cuda_cmake_args() {
  [ -z "${Torch_DIR:-}${CMAKE_PREFIX_PATH:-}" ] || return 0  # the user's LibTorch
  local version nvcc toolkit
  version=$(torch_cuda_version)
  [ -n "$version" ] || return 0
  nvcc=$(system_nvcc "$version")
  if [ -n "$nvcc" ]; then
    echo "-DCMAKE_CUDA_COMPILER=$nvcc"
    return
  fi
  toolkit=$(wheel_cuda_toolkit "$version")
  echo "-DCMAKE_CUDA_COMPILER=$toolkit/bin/nvcc"
  echo "-DCUDAToolkit_ROOT=$toolkit"
  echo "-DCUDA_TOOLKIT_ROOT_DIR=$toolkit"
  echo "-DREMAT_CUDA_KERNELS=OFF"
}

# ccache, when installed, caches compilations across build directories and
# clones: the build below runs with paths taken relative to the source tree,
# and with the sloppiness settings the precompiled header (passed with
# -include) needs; a build by hand without them still compiles, caching less.
ccache_cmake_args() {
  command -v ccache >/dev/null 2>&1 || return 0
  echo "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
  echo "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"
}
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime

install_packages
ensure_venv
prefix=$(torch_prefix)
mapfile -t cmake_args < <(cuda_cmake_args; ccache_cmake_args)
phase_start=$SECONDS  # the CUDA wheels, if any, logged their own time (in a subshell)
configuration="$prefix ${cmake_args[*]}"
if [ ! -f "$build/build.ninja" ] || [ "$configuration" != "$(cat "$build/.remat-configuration" 2>/dev/null)" ]; then
  log "configuring $build against $prefix"
  rm -f "$build/CMakeCache.txt"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$venv/bin/python" "${cmake_args[@]}" >/dev/null
  echo "$configuration" >"$build/.remat-configuration"
  log_phase "configured"
fi
$configure_only && exit 0
if [ $# -gt 0 ]; then
  log "building $*"
  cmake --build "$build" --target "$@"
else
  log "building"
  cmake --build "$build"
fi
log_phase "built"
