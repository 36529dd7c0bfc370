#!/usr/bin/python3
"""The options of the benchmarks' own side-by-side modes end to end: bench_conv2d --compare
(--batch, --rounds, --filter, --cpu, --callgrind), bench_optim --compare (--rounds) and
bench_inference's --deploy-run / --deploy-callgrind numbers and BITGRAD_FLAT_MIN_WIDTH, run for
real on tiny settings. Each option's effect is checked in what the program prints (its settings
line, the rows of its table, the work a larger batch adds), and every bad value must stop the
program with exit status 2 and a message naming the option. `make bench-build` runs it on the
benchmarks it has just built:

  /usr/bin/python3 tests/scripts/bench_options.py build/bench-build/benchmarks
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

BENCH = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "build/bench-build/benchmarks")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
failures = []


def run(program, *args):
    return subprocess.run([str(BENCH / program), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def check(condition, what):
    print(("ok      " if condition else "FAILED  ") + what)
    if not condition:
        failures.append(what)


def table_rows(stdout):
    """The Markdown table's data rows, split into cells."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # rows[0]: the header


def settings_line(stdout):
    return stdout.splitlines()[0] if stdout else ""


# bench_conv2d --compare ---------------------------------------------------------------------
r = run("bench_conv2d", "--compare", "--batch", "2", "--rounds", "1", "--filter", "lenet.conv1")
check(r.returncode == 0, f"bench_conv2d --compare runs (stderr: {r.stderr.strip()[:200]})")
check(settings_line(r.stdout) ==
      'bench_conv2d --compare: batch 2, 1 rounds, layers matching "lenet.conv1", wall clock',
      f"bench_conv2d: the settings line shows --batch, --rounds, --filter ({settings_line(r.stdout)!r})")
rows = table_rows(r.stdout)
check([row[:2] for row in rows] == [["lenet.conv1", p] for p in ("fprop", "dgrad", "wgrad")],
      f"bench_conv2d --filter lenet.conv1: exactly its three passes ({[row[:2] for row in rows]})")

r = run("bench_conv2d", "--compare", "--batch", "1", "--rounds", "1", "--filter", "lenet", "--cpu")
check(r.returncode == 0 and settings_line(r.stdout).endswith("process CPU clock"),
      "bench_conv2d --cpu: timed with the process's CPU clock")
check(sorted({row[0] for row in table_rows(r.stdout)}) == ["lenet.conv1", "lenet.conv2"],
      "bench_conv2d --filter lenet: the two LeNet-5 layers")

r = run("bench_conv2d", "--compare", "--rounds", "5", "--batch", "1", "--filter", "lenet.conv2",
        "--callgrind")
check(r.returncode == 0 and settings_line(r.stdout) ==
      'bench_conv2d --compare: batch 1, 1 rounds, layers matching "lenet.conv2", callgrind counts',
      "bench_conv2d --callgrind: one round, each variant counted once")


def im2col_fprop_ms(batch):
    out = run("bench_conv2d", "--compare", "--batch", str(batch), "--rounds", "3", "--filter",
              "lenet.conv2", "--cpu").stdout
    return float(table_rows(out)[0][3])


# 32 images are 32 times the work of one: even on a loaded machine more than 4 times the time.
one, many = im2col_fprop_ms(1), im2col_fprop_ms(32)
check(many > 4 * one, f"bench_conv2d --batch: 32 images take {many:.3f} ms, 1 image {one:.3f} ms")

for args, named in [(["--batch", "0"], "--batch"), (["--batch", "x"], "--batch"),
                    (["--rounds", "2.5"], "--rounds"), (["--rounds"], "--rounds needs a value"),
                    (["--filter", "nolayer"], "--filter nolayer matches no layer"),
                    (["--bogus"], "unknown option --bogus")]:
    r = run("bench_conv2d", "--compare", *args)
    check(r.returncode == 2 and named in r.stderr and r.stdout == "",
          f"bench_conv2d --compare {' '.join(args)}: refused naming {named!r} ({r.stderr.strip()!r})")

# bench_optim --compare ----------------------------------------------------------------------
r = run("bench_optim", "--compare", "--rounds", "1")
check(r.returncode == 0 and settings_line(r.stdout) == "bench_optim --compare: 1 rounds, 1 threads",
      f"bench_optim --compare --rounds 1: the settings line ({settings_line(r.stdout)!r})")
rows = table_rows(r.stdout)
sizes = [str(1 << k) for k in range(10, 22)]
check([(row[0], row[1]) for row in rows] ==
      [(step, n) for step in ("adam", "sgd momentum") for n in sizes],
      "bench_optim --compare: Adam and SGD at n = 2^10 .. 2^21")

for args, named in [(["--rounds", "0"], "--rounds"), (["--rounds", "x"], "--rounds"),
                    (["--rounds"], "--rounds needs a value"), (["--bogus"], "unknown option --bogus")]:
    r = run("bench_optim", "--compare", *args)
    check(r.returncode == 2 and named in r.stderr and r.stdout == "",
          f"bench_optim --compare {' '.join(args)}: refused naming {named!r} ({r.stderr.strip()!r})")

# bench_inference --deploy-run / --deploy-callgrind (run_deploy.py's and the measuring sections'
# entry points): the numbers and BITGRAD_FLAT_MIN_WIDTH ------------------------------------------
with tempfile.TemporaryDirectory() as models:
    r = run("bench_inference", "--deploy-export", models)
    check(r.returncode == 0, f"bench_inference --deploy-export writes the models ({r.stderr.strip()[:200]})")
    lenet, resnet = f"{models}/lenet5.bgm", f"{models}/resnet20.bgm"
    r = run("bench_inference", "--deploy-run", lenet, "int", "3", "1", "0.01")
    row = json.loads(r.stdout) if r.returncode == 0 else {}
    check(row.get("batch") == 3 and row.get("threads") == 1 and row.get("calls", 0) >= 5,
          f"bench_inference --deploy-run: BATCH 3, THREADS 1, at least 5 calls ({r.stdout.strip()!r})")

    def flat_convs(width):
        env = dict(ENV) if width is None else dict(ENV, BITGRAD_FLAT_MIN_WIDTH=width)
        r = subprocess.run([str(BENCH / "bench_inference"), "--deploy-callgrind", resnet, "int", "2", "1"],
                           capture_output=True, text=True, env=env, timeout=600)
        return int(r.stdout.split("flat convs ")[1]) if r.returncode == 0 else None

    default, narrow, none = flat_convs(None), flat_convs("1"), flat_convs("100000")
    check(none == 0 and default is not None and narrow is not None and narrow > default > 0,
          f"BITGRAD_FLAT_MIN_WIDTH: flat convs {default} by default, {narrow} from width 1, "
          f"{none} from 100000")

    for args, env, named in [
            (["--deploy-run", lenet, "int", "abc", "1", "1"], {}, ("BATCH", "'abc'")),
            (["--deploy-run", lenet, "int", "-1", "1", "1"], {}, ("BATCH", "'-1'")),
            (["--deploy-run", lenet, "int", "2", "0", "1"], {}, ("THREADS", "'0'")),
            (["--deploy-run", lenet, "int", "2", "1025", "1"], {}, ("THREADS", "<= 1024", "'1025'")),
            (["--deploy-run", lenet, "int", "2", "1", "0"], {}, ("MIN_TIME", "'0'")),
            (["--deploy-run", lenet, "fp", "2", "1", "1"], {}, ("ENGINE", "'fp'")),
            (["--deploy-callgrind", lenet, "int", "2", "x"], {}, ("CALLS", "'x'")),
            (["--deploy-callgrind", lenet, "int", "2", "1"], {"BITGRAD_FLAT_MIN_WIDTH": "wide"},
             ("BITGRAD_FLAT_MIN_WIDTH", "'wide'"))]:
        r = subprocess.run([str(BENCH / "bench_inference"), *args], capture_output=True, text=True,
                           env=dict(ENV, **env), timeout=600)
        check(r.returncode == 2 and all(n in r.stderr for n in named) and r.stdout == "",
              f"bench_inference {' '.join(args[:1] + args[2:])}: refused naming {named} ({r.stderr.strip()!r})")

if failures:
    print(f"bench_options.py: {len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("bench_options.py: every check passed")
