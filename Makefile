# bitgrad's two commands (a thin wrapper over CMake presets, like neovim's Makefile).
#   make demo   install what is missing, build, train LeNet-5 on Fashion-MNIST with learned bitwidths
#   make test   install what is missing, build, run every test (ctest)
# Also: make bench (benchmarks), make asan (tests under sanitizers), make format, make clean.

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE ?= cmake
CTEST ?= ctest

.PHONY: all deps test demo bench asan format clean

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

demo: deps
	$(CMAKE) --preset bench
	$(CMAKE) --build --preset bench -j $(JOBS) --target fashion_mnist
	./build/bench/examples/fashion_mnist --out runs/demo

bench: deps
	$(CMAKE) --preset bench
	$(CMAKE) --build --preset bench -j $(JOBS)
	bash scripts/run-benchmarks.sh build/bench

format:
	git ls-files '*.hpp' '*.cpp' | xargs clang-format -i

clean:
	rm -rf build
