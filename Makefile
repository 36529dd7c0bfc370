# bitgrad's two commands (a thin wrapper over CMake presets, like neovim's Makefile).
#   make demo   install what is missing, build, train LeNet-5 on Fashion-MNIST with learned bitwidths
#   make test   install what is missing, build, run every test (ctest)
# Also: make bench (benchmarks), make bench-build (build them only, as CI does), make asan (tests
# under sanitizers), make format, make clean, make install [PREFIX=/usr/local] (headers, CMake
# package and bitgrad.pc only), make test-arm (the packed integer runtime's tests for aarch64,
# under qemu), make test-native (the SIMD kernels' unit tests built -O3 -march=native and run).

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE ?= cmake
CTEST ?= ctest

.PHONY: all deps test demo bench asan tsan format clean

all: test

deps:
	@bash scripts/install-deps.sh

test: deps
	$(CMAKE) --preset release
	$(CMAKE) --build --preset release -j $(JOBS)
	$(CTEST) --preset release -j $(JOBS)

asan: deps
	$(CMAKE) --preset asan
	$(CMAKE) --build --preset asan -j $(JOBS)
	$(CTEST) --preset asan -j $(JOBS)

# Concurrent inference on one loaded model under ThreadSanitizer (clang-14).
tsan: deps
	$(CMAKE) --preset tsan
	$(CMAKE) --build --preset tsan -j $(JOBS) --target test_runtime
	TSAN_OPTIONS=halt_on_error=1 ./build/tsan/tests/test_runtime

demo: deps
	$(CMAKE) --preset bench
	$(CMAKE) --build --preset bench -j $(JOBS) --target fashion_mnist
	./build/bench/examples/fashion_mnist --out runs/demo --overwrite

bench: deps
	$(CMAKE) --preset bench
	$(CMAKE) --build --preset bench -j $(JOBS)
	bash scripts/run-benchmarks.sh build/bench

# Build the benchmarks without timing them, as the release preset builds (-O2, -Werror), so CI
# keeps them compiling: `make test` leaves them out (issue #18). Then the options of their own
# side-by-side modes (bench_conv2d and bench_optim --compare) run on tiny settings, checked end
# to end (tests/scripts/bench_options.py, ~2 s).
.PHONY: bench-build
bench-build: deps
	$(CMAKE) --preset bench-build
	$(CMAKE) --build --preset bench-build -j $(JOBS)
	/usr/bin/python3 tests/scripts/bench_options.py build/bench-build/benchmarks

# The `install` preset configures no tests, examples or benchmarks, so installing needs only
# CMake and the library's own dependencies (xtensor, xsimd, xtl, zlib; OpenMP if found), not
# doctest, Google Benchmark or CLI11; hence no `deps` here.
PREFIX ?= /usr/local
.PHONY: install
install:
	$(CMAKE) --preset install
	$(CMAKE) --install build/install --prefix $(PREFIX)

format:
	git ls-files '*.hpp' '*.cpp' | xargs clang-format -i

clean:
	rm -rf build

# make test-native: the unit tests of the SIMD kernels, layers and runtimes built as `make demo`
# and the benchmarks build bitgrad (preset bench: -O3 -march=native, this machine's widest SIMD
# paths, FMA contraction) and run; `make test` builds them for SSE2 only (issue #18).
.PHONY: test-native
test-native: deps
	$(CMAKE) --preset bench
	$(CMAKE) --build --preset bench -j $(JOBS) --target native_unit_tests
	bash scripts/run-native-tests.sh build/bench

# make fuzz [FUZZ_SECONDS=60]: build the libFuzzer targets (preset fuzz, clang++-14) and fuzz
# each one for FUZZ_SECONDS on a copy of its seed corpus, JOBS targets at a time (libFuzzer is
# single-threaded); fails on any crash.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: deps
	JOBS=$(JOBS) bash scripts/run-fuzzers.sh $(FUZZ_SECONDS)

# Training speed against PyTorch (issue 8): installs the optional python3-torch, builds
# bench_train and runs it and benchmarks/peers/train_pytorch.py alternately (Debian's python3,
# which has torch; a pyenv python3 earlier in PATH would not). Table on stdout, JSON in
# build/bench/results/peers.json. ROUNDS=n for more or fewer rounds.
.PHONY: bench-peers
bench-peers:
	bash scripts/install-bench-deps.sh
	cmake --preset bench
	cmake --build --preset bench -j2 --target bench_train
	/usr/bin/python3 benchmarks/peers/run_peers.py --bench build/bench/benchmarks/bench_train \
		--rounds $(or $(ROUNDS),5) --out build/bench/results/peers.json

# Inference speed against PyTorch (issue 19): bench_inference's packed integer engine and float
# path, PyTorch FP32 and PyTorch dynamic int8, ONNX Runtime on the float32 and QDQ exports (npm
# onnxruntime-node, installed by `deps`), each in its own process, alternately; LeNet-5 and
# VGG-style, batch 1 and 256, 1 and 2 threads. Medians, batch-1 p50/p99 latency and peak RSS per
# engine: table on stdout, JSON in build/bench/results/deploy.json. ROUNDS=n, MIN_TIME=seconds.
# The packed integer kernels and engine cross-built for aarch64 (g++-aarch64-linux-gnu) and run
# under qemu-aarch64 on two CPU models (NEON with and without the dot product): issue 19. Both
# tests build at once, and the qemu runs (single-threaded) go two at a time.
.PHONY: test-arm
test-arm:
	bash scripts/install-arm-deps.sh
	bash scripts/test-aarch64.sh

.PHONY: bench-deploy
bench-deploy: deps
	bash scripts/install-bench-deps.sh
	cmake --preset bench
	cmake --build --preset bench -j2 --target bench_inference bgm_to_onnx
	/usr/bin/python3 benchmarks/peers/run_deploy.py \
		--bench build/bench/benchmarks/bench_inference --rounds $(or $(ROUNDS),5) \
		--min-time $(or $(MIN_TIME),1) --out build/bench/results/deploy.json

# Data-parallel training under MPI (issue 21): 1 process x 2 threads vs 2 processes x 1 thread,
# all-reduce time per step and overlap with backward, for LeNet-5, VGG-style and ResNet-20.
# Table on stdout, JSON lines in build/bench/results/mpi.jsonl. ROUNDS=n for more or fewer.
.PHONY: bench-mpi
bench-mpi: deps
	cmake --preset bench
	cmake --build --preset bench -j2 --target bench_dist
	bash scripts/bench-mpi.sh build/bench
