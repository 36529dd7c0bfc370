#!/usr/bin/env bash
# Cross-builds the packed integer kernel tests and the deploy runtime's tests (the packed engine
# against its reference twin on every path, the runtime on a trained LeNet) for aarch64 and
# runs them under user-mode QEMU:
# once on QEMU's default CPU (with dot product: the neon and neon_dot paths run) and once as a
# Cortex-A53 (no dot product: neon runs, neon_dot is reported skipped).
#
#   bash scripts/install-arm-deps.sh     # g++-aarch64-linux-gnu, qemu-user (once)
#   bash scripts/test-aarch64.sh [-O2|-O3 ...extra flags]
#   BITGRAD_AARCH64_SLOW=1 bash scripts/test-aarch64.sh   # + test_runtime, on the default CPU
#
# test_runtime trains a LeNet before it checks the runtime, which under QEMU takes more than 20
# minutes of CPU, so it runs only when asked (and on one CPU model); test_packed_engine covers
# the packed engine on neon and neon_dot (exact against its reference twin, resident weights,
# agreement with the float path).
#
# The header-only dependencies (xsimd, xtensor, xtl, doctest) come from the host's /usr/include
# through a directory of links, so the cross compiler does not see the host's C library headers.
# The runtime tests read the gzip'd sample (tests/data) and so link the arm64 zlib
# (zlib1g-dev:arm64, from install-arm-deps.sh); they include nlohmann/json like the rest.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build/aarch64"
mkdir -p "$out/include"
for dep in xsimd xtensor xtl doctest nlohmann; do
  if [ -d "/usr/include/$dep" ]; then ln -sfn "/usr/include/$dep" "$out/include/$dep"; fi
done
for h in zlib.h zconf.h; do
  if [ -f "/usr/include/$h" ]; then ln -sfn "/usr/include/$h" "$out/include/$h"; fi
done

cxx=aarch64-linux-gnu-g++
if ! command -v "$cxx" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  echo "test-aarch64: needs $cxx and qemu-aarch64: run bash scripts/install-arm-deps.sh" >&2
  exit 1
fi
flags=("${@:--O2}")

tests=(test_packed_kernels test_packed_engine)
[ "${BITGRAD_AARCH64_SLOW:-0}" = 1 ] && tests+=(test_runtime)
for t in "${tests[@]}"; do
  echo "test-aarch64: building $t (${flags[*]})"
  libs=()
  [ "$t" = test_packed_kernels ] || libs=(-L/usr/lib/aarch64-linux-gnu -lz)
  "$cxx" -std=c++20 "${flags[@]}" -Wall -Wextra -Wpedantic -Werror -I"$root/include" \
    -isystem "$out/include" -DBITGRAD_TEST_DATA_DIR="\"$root/tests/data\"" \
    "$root/tests/main.cpp" "$root/tests/unit/$t.cpp" -o "$out/$t" "${libs[@]}"
  cpus=(max cortex-a53)
  [ "$t" = test_runtime ] && cpus=(max)
  for cpu in "${cpus[@]}"; do
    echo "test-aarch64: $t on qemu-aarch64 -cpu $cpu"
    QEMU_CPU=$cpu qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/$t"
  done
done
