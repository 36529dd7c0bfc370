// Runs a bitgrad model file over the Fashion-MNIST test set with the deploy runtime (no
// training code) and prints accuracy and images/s for the float and the int8 paths.
//
//   deploy runs/fashion_mnist/model.bgm [--data /usr/share/datasets/fashion-mnist] [--batch 256]
#include "cli_checks.hpp"

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/deploy/runtime.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"Run a bitgrad model file on the Fashion-MNIST test set"};
  std::string path, data = "/usr/share/datasets/fashion-mnist";
  std::size_t batch = 256;
  app.add_option("model", path, "model file (.bgm)")->required();
  app.add_option("--data", data, "directory with t10k-{images-idx3,labels-idx1}-ubyte.gz")
      ->capture_default_str();
  app.add_option("--batch", batch, "images per run")
      ->check(bitgrad::cli::whole_number(1))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
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
    std::vector<std::size_t> float_pred;
    for (auto p : {bitgrad::deploy::precision::float32, bitgrad::deploy::precision::int8}) {
      if (p == bitgrad::deploy::precision::int8 && !rt.int8_ready()) {
        std::printf("int8     : the model has no calibration, skipped\n");
        continue;
      }
      std::vector<std::size_t> pred;
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t at = 0; at < test.size(); at += batch) {
        const std::size_t n = std::min(batch, test.size() - at);
        const auto y = rt.run(x.data() + at * rt.input_size(), n, p);
        const auto top = bitgrad::deploy::runtime::top1(y);
        pred.insert(pred.end(), top.begin(), top.end());
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::size_t correct = 0, same = 0;
      for (std::size_t i = 0; i < pred.size(); ++i) {
        correct += pred[i] == static_cast<std::size_t>(test.labels[i]);
        if (!float_pred.empty()) same += pred[i] == float_pred[i];
      }
      std::printf("%-9s: accuracy %.2f%%, %.0f images/s (batch %zu, %s)",
                  bitgrad::deploy::to_string(p),
                  100.0 * static_cast<double>(correct) / static_cast<double>(pred.size()),
                  static_cast<double>(pred.size()) / s, batch, bitgrad::simd_arch_name());
      if (!float_pred.empty())
        std::printf(", top-1 agreement with float %.2f%%",
                    100.0 * static_cast<double>(same) / static_cast<double>(pred.size()));
      std::printf("\n");
      if (float_pred.empty()) float_pred = pred;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deploy: %s\n", e.what());
    return 1;
  }
  return 0;
}
