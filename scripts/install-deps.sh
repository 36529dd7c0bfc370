#!/usr/bin/env bash
# Installs the Debian 12 packages bitgrad needs to build, test and run its demo.
# Idempotent: when every package is already present it does nothing (no apt-get update).
# Uses sudo only when not running as root.
set -euo pipefail

packages=(
  build-essential g++ cmake make pkg-config
  clang-14 libclang-rt-14-dev clang-format
  libxtensor-dev libxsimd-dev xtl-dev
  doctest-dev zlib1g-dev libbenchmark-dev libcli11-dev
  libopenblas-dev
  dataset-fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=()
else
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
