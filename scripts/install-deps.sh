#!/usr/bin/env bash
# Installs what building Ember needs on a bare Debian/Ubuntu machine that has the Rust toolchain:
# libclang and clang (bindgen generates RocksDB's bindings with them) and g++ (RocksDB's C++).
# Idempotent: installs nothing when everything is there, so every `make` target can run it.
# apt-get runs with sudo when not root. Protobuf needs nothing: protox compiles the .proto files.
set -euo pipefail

need=()
# libclang itself (libclang.so / libclang-N.so): llvm alone brings only libclang-cpp.
have_libclang() {
  local dirs="/usr/lib/llvm-*/lib /usr/lib/*-linux-gnu ${LIBCLANG_PATH:-}"
  # shellcheck disable=SC2086
  for f in $(for d in $dirs; do echo "$d"/libclang.so* "$d"/libclang-[0-9]*.so*; done); do
    [ -e "$f" ] && return 0
  done
  return 1
}
have_libclang || need+=(libclang-dev)
command -v clang >/dev/null || need+=(clang)
command -v g++ >/dev/null || need+=(g++)
command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust with rustup first" >&2; exit 1; }

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
command -v apt-get >/dev/null || {
  echo "install-deps: missing ${need[*]}, and this is not a Debian/Ubuntu machine: install them by hand" >&2
  exit 1
}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${need[*]} with apt-get" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
