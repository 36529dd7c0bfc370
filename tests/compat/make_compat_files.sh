#!/usr/bin/env bash
# Builds tests/compat/make_compat_files.cpp against the headers of COMMIT (git archive of its
# include/ and tests/fuzz/checkpoint_net.hpp; compat_values.hpp is taken from this checkout)
# and writes the compatibility files into OUT_DIR.
#
#   tests/compat/make_compat_files.sh fdc34a8 tests/data/compat
#
# The committed files in tests/data/compat/ were written this way at commit fdc34a8 (model file
# version 1, checkpoint version 1); tests/unit/test_compat.cpp reads them with today's code.
set -euo pipefail
commit=${1:?usage: make_compat_files.sh COMMIT OUT_DIR}
out=${2:?usage: make_compat_files.sh COMMIT OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$repo" archive "$commit" include tests/fuzz/checkpoint_net.hpp | tar -x -C "$work"
mkdir -p "$work/tests/compat"
cp "$here/compat_values.hpp" "$here/make_compat_files.cpp" "$work/tests/compat/"
${CXX:-g++} -std=c++20 -O2 -I"$work/include" $(pkg-config --cflags xtensor 2>/dev/null || true) \
  "$work/tests/compat/make_compat_files.cpp" -o "$work/make_compat_files" -lz
mkdir -p "$out"
"$work/make_compat_files" "$out"
