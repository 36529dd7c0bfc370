// The trainer under mpirun for dist_trainer_kill.sh: LeNet-5 (frac_bits) on the committed
// sample, 5 epochs of whole-sample batches of 32, each step slowed down by `slow_ms` (so that
// a rank can be killed mid-epoch), data-parallel when started with more than one rank.
//   dist_trainer_probe <out_dir> new|resume [slow_ms]
// Every rank writes its process id into <out_dir>.rank<R>.pid first; rank 0 writes the run's
// files into out_dir and prints "finished" at the end.
#include <bitgrad/bitgrad.hpp>
#include <bitgrad/dist/dist.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using namespace bitgrad;

namespace {

/// Softmax cross-entropy that takes at least `ms` milliseconds per forward.
struct slow_loss {
  nn::softmax_cross_entropy<float> inner;
  int ms = 0;
  float forward(const tensor2<float>& logits, const std::vector<std::int32_t>& labels) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return inner.forward(logits, labels);
  }
  const tensor2<float>& backward() { return inner.backward(); }
};

struct slow_parts : train::default_parts<float> {
  int ms = 0;
  slow_loss loss() const {
    slow_loss l;
    l.ms = ms;
    return l;
  }
};

} // namespace

int main(int argc, char** argv) {
  dist::session mpi(argc, argv);
  return dist::run_or_abort([&] {
    if (argc < 3) throw config_error("usage: dist_trainer_probe <out_dir> new|resume [slow_ms]");
    const fs::path out = argv[1];
    const std::string mode = argv[2];
    dist::data_parallel<float> dp;
    {
      std::ofstream pid(out.string() + ".rank" + std::to_string(dp.rank()) + ".pid");
      pid << ::getpid() << "\n";
    }
    const fs::path sample = fs::path(BITGRAD_TEST_DATA_DIR) / "fashion-sample";
    const dataset train_set = load_mnist_format(sample / "train-images-idx3-ubyte.gz",
                                                sample / "train-labels-idx1-ubyte.gz");
    const dataset test_set = load_mnist_format(sample / "t10k-images-idx3-ubyte.gz",
                                               sample / "t10k-labels-idx1-ubyte.gz");
    train::trainer_options o;
    o.batch_size = 32;
    o.pretrain = {.epochs = 2, .lr = 2e-3};
    o.search = {.epochs = 2, .lr = 5e-4, .bits_lr = 0.1};
    o.finetune = {.epochs = 1, .lr = 2e-4};
    o.seed = 7;
    o.out_dir = out;
    o.resume = mode == "resume";
    o.terminal = false;
    auto fp32 = nn::lenet5<float>({.seed = 3});
    auto q = nn::lenet5<float, quant::frac_bits>({.seed = 3});
    slow_parts parts;
    parts.ms = argc > 3 ? std::atoi(argv[3]) : 0;
    train::trainer t(fp32, q, train_set, test_set, o, parts);
    if (dp.ranks() > 1) t.set_gradient_sync(dp);
    const train::run_result r = t.run();
    if (dp.rank() == 0 && r.finished) std::printf("finished\n");
    return r.finished ? 0 : 3;
  });
}
