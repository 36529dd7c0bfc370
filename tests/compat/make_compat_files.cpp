// Writes the compatibility files of tests/data/compat/ with the code of the commit it is built
// against (make_compat_files.sh builds it against a given commit's headers):
//
//   v1-model.bgm         model file version 1: compat_values.hpp's network exported
//                        (conv 3/6 bits, fc1 4 bits, fc2 float32), normalised with mean 0.125,
//                        stddev 0.25, calibrated on the five images of checkpoint_data_set
//   v1-checkpoint.bin    checkpoint version 1, as the trainer writes it mid-epoch in the search
//                        phase: metadata (phase, epoch, fp32_accuracy, seconds, history and the
//                        partial-epoch fields), the parameters, the frozen bitwidths, an Adam
//                        state after one step and a loader state one batch into its epoch
//   v1-expected.txt      what the old code computed from them: the runtime's float32 and int8
//                        logits of the five images
//
// tests/unit/test_compat.cpp reads them with today's code and checks the values. The files
// were written at commit fdc34a8 (checkpoint version 1, model file version 1):
//   tests/compat/make_compat_files.sh fdc34a8 tests/data/compat
#include "compat_values.hpp"

#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/trainer.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace bitgrad;

namespace {

/// The trainer's spelling of a real in the metadata (17 significant digits).
std::string exact(double v) {
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}

/// The two history records of the checkpoint (test_compat.cpp expects the same).
std::vector<epoch_record> history() {
  return {{.phase = "pretrain",
           .epoch = 1,
           .loss = 0.6931471805599453,
           .train_accuracy = 0.5,
           .test_accuracy = 0.6,
           .average_bits = 32,
           .size_bytes = 1234,
           .compression = 1,
           .seconds = 0.25},
          {.phase = "search",
           .epoch = 1,
           .loss = std::nan(""),
           .train_accuracy = 0.1,
           .test_accuracy = 0.6,
           .average_bits = 4.375,
           .size_bytes = 98.5,
           .compression = 1234.0 / 98.5,
           .seconds = 1e-3}};
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_compat_files OUT_DIR\n";
    return 2;
  }
  try {
    const fs::path out = argv[1];
    fs::create_directories(out);
    auto net = bitgrad_compat::make_network();
    const dataset& images = bitgrad_fuzz::checkpoint_data_set();

    // Model file.
    loader_options norm;
    norm.mean = {0.125};
    norm.stddev = {0.25};
    train::export_model(net, out / "v1-model.bgm", images, norm);
    const auto rt = deploy::runtime::load(out / "v1-model.bgm");
    const std::vector<float> x = rt.normalise(images.pixels.data(), images.size());
    std::ofstream expected(out / "v1-expected.txt");
    expected << "# written by tests/compat/make_compat_files.cpp: the runtime's logits of the "
                "five images of checkpoint_data_set\n";
    for (const auto p : {deploy::precision::float32, deploy::precision::int8}) {
      const auto logits = rt.run(x.data(), images.size(), p);
      expected << (p == deploy::precision::float32 ? "float32" : "int8");
      char b[32];
      for (float v : logits) {
        std::snprintf(b, sizeof b, " %.9g", static_cast<double>(v));
        expected << b;
      }
      expected << '\n';
    }

    // Checkpoint.
    loader<float> batches(images, bitgrad_compat::loader_settings());
    tensor4<float> xb;
    std::vector<std::int32_t> yb;
    batches.next(xb, yb);
    bitgrad_compat::set_gradients(net);
    optim::adam<float> adam({.lr = 1e-3});
    auto params = [&](auto&& f) { net.visit_parameters(f); };
    adam.step(params);
    // The step moved the parameters: put the formula values back.
    auto fresh = bitgrad_compat::make_network();
    std::vector<float*> to;
    net.visit_parameters([&](param_ref<float>& p) { to.push_back(p.value); });
    std::size_t k = 0;
    fresh.visit_parameters(
        [&](param_ref<float>& p) { std::copy(p.value, p.value + p.size, to[k++]); });

    train::checkpoint_data data;
    data.meta["phase"] = "search";
    data.meta["epoch"] = "1";
    data.meta["fp32_accuracy"] = exact(0.8125);
    data.meta["seconds"] = exact(12.5);
    data.meta["history"] = train::detail::encode_history(history());
    data.meta["step"] = "1";
    data.meta["images"] = "2";
    data.meta["correct"] = "1";
    data.meta["skipped"] = "0";
    data.meta["loss_sum"] = exact(1.25);
    data.meta["epoch_seconds"] = exact(0.1);
    std::ostringstream state;
    adam.save(state);
    data.optimizer_state = state.str();
    data.loader_state = to_string(batches.state());
    train::save_checkpoint(out / "v1-checkpoint.bin", net, data);
    std::cout << "wrote " << (out / "v1-model.bgm").string() << ", "
              << (out / "v1-checkpoint.bin").string() << ", " << (out / "v1-expected.txt").string()
              << '\n';
  } catch (const std::exception& e) {
    std::cerr << "make_compat_files: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
