# Sourced by the GPU scripts: prints the CMAKE_PREFIX_PATH for a machine that
# may lack development packages. LibTorch comes from CMAKE_PREFIX_PATH or the
# python's torch; .deps/onig (the unpacked libonig-dev package: headers and the
# unversioned library link, pointed at the installed runtime here) and
# .deps/utf8proc (the unpacked runtime and -dev packages) are added when the
# system has no headers of its own.
#
#   prefix=$(remat_gpu_prefix ROOT PYTHON)
remat_gpu_prefix() {
  local root=$1 python=${2:-python3}
  local prefix=${CMAKE_PREFIX_PATH:-$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')}
  if [ -d "$root/.deps/onig/usr/include" ] && [ ! -f /usr/include/oniguruma.h ]; then
    local onig=/tmp/remat-deps/onig
    rm -rf "$onig" && mkdir -p "$onig/lib"
    cp -r "$root/.deps/onig/usr/include" "$onig/include"
    ln -sf "$(ls /usr/lib/x86_64-linux-gnu/libonig.so.* | head -n 1)" "$onig/lib/libonig.so"
    prefix="$prefix;$onig"
  fi
  if [ -d "$root/.deps/utf8proc/usr/include" ] && [ ! -f /usr/include/utf8proc.h ]; then
    prefix="$prefix;$root/.deps/utf8proc/usr"
  fi
  echo "$prefix"
}
