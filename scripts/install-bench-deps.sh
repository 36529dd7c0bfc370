#!/usr/bin/env bash
# Installs the optional Debian 12 packages that `make bench-peers` needs: PyTorch (CPU) and
# NumPy, to time the same training step in PyTorch next to bitgrad (benchmarks/peers/).
# Not part of `make test`. Idempotent: when every package is already present it does nothing
# (no apt-get update). Uses sudo only when not running as root.
set -euo pipefail

packages=(python3 python3-torch python3-numpy)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-bench-deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=()
else
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
