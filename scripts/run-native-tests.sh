#!/usr/bin/env bash
# Runs the unit test programs that `make test-native` built (list: tests/CMakeLists.txt,
# bitgrad_native_tests, written by CMake into <build>/tests/native_tests.txt). Every program runs
# even when one fails; the script fails if any did, naming them.
set -uo pipefail
build="${1:?usage: run-native-tests.sh <build dir>}"
list="$build/tests/native_tests.txt"
if [[ ! -f "$list" ]]; then
  echo "run-native-tests.sh: $list does not exist (configure $build first)" >&2
  exit 2
fi
read -r -a names < "$list"
failed=()
for name in "${names[@]}"; do
  program="$build/tests/test_$name"
  echo "== test_$name"
  if [[ ! -x "$program" ]]; then
    echo "run-native-tests.sh: $program was not built" >&2
    failed+=("test_$name")
    continue
  fi
  # Passive OpenMP waiting, as ctest runs the unit tests (tests/CMakeLists.txt).
  OMP_WAIT_POLICY=PASSIVE "$program" || failed+=("test_$name")
done
if ((${#failed[@]})); then
  echo "run-native-tests.sh: failed in $build: ${failed[*]}" >&2
  exit 1
fi
echo "run-native-tests.sh: ${#names[@]} programs passed in $build"
