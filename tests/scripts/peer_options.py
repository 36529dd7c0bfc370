#!/usr/bin/python3
"""The peer benchmark drivers' options end to end (benchmarks/peers/run_peers.py and
run_deploy.py, and benchmarks/compare_builds.py): each driver runs stub programs in place of bench_train / bench_inference,
PyTorch, Node.js and bgm_to_onnx. Every stub appends its arguments and the environment variables
the drivers set to a log and prints a result in the real program's format, with a rate that
depends on its arguments. The test then checks, option by option, what reached the children
(--malloc, --threads, --omp-wait-policy, --only, --min-time, --rounds, --engines, --models,
--batches) and what the drivers computed from the stubs' rates (medians, ratios, JSON).

  /usr/bin/python3 tests/scripts/peer_options.py
"""
import json
import os
import pathlib
import stat
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
PEERS = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))
from run_peers import RETAIN_ENV  # noqa: E402

WATCHED = ["OMP_NUM_THREADS", "OMP_WAIT_POLICY"] + sorted(RETAIN_ENV)

# One stub for every program: what it prints depends on how it was called. Rates: bitgrad
# 1000 x threads images/s, PyTorch 400 x threads, ONNX Runtime 100 x threads, so every ratio is
# known in advance (bitgrad / PyTorch = 2.5).
STUB = r'''#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({"prog": os.path.basename(sys.argv[0]), "args": args,
                          "env": {k: os.environ.get(k) for k in WATCHED}}) + "\n")
threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
prog = os.path.basename(sys.argv[0])
if prog == "bench":
    if args[0] == "--deploy-export":
        os.makedirs(args[1], exist_ok=True)
        sys.exit(0)
    if args[0] == "--deploy-run":
        print(json.dumps({"ips": 1000.0 * threads, "p50_us": 10.0, "p99_us": 20.0,
                          "peak_rss_kb": 2048}))
        sys.exit(0)
    name = args[0].split("=", 1)[1].lstrip("^").split("(")[0]
    # compare_builds.py runs a copy in a folder named new: twice the rate. The CPU time is 0.8
    # of the wall time (a shared core).
    scale = 2.0 if os.path.basename(os.path.dirname(sys.argv[0])) == "new" else 1.0
    print(json.dumps({"benchmarks": [{"name": name, "items_per_second": 1000.0 * threads * scale,
                                      "real_time": 2.0, "cpu_time": 1.6}]}))
elif prog == "python":
    if args[0].endswith("train_pytorch.py"):
        print(json.dumps({"ips": 400.0 * threads}))
    else:
        print(json.dumps({"ips": 400.0 * threads, "p50_us": 30.0, "p99_us": 40.0,
                          "peak_rss_kb": 4096}))
elif prog == "node":
    print(json.dumps({"ips": 100.0 * threads, "p50_ms": 0.05, "p99_ms": 0.06,
                      "peak_rss_kb": 8192}))
elif prog == "bgm_to_onnx":
    open(args[args.index("-o") + 1], "w").close()
'''


def make_stubs(folder):
    code = STUB.replace("WATCHED", repr(WATCHED))
    stubs = {}
    for prog in ("bench", "python", "node", "bgm_to_onnx"):
        path = folder / prog
        path.write_text(code)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        stubs[prog] = str(path)
    return stubs


def run(driver, args, log, env_extra=None):
    """Runs a driver; returns the stub calls it made (one dict per child) and its stdout."""
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in WATCHED}
    env.update(env_extra or {}, STUB_LOG=str(log))
    p = subprocess.run([sys.executable, str(PEERS / driver)] + args, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{driver} {args} failed ({p.returncode}):\n{p.stderr}")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return calls, p.stdout


def check_peers(tmp, stubs, log):
    out = tmp / "peers.json"
    common = ["--bench", stubs["bench"], "--python", stubs["python"], "--quiet", "1",
              "--out", str(out)]

    # --malloc retain (default), --threads, --only, --rounds, --min-time, --omp-wait-policy.
    calls, stdout = run("run_peers.py", common + ["--only", "lenet5/quant/64", "--threads", "1,2",
                                                  "--rounds", "3", "--min-time", "0.25",
                                                  "--omp-wait-policy", "passive"], log)
    assert len(calls) == 2 * 2 * 3, calls  # 2 programs x 2 thread counts x 3 rounds
    for c in calls:
        for k, v in RETAIN_ENV.items():
            assert c["env"][k] == v, (k, c)
        assert c["env"]["OMP_WAIT_POLICY"] == "passive", c
    bench = [c for c in calls if c["prog"] == "bench"]
    assert {c["args"][0] for c in bench} == {"--benchmark_filter=^train/lenet5/quant/64(/|$)"}
    assert all("--benchmark_min_time=0.25" in c["args"] for c in bench), bench
    torch = [c for c in calls if c["prog"] == "python"]
    for c in torch:
        a = c["args"]
        assert a[a.index("--model") + 1] == "lenet5" and "--quant" in a, a
        assert a[a.index("--batch") + 1] == "64" and a[a.index("--min-time") + 1] == "0.25", a
        assert a[a.index("--threads") + 1] == c["env"]["OMP_NUM_THREADS"], c
    assert sorted(c["env"]["OMP_NUM_THREADS"] for c in calls) == ["1"] * 6 + ["2"] * 6
    rows = json.loads(out.read_text())
    assert [(r["model"], r["quantized"], r["batch"], r["threads"]) for r in rows] == \
        [("lenet5", True, 64, 1), ("lenet5", True, 64, 2)], rows
    for r in rows:
        t = r["threads"]
        assert (r["bitgrad_ips"], r["pytorch_ips"], r["ratio"], r["malloc"]) == \
            (1000.0 * t, 400.0 * t, 2.5, "retain"), r
    assert "| LeNet-5 | frac_bits | 64 | 2 | 2000 | 800 | 2.50x |" in stdout, stdout

    # --malloc glibc: none of the tunables reach the children; no wait policy unless asked.
    calls, _ = run("run_peers.py", common + ["--only", "resnet20/fp32", "--threads", "2",
                                             "--rounds", "1", "--malloc", "glibc"], log)
    assert len(calls) == 2, calls
    for c in calls:
        assert all(c["env"][k] is None for k in RETAIN_ENV), c
        assert c["env"]["OMP_WAIT_POLICY"] is None and c["env"]["OMP_NUM_THREADS"] == "2", c
    assert calls[[c["prog"] for c in calls].index("bench")]["args"][0] == \
        "--benchmark_filter=^train/resnet20/fp32/128(/|$)"
    assert "--quant" not in calls[[c["prog"] for c in calls].index("python")]["args"]
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["malloc"] == "glibc", rows


def check_deploy(tmp, stubs, log):
    out = tmp / "deploy" / "deploy.json"
    common = ["--bench", stubs["bench"], "--python", stubs["python"], "--node", stubs["node"],
              "--bgm-to-onnx", stubs["bgm_to_onnx"], "--quiet", "1", "--out", str(out)]

    # --engines, --models, --batches, --threads, --rounds, --min-time, --malloc retain.
    engines = ["bitgrad_int", "pytorch_int8_static", "onnxruntime_qdq"]
    calls, stdout = run("run_deploy.py", common + [
        "--engines", ",".join(engines), "--models", "lenet5,resnet20", "--batches", "1",
        "--threads", "2", "--rounds", "2", "--min-time", "0.5"], log)
    export = [c for c in calls if c["args"][:1] == ["--deploy-export"]]
    assert len(export) == 1 and export[0]["args"][1] == str(out.parent / "deploy-models"), export
    onnx = [c for c in calls if c["prog"] == "bgm_to_onnx"]
    assert sorted(c["args"][c["args"].index("--form") + 1] for c in onnx) == ["qdq", "qdq"], onnx
    measured = [c for c in calls if c not in export and c not in onnx]
    assert len(measured) == 3 * 2 * 2, measured  # engines x models x rounds
    for c in measured:
        assert c["env"]["OMP_NUM_THREADS"] == "2", c
        assert all(c["env"][k] == v for k, v in RETAIN_ENV.items()), c
    runs = [c["args"] for c in measured if c["prog"] == "bench"]
    assert sorted(a[1].rsplit("/", 1)[1] for a in runs) == ["lenet5.bgm"] * 2 + ["resnet20.bgm"] * 2
    assert all(a[2:] == ["int", "1", "2", "0.5"] for a in runs), runs
    torch = [c["args"] for c in measured if c["prog"] == "python"]
    assert all(a[a.index("--engine") + 1] == "int8_static" and a[a.index("--batch") + 1] == "1"
               for a in torch), torch
    node = [c["args"] for c in measured if c["prog"] == "node"]
    assert all(a[1].endswith("-qdq.onnx") and a[a.index("--seconds") + 1] == "0.5"
               for a in node), node
    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch"], r["threads"]) for r in rows] == \
        [("lenet5", 1, 2), ("resnet20", 1, 2)], rows
    for r in rows:
        assert r["ips"] == {"bitgrad_int": 2000.0, "pytorch_int8_static": 800.0,
                            "onnxruntime_qdq": 200.0}, r
        assert r["p50_us"]["onnxruntime_qdq"] == 50.0, r  # ort_infer.mjs reports milliseconds
    assert "| 2.50x |" in stdout and "malloc retain" in stdout, stdout

    # --malloc glibc reaches every engine's process.
    calls, stdout = run("run_deploy.py", common + [
        "--engines", "bitgrad_float,pytorch_fp32", "--models", "vgg_small", "--batches", "256",
        "--threads", "1", "--rounds", "1", "--malloc", "glibc"], log)
    assert len(calls) == 1 + 2, calls
    for c in calls[1:]:
        assert all(c["env"][k] is None for k in RETAIN_ENV), c
    assert calls[1 if calls[1]["prog"] == "bench" else 2]["args"][2:4] == ["float", "256"], calls
    assert "malloc glibc" in stdout, stdout

    # An unknown engine is an error that names it, before anything runs.
    log.write_text("")
    p = subprocess.run([sys.executable, str(PEERS / "run_deploy.py")] + common +
                       ["--engines", "bitgrad_int,tflite"], capture_output=True, text=True,
                       env=dict(os.environ, STUB_LOG=str(log)))
    assert p.returncode != 0 and "unknown engine tflite" in p.stderr, p.stderr
    assert log.read_text() == "", "nothing may run after a bad --engines"


def check_compare_builds(tmp, stubs, log):
    """benchmarks/compare_builds.py: --rows, --threads, --rounds, --min-time, --cpu and
    --show-rounds."""
    (tmp / "new").mkdir()
    new = tmp / "new" / "bench"
    new.write_text(pathlib.Path(stubs["bench"]).read_text())
    new.chmod(new.stat().st_mode | stat.S_IXUSR)
    script = ROOT / "benchmarks" / "compare_builds.py"
    common = [sys.executable, str(script), "--old", stubs["bench"], "--new", str(new),
              "--rows", "train/lenet5/quant/64", "--rounds", "3", "--min-time", "0.25"]
    env = dict(os.environ, STUB_LOG=str(log))

    def compare(extra):
        log.write_text("")
        p = subprocess.run(common + extra, capture_output=True, text=True, env=env)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return p, calls

    p, calls = compare(["--threads", "1,2"])
    assert p.returncode == 0, p.stderr
    assert len(calls) == 2 * 2 * 3, calls  # old and new x 2 thread counts x 3 rounds
    assert all("--benchmark_min_time=0.25" in c["args"] for c in calls), calls
    assert "| train/lenet5/quant/64 | 2 | 2000 | 4000 | 2.00 |" in p.stdout, p.stdout
    # --cpu: images per CPU second (wall rate x real_time / cpu_time = x 1.25), 1 thread only.
    p, calls = compare(["--threads", "1", "--cpu"])
    assert p.returncode == 0, p.stderr
    assert "old img/CPU s" in p.stdout, p.stdout
    assert "| train/lenet5/quant/64 | 1 | 1250 | 2500 | 2.00 |" in p.stdout, p.stdout
    # --show-rounds: each round's ratio in a last column, in the order run.
    p, calls = compare(["--threads", "1", "--show-rounds"])
    assert p.returncode == 0, p.stderr
    assert "| per round |" in p.stdout, p.stdout
    row = "| train/lenet5/quant/64 | 1 | 1000 | 2000 | 2.00 | 2.00 2.00 2.00 |"
    assert row in p.stdout, p.stdout
    p, calls = compare(["--threads", "1,2", "--cpu"])
    assert p.returncode != 0 and "--cpu needs --threads 1" in p.stderr, p.stderr
    assert calls == [], "nothing may run after a refused --cpu"


def main():
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        stubs = make_stubs(tmp)
        log = tmp / "calls.log"
        check_peers(tmp, stubs, log)
        check_deploy(tmp, stubs, log)
        check_compare_builds(tmp, stubs, log)
    print("peer driver options: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
