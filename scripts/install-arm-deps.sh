#!/usr/bin/env bash
# Installs what the aarch64 cross build of bitgrad's tests needs on a Debian 12 x86-64 host:
# the cross compiler (g++-aarch64-linux-gnu) and user-mode QEMU (qemu-aarch64) to run the
# result; scripts/test-aarch64.sh then builds and runs the aarch64 tests. Header-only
# dependencies (xtensor, xsimd, xtl, doctest, nlohmann) come from the host's /usr/include; the
# runtime tests link the arm64 zlib (zlib1g-dev:arm64, after dpkg --add-architecture arm64).
# Idempotent: when every package is already present it does nothing (no apt-get update).
# Uses sudo only when not running as root.
set -euo pipefail

packages=(g++-aarch64-linux-gnu qemu-user zlib1g-dev:arm64)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-arm-deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=()
else
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  "${sudo_cmd[@]}" dpkg --add-architecture arm64
fi
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
