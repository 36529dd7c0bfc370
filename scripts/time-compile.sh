#!/usr/bin/env bash
# Compiler launcher that logs the CPU time of every compile (issue #18).
#   cmake --preset release -B build/timed \
#     -DCMAKE_CXX_COMPILER_LAUNCHER=/path/to/scripts/time-compile.sh
#   BITGRAD_TIME_LOG=/tmp/tu.log cmake --build build/timed -j2
#   sort -t$'\t' -k2,2nr /tmp/tu.log | head     # the largest translation units
# One tab-separated line per compile, appended to $BITGRAD_TIME_LOG (default
# <build dir>/compile-times.tsv): wall s, user+sys s, user s, sys s, max RSS KB, source file.
# CPU (user + sys) is what to compare on a shared machine; wall is inflated by other load.
set -u
log="${BITGRAD_TIME_LOG:-$PWD/compile-times.tsv}"
src="?"
prev=""
for a in "$@"; do
  if [[ "$prev" == "-c" ]]; then src="$a"; fi
  prev="$a"
done
if [[ "$src" == "?" ]]; then
  # A link or a compile without -c: keep the output name instead.
  prev=""
  for a in "$@"; do
    if [[ "$prev" == "-o" ]]; then src="link:$a"; fi
    prev="$a"
  done
fi
tmp="$(mktemp)"
/usr/bin/time -f '%e %U %S %M' -o "$tmp" "$@"
rc=$?
if read -r wall user sys rss <"$tmp"; then
  cpu="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')"
  # One printf per line keeps concurrent appends whole (lines are far below PIPE_BUF).
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$wall" "$cpu" "$user" "$sys" "$rss" "$src" >>"$log"
fi
rm -f "$tmp"
exit "$rc"
