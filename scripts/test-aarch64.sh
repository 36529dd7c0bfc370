#!/usr/bin/env bash
# Cross-builds the packed integer kernel tests for aarch64 and runs them under user-mode QEMU:
# once on QEMU's default CPU (with dot product: the neon and neon_dot paths run) and once as a
# Cortex-A53 (no dot product: neon runs, neon_dot is reported skipped).
#
#   bash scripts/install-arm-deps.sh     # g++-aarch64-linux-gnu, qemu-user (once)
#   bash scripts/test-aarch64.sh [-O2|-O3 ...extra flags]
#
# The header-only dependencies (xsimd, xtensor, xtl, doctest) come from the host's /usr/include
# through a directory of links, so the cross compiler does not see the host's C library headers.
# Nothing here needs zlib: the test includes kernels/ only.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build/aarch64"
mkdir -p "$out/include"
for dep in xsimd xtensor xtl doctest; do
  if [ -d "/usr/include/$dep" ]; then ln -sfn "/usr/include/$dep" "$out/include/$dep"; fi
done

cxx=aarch64-linux-gnu-g++
if ! command -v "$cxx" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  echo "test-aarch64: needs $cxx and qemu-aarch64: run bash scripts/install-arm-deps.sh" >&2
  exit 1
fi
flags=("${@:--O2}")

tests=(test_packed_kernels)
for t in "${tests[@]}"; do
  echo "test-aarch64: building $t (${flags[*]})"
  "$cxx" -std=c++20 "${flags[@]}" -Wall -Wextra -Wpedantic -Werror -I"$root/include" \
    -isystem "$out/include" "$root/tests/main.cpp" "$root/tests/unit/$t.cpp" -o "$out/$t"
  for cpu in max cortex-a53; do
    echo "test-aarch64: $t on qemu-aarch64 -cpu $cpu"
    QEMU_CPU=$cpu qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/$t"
  done
done
