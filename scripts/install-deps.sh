#!/usr/bin/env bash
# Installs the Debian 12 packages bitgrad needs to build, test and run its demo (Open MPI for the
# optional bitgrad::mpi component and its tests), and the node package the ONNX tests run (ONNX
# Runtime, pinned in tests/package.json).
# Idempotent: when every package is already present it does nothing (no apt-get update, no npm).
# Uses sudo only when not running as root.
set -euo pipefail

packages=(
  build-essential g++ cmake make pkg-config
  clang-14 libclang-rt-14-dev clang-format
  libxtensor-dev libxsimd-dev xtl-dev
  doctest-dev zlib1g-dev nlohmann-json3-dev libbenchmark-dev libcli11-dev
  libopenblas-dev
  dataset-fashion-mnist
  python3-onnx
  libopenmpi-dev openmpi-bin
)
# The ONNX Runtime test needs node and npm; any node >= 18 does (NodeSource's or Debian's).
if ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    sudo_cmd=()
  else
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# onnxruntime-node into tests/node_modules, as pinned by tests/package.json. --ignore-scripts:
# its install script downloads from a host that cannot be reached here; the CPU library it
# needs is inside the package.
tests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests" && pwd)"
ort_version="$(sed -n 's/.*"onnxruntime-node": *"\([^"]*\)".*/\1/p' "$tests_dir/package.json")"
installed=""
ort_package="$tests_dir/node_modules/onnxruntime-node/package.json"
if [ -f "$ort_package" ]; then
  installed="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$ort_package" | head -n 1)"
fi
if [ "$installed" != "$ort_version" ]; then
  echo "install-deps: npm install --ignore-scripts onnxruntime-node@$ort_version (in tests/)"
  (cd "$tests_dir" && npm install --ignore-scripts --save-exact --no-audit --no-fund \
    "onnxruntime-node@$ort_version")
fi
