// Runs a bitgrad model file over the Fashion-MNIST test set with the deploy runtime (no
// training code) and prints accuracy and images/s for each engine it runs:
//
//   float      the float path (weights decoded to float32 on first use)
//   int        the packed integer engine (low-bit weights kept packed, u8 activations), on the
//              fastest instruction set of this CPU or the one --isa names
//   reference  the plain reference twin of the int engine's integer arithmetic (slow loops;
//              its predictions equal the int engine's exactly)
//   int8       the older int8 path (int8 x int8 GEMMs, float between layers)
//   all        float, int, int8 (the default)
//
//   deploy runs/fashion_mnist/model.bgm [--data /usr/share/datasets/fashion-mnist] [--batch 256]
//          [--engine int|float|reference|int8|all] [--isa sse2|avx2|avx_vnni|avx512_vnni|...]
#include "cli_checks.hpp"

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"Run a bitgrad model file on the Fashion-MNIST test set"};
  std::string path, data = "/usr/share/datasets/fashion-mnist";
  std::size_t batch = 256;
  std::string engine = "all", isa_name;
  app.add_option("model", path, "model file (.bgm)")->required();
  app.add_option("--data", data, "directory with t10k-{images-idx3,labels-idx1}-ubyte.gz")
      ->capture_default_str();
  app.add_option("--batch", batch, "images per run")
      ->check(bitgrad::cli::whole_number(1))
      ->capture_default_str();
  app.add_option("--engine", engine, "int, float, reference, int8 or all")
      ->check(CLI::IsMember({"int", "float", "reference", "int8", "all"}))
      ->capture_default_str();
  std::vector<std::string> isa_names;
  for (bitgrad::int_isa p : bitgrad::all_int_isas)
    if (bitgrad::int_isa_supported(p)) isa_names.push_back(bitgrad::int_isa_name(p));
  app.add_option("--isa", isa_name, "instruction set of the int engine (default: the fastest)")
      ->check(CLI::IsMember(isa_names));
  CLI11_PARSE(app, argc, argv);
  bitgrad::int_isa isa = bitgrad::best_int_isa();
  for (bitgrad::int_isa p : bitgrad::all_int_isas)
    if (isa_name == bitgrad::int_isa_name(p)) isa = p;
  try {
    const std::filesystem::path dir = data;
    const bitgrad::dataset test = bitgrad::load_mnist_format(dir / "t10k-images-idx3-ubyte.gz",
                                                             dir / "t10k-labels-idx1-ubyte.gz");
    const auto rt = bitgrad::deploy::runtime::load(path);
    if (test.image_size() != rt.input_size()) {
      std::fprintf(stderr, "deploy: images of %zu values, model input %s\n", test.image_size(),
                   rt.model().input.str().c_str());
      return 1;
    }
    const std::vector<float> x = rt.normalise(test.pixels.data(), test.size());
    std::vector<std::string> engines = {engine};
    if (engine == "all") engines = {"int", "float", "int8"};
    std::vector<std::size_t> float_pred;
    std::vector<std::pair<std::string, std::vector<std::size_t>>> others;
    for (const std::string& name : engines) {
      using bitgrad::deploy::precision;
      if (name == "int8" && !rt.int8_ready()) {
        std::printf("int8     : the model has no calibration, skipped\n");
        continue;
      }
      if (name == "int" && !rt.packed_ready()) {
        if (engine != "all")
          throw std::runtime_error(
              "the int engine cannot run this model: " +
              (rt.engine().supported() ? std::string("no calibration") : rt.engine().why()));
        std::printf("int      : %s, skipped\n", rt.engine().supported()
                                                    ? "the model has no calibration"
                                                    : rt.engine().why().c_str());
        continue;
      }
      bitgrad::format::model_file file; // the reference twin reads the file's codes
      if (name == "reference") file = bitgrad::format::read_model_file(path);
      std::vector<std::size_t> pred;
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t at = 0; at < test.size(); at += batch) {
        const std::size_t n = std::min(batch, test.size() - at);
        const float* xb = x.data() + at * rt.input_size();
        const auto y = name == "reference" ? bitgrad::deploy::ref::run_integer(file, xb, n)
                       : name == "int"     ? rt.run(xb, n, precision::packed, isa)
                       : name == "int8"    ? rt.run(xb, n, precision::int8)
                                           : rt.run(xb, n, precision::float32);
        const auto top = bitgrad::deploy::runtime::top1(y);
        pred.insert(pred.end(), top.begin(), top.end());
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::size_t correct = 0;
      for (std::size_t i = 0; i < pred.size(); ++i)
        correct += pred[i] == static_cast<std::size_t>(test.labels[i]);
      const char* label = name == "float" ? "float32" : name.c_str();
      const std::string how = name == "int" ? std::string("packed ") + bitgrad::int_isa_name(isa)
                              : name == "reference" ? std::string("plain loops")
                                                    : std::string(bitgrad::simd_arch_name());
      std::printf("%-9s: accuracy %.2f%%, %.0f images/s (batch %zu, %s)", label,
                  100.0 * static_cast<double>(correct) / static_cast<double>(pred.size()),
                  static_cast<double>(pred.size()) / s, batch, how.c_str());
      std::printf("\n");
      if (name == "int") { // before a float run adds its float copy of the weights
        std::printf("weights  : %zu bytes resident, file payload %zu bytes\n",
                    rt.resident_weight_bytes(), rt.weight_payload_bytes());
        // Each layer's u8 input: a learned act_quant grid, or 8 bits from calibration.
        std::printf("activations:");
        for (const auto& st : rt.engine().plan().steps) {
          if (!st.gemm()) continue; // a global pool reads the grid a layer wrote
          const auto& op = rt.model().ops[st.op];
          const bool grid = st.in_act != bitgrad::format::no_index;
          std::printf(" %s %d bits (%s)%s", op.name.c_str(), st.in_bits,
                      grid ? rt.model().ops[st.in_act].name.c_str() : "calibrated",
                      &st == &rt.engine().plan().steps.back() ? "" : ",");
        }
        std::printf("\n");
      }
      if (name == "float")
        float_pred = pred;
      else
        others.emplace_back(label, pred);
    }
    for (const auto& [label, pred] : others) {
      if (float_pred.empty()) break;
      std::size_t same = 0;
      for (std::size_t i = 0; i < pred.size(); ++i) same += pred[i] == float_pred[i];
      std::printf("%-9s: top-1 agreement with float %.2f%%\n", label.c_str(),
                  100.0 * static_cast<double>(same) / static_cast<double>(pred.size()));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deploy: %s\n", e.what());
    return 1;
  }
  return 0;
}
