#!/usr/bin/env bash
# Plays a newcomer on this machine: no CUDA toolkit, an empty home (so no
# venv, pip cache or compiler cache), Debian's default PATH and environment,
# and a fresh clone of this repository's HEAD. Then runs the two commands of
# the README's "Two commands" section exactly as written there and checks
# what they print: the main job's exact-match accuracy after training must be
# 100%, and ctest must report every test passed. Each command's wall time
# goes into the summary; scripts/setup.sh logs its phases (Debian packages,
# venv, configure, build).
#
#   scripts/fresh_machine_test.sh                  # the whole newcomer run (~40 min on 2 cores)
#   scripts/fresh_machine_test.sh --configure-only # only configure, with this machine's venv
#
# --configure-only is the fast part CI runs: scripts/setup.sh configures a
# scratch build directory with the CUDA toolkit hidden, which fails if a
# machine without one can no longer configure.
#
# Needs root (a private mount namespace hides the toolkit). Environment:
#   REMAT_FRESH_DIR  where the clone, home and logs go (default: a new /tmp dir)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-full}
case $mode in
  full | --configure-only) ;;
  *)
    echo "usage: $0 [--configure-only]" >&2
    exit 2
    ;;
esac

log() { printf '[fresh] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "needs root, for the mount namespace that hides the CUDA toolkit; skipped"
  exit 0
fi

# Inside the namespace: hides every CUDA toolkit, then runs the rest.
if [ "${REMAT_FRESH_NAMESPACE:-}" != 1 ]; then
  exec env REMAT_FRESH_NAMESPACE=1 unshare --mount --propagation private bash "$0" "$@"
fi

debian_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The first executable nvcc on Debian's PATH (bash's `command -v` would also
# name a file that is not executable).
executable_nvcc() {
  local dir
  for dir in ${debian_path//:/ }; do
    if [ -f "$dir/nvcc" ] && [ -x "$dir/nvcc" ]; then
      echo "$dir/nvcc"
      return 0
    fi
  done
  return 1
}
hide_cuda() {
  local dir nvcc blank
  for dir in /usr/local/cuda /usr/local/cuda-* /opt/cuda; do
    [ -d "$dir" ] || continue
    mount -t tmpfs -o ro none "$(readlink -f "$dir")"
  done
  # Copies of nvcc outside the toolkit's folder (e.g. in /usr/local/bin) are
  # covered by an empty file that is no program.
  blank=$(mktemp)
  chmod 644 "$blank"
  while nvcc=$(executable_nvcc); do
    mount --bind "$blank" "$nvcc"
  done
  if [ -e /usr/local/cuda/bin/nvcc ]; then
    log "could not hide the CUDA toolkit"
    exit 1
  fi
}
hide_cuda

if [ "$mode" = --configure-only ]; then
  build=$(mktemp -d /tmp/remat-nocuda-build.XXXXXX)
  trap 'rm -rf "$build"' EXIT
  log "configuring $build with no CUDA toolkit on the machine"
  PATH=$debian_path:$PATH REMAT_BUILD_DIR=$build bash "$root/scripts/setup.sh" --configure-only
  grep -q 'REMAT_CUDA_KERNELS:BOOL=OFF' "$build/CMakeCache.txt" || {
    log "the fused CUDA kernels were not left out without a toolkit"
    exit 1
  }
  log "configure without a CUDA toolkit: ok"
  exit 0
fi

work=${REMAT_FRESH_DIR:-$(mktemp -d /tmp/remat-fresh.XXXXXX)}
mkdir -p "$work/home"
log "working in $work"
git clone -q "$root" "$work/remat"
cd "$work/remat"

# The README's commands, as its "Two commands" section writes them.
mapfile -t commands < <(sed -n '/^## Two commands/,/^## /p' README.md | sed -n 's/^\(bash scripts\/[a-z_]*\.sh\).*/\1/p')
if [ "${#commands[@]}" -ne 2 ]; then
  log "expected two commands in the README's \"Two commands\" section, found: ${commands[*]:-none}"
  exit 1
fi

summary=$work/summary.txt
: >"$summary"
run() {
  local name=$1 command=$2 start=$SECONDS status=0
  log "running: $command"
  env -i HOME="$work/home" PATH="$debian_path" LANG=C.UTF-8 TERM=dumb \
    bash -c "$command" >"$work/$name.log" 2>&1 || status=$?
  printf '%-28s exit %d, %d s\n' "$command" "$status" "$((SECONDS - start))" | tee -a "$summary"
  grep '^\[setup\]' "$work/$name.log" | sed 's/^/    /' | tee -a "$summary"
  return "$status"
}

failed=0
run main "${commands[0]}" || failed=1
if ! grep -Eq 'exact-match accuracy +[0-9.]+% +100\.0%' "$work/main.log"; then
  log "the main job did not reach 100% exact match (see $work/main.log)"
  failed=1
fi
run tests "${commands[1]}" || failed=1
if ! grep -Eq '^100% tests passed, 0 tests failed out of [0-9]+' "$work/tests.log"; then
  log "ctest did not report every test passed (see $work/tests.log)"
  failed=1
fi
grep -E 'exact-match accuracy|tests passed' "$work/main.log" "$work/tests.log" | tee -a "$summary"
[ "$failed" -eq 0 ] && log "fresh machine: both README commands pass" || log "fresh machine: FAILED"
log "summary in $summary"
exit "$failed"
