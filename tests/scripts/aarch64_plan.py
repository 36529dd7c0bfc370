#!/usr/bin/env python3
"""What scripts/test-aarch64.sh's knobs change in what it builds and runs (issue #18).

The script's dry run (AARCH64_DRY_RUN=1) prints one "plan: ..." line per build and qemu run
instead of doing it, so the knobs' effects are checked without a cross compiler or qemu:
- by default: test_packed_engine and test_packed_kernels are built; the engine runs twice on
  QEMU's default CPU (`max`) with its slow cases excluded (--last=6 and --first=7 of the rest),
  the kernels on `max` and `cortex-a53`; test_runtime is neither built nor run;
- BITGRAD_AARCH64_SLOW=1: test_runtime is built and run on `max`, and the engine runs once,
  every case;
- the script's arguments are the compile flags of every build (-O2 when none);
- AARCH64_OUT: the run's logs are written under it.
The excluded cases must exist: each pattern of the exclusion matches at least one TEST_CASE of
tests/unit/test_packed_engine.cpp (a renamed case would otherwise run under qemu unnoticed, and
BITGRAD_AARCH64_SLOW would add nothing).

Usage: aarch64_plan.py  (from anywhere; paths are found from this file)
"""
import fnmatch
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "test-aarch64.sh")
ENGINE_TESTS = os.path.join(ROOT, "tests", "unit", "test_packed_engine.cpp")

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL: " + what)


def plan(env_extra, args):
    """The script's "plan: ..." lines (in order) for these environment variables and arguments."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, AARCH64_DRY_RUN="1", AARCH64_OUT=out)
        env.pop("BITGRAD_AARCH64_SLOW", None)
        env.update(env_extra)
        result = subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout + result.stderr)
        check(result.returncode == 0, f"dry run {env_extra} {args} exits 0, not {result.returncode}")
        # AARCH64_OUT: the run's logs are under it (not under build/aarch64).
        log = os.path.join(out, "logs", "test_packed_kernels.build.log")
        check(os.path.isfile(log), f"AARCH64_OUT holds the run's logs ({log})")
        return [line for line in result.stdout.splitlines() if line.startswith("plan: ")]


def exclusion_of(lines):
    """The --test-case-exclude value of the engine's runs (the same in each), or None."""
    values = {m.group(1) for line in lines for m in [re.search(r"--test-case-exclude=(.*?) --", line)] if m}
    check(len(values) <= 1, f"one exclusion for every engine run, not {values}")
    return values.pop() if values else None


def test_case_names(path):
    """The names of the TEST_CASEs in a doctest file (adjacent string literals joined)."""
    text = open(path, encoding="utf-8").read()
    names = []
    for m in re.finditer(r'TEST_CASE\(((?:\s*"(?:[^"\\]|\\.)*")+)', text):
        names.append("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))))
    return names


default = plan({}, [])
excluded = exclusion_of(default)
check(excluded is not None, "the default plan excludes the engine's slow cases")
shown = "<slow cases>"
expected_default = [
    "plan: build test_packed_engine with -O2",
    "plan: build test_packed_kernels with -O2",
    f"plan: run test_packed_engine on max with --test-case-exclude={shown} --last=6",
    f"plan: run test_packed_engine on max with --test-case-exclude={shown} --first=7",
    "plan: run test_packed_kernels on max",
    "plan: run test_packed_kernels on cortex-a53",
]
got_default = [line.replace(excluded or "\0", shown) for line in default]
check(got_default == expected_default, f"default plan:\n  {got_default}\nexpected\n  {expected_default}")

slow = plan({"BITGRAD_AARCH64_SLOW": "1"}, [])
expected_slow = [
    "plan: build test_runtime with -O2",
    "plan: build test_packed_engine with -O2",
    "plan: build test_packed_kernels with -O2",
    "plan: run test_runtime on max",
    "plan: run test_packed_engine on max",
    "plan: run test_packed_kernels on max",
    "plan: run test_packed_kernels on cortex-a53",
]
check(slow == expected_slow, f"BITGRAD_AARCH64_SLOW=1 plan:\n  {slow}\nexpected\n  {expected_slow}")

# Any value but 1 leaves the default (the script compares with "1").
check(plan({"BITGRAD_AARCH64_SLOW": "0"}, []) == default, "BITGRAD_AARCH64_SLOW=0 is the default plan")

flagged = plan({}, ["-O3", "-mcpu=cortex-a53"])
builds = [line for line in flagged if line.startswith("plan: build ")]
check(len(builds) == 2 and all(line.endswith(" with -O3 -mcpu=cortex-a53") for line in builds),
      f"the arguments are every build's flags: {builds}")

# The exclusion's patterns (doctest wildcards, comma-separated) against the engine's cases.
names = test_case_names(ENGINE_TESTS)
check(len(names) >= 20, f"found the engine's test cases ({len(names)})")
patterns = (excluded or "").split(",")
check(len(patterns) == 3, f"three slow-case patterns, not {patterns}")
for pattern in patterns:
    matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    check(len(matched) >= 1, f"pattern '{pattern}' matches a test case of test_packed_engine.cpp")
kept = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
check(len(kept) >= 7, f"--first=7 has a case left after the exclusion ({len(kept)} cases)")

if failures:
    print(f"aarch64_plan: {len(failures)} check(s) failed")
    sys.exit(1)
print(f"aarch64_plan: all checks passed ({len(names)} engine cases, {len(kept)} run by default)")
