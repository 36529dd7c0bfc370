// Compiled (not run) by g++ at -O3 -march=x86-64-v4 with -Wall -Wextra -Werror: the model file
// and the runtime, the headers a deployed program includes, must not trip GCC's optimiser
// warnings. GCC 12 reported a false -Wrestrict inside char_traits for shape::str() at -O3
// (issue #17: `make bench` failed on Intel AVX-512 machines), and the same false -Wrestrict for
// `(i ? " " : "") + std::string(...)` in the training report's lists and charts, which a
// `-O3 -Werror` build of examples/fashion_mnist stopped on. The text helpers below are called so
// that GCC compiles (and warns about) them.
#include <bitgrad/data/idx.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/npz.hpp>
#include <bitgrad/onnx/graph_builder.hpp>
#include <bitgrad/report/report.hpp>
#include <bitgrad/report/svg.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  using namespace bitgrad;
  const auto n = static_cast<std::uint32_t>(argc);
  std::puts(format::shape::image(n, 28, 28).str().c_str());
  std::puts(format::shape::features(n * 10).str().c_str());
  const std::vector<std::size_t> dims(n, 3);
  const std::vector<double> values(n, 0.5);
  std::puts(detail::idx_header_text(dims).c_str());
  std::puts(train::detail::shape_text(dims).c_str());
  npy_array array;
  array.shape = dims;
  std::puts(array.shape_string().c_str());
  std::puts(onnx::detail::number_list(values).c_str());
  if (argc > 2) {
    run_summary run;
    run.activations.push_back(
        {.name = "relu1", .channels = n, .group_bits = values, .group_ranges = values});
    std::puts(render_report({}, run).c_str());
    std::puts(svg_scatter_chart("a", "x", "y", {}, {}).c_str());
  }
  if (argc > 1) {
    try {
      const deploy::runtime rt = deploy::runtime::load(argv[1]);
      std::printf("%s -> %s\n", rt.model().input.str().c_str(), rt.model().output().str().c_str());
    } catch (const std::exception& e) {
      std::puts(e.what());
      return 1;
    }
  }
  return 0;
}
