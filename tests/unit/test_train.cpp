// The trainer end to end on the committed Fashion-MNIST sample, checkpoints and resuming.
#include <bitgrad/bitgrad.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace bitgrad;

namespace {

const fs::path sample = fs::path(BITGRAD_TEST_DATA_DIR) / "fashion-sample";

const dataset& sample_train() {
  static const dataset d = load_mnist_format(sample / "train-images-idx3-ubyte.gz",
                                             sample / "train-labels-idx1-ubyte.gz");
  return d;
}
const dataset& sample_test() {
  static const dataset d =
      load_mnist_format(sample / "t10k-images-idx3-ubyte.gz", sample / "t10k-labels-idx1-ubyte.gz");
  return d;
}

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
};

template <class Net>
std::vector<float> all_parameters(Net& net) {
  std::vector<float> v;
  net.visit_parameters([&](param_ref<float>& p) { v.insert(v.end(), p.value, p.value + p.size); });
  return v;
}

train::trainer_options quick_options(const fs::path& out) {
  train::trainer_options o;
  o.batch_size = 32;
  o.pretrain = {.epochs = 2, .lr = 2e-3};
  o.search = {.epochs = 2, .lr = 5e-4, .bits_lr = 0.1};
  o.finetune = {.epochs = 1, .lr = 2e-4};
  o.target_average_bits = 3.0;
  o.seed = 7;
  o.out_dir = out;
  o.log = nullptr;
  return o;
}

auto make_fp32() {
  return nn::lenet5<float>({.seed = 3});
}
auto make_quant() {
  return nn::lenet5<float, quant::frac_bits>({.seed = 3});
}

} // namespace

TEST_CASE("training on the Fashion-MNIST sample learns and moves bitwidths to the target") {
  temp_dir dir("bitgrad-train-e2e");
  auto fp32 = make_fp32();
  auto q = make_quant();
  train::trainer t(fp32, q, sample_train(), sample_test(), quick_options(dir.path));
  const double target = t.target_bits();
  const auto result = t.run();
  REQUIRE(result.finished);
  const auto& s = result.summary;
  // 10 classes: chance is 10%. A few hundred steps on 1200 images reach far more.
  CHECK(s.fp32_accuracy > 0.55);
  CHECK(s.quant_accuracy > 0.55);
  // Bitwidths start at b_max - 0.5 = 7.5 and are pushed under the 3-bit target.
  const auto model = train::measure_size(q);
  double weight_bits = 0;
  q.visit_quantizers([&](std::string_view, const auto& qz) { weight_bits += qz.size_bits(); });
  CHECK(weight_bits <= target);
  CHECK(s.average_bits < 3.0);
  CHECK(s.average_bits == doctest::Approx(model.average_bits()));
  CHECK(s.compression > 9.0);
  for (const auto& layer : s.layers) {
    CHECK(layer.bits_min >= 2.0);
    CHECK(layer.bits_max <= 8.0);
  }
  // History: 2 + 2 + 1 epochs, in phase order.
  REQUIRE(result.history.size() == 5);
  for (const auto& e : result.history) { // every epoch trained on the whole sample
    CHECK(std::isfinite(e.loss));
    CHECK(e.train_accuracy > 0.1);
  }
  CHECK(result.history[0].phase == "pretrain");
  CHECK(result.history[2].phase == "search");
  CHECK(result.history[4].phase == "finetune");
  CHECK(result.history[0].average_bits == 32.0);
  // The files the run promises.
  for (const char* f : {"log.csv", "summary.json", "report.html", "checkpoint.bin"})
    CHECK(fs::exists(dir.path / f));
  std::ifstream json(dir.path / "summary.json");
  std::stringstream text;
  text << json.rdbuf();
  for (const char* key : {"\"fp32_accuracy\"", "\"quant_accuracy\"", "\"average_bits\"",
                          "\"size_bytes\"", "\"compression\"", "\"seconds\"", "\"bits_mean\""})
    CHECK(text.str().find(key) != std::string::npos);
}

TEST_CASE("a run interrupted at epoch boundaries and resumed ends bit-identical") {
  auto options = [](const fs::path& out) {
    auto o = quick_options(out);
    o.pretrain.epochs = 2;
    o.search.epochs = 2;
    o.finetune.epochs = 2;
    o.max_steps_per_epoch = 6;
    return o;
  };
  temp_dir straight("bitgrad-train-straight");
  auto fp32_a = make_fp32();
  auto q_a = make_quant();
  train::trainer a(fp32_a, q_a, sample_train(), sample_test(), options(straight.path));
  REQUIRE(a.run().finished);

  struct stop_rule {
    std::size_t epochs, steps;
  };
  for (const stop_rule rule :
       {stop_rule{1, 0}, stop_rule{3, 0}, stop_rule{0, 4}, stop_rule{0, 7}}) {
    CAPTURE(rule.epochs);
    CAPTURE(rule.steps);
    temp_dir resumed("bitgrad-train-resumed");
    bool finished = false;
    int runs = 0;
    while (!finished) {
      // A fresh process each time: new networks, state only from the checkpoint.
      auto fp32_b = make_fp32();
      auto q_b = make_quant();
      auto o = options(resumed.path);
      o.stop_after_epochs = rule.epochs;
      o.stop_after_steps = rule.steps;
      o.resume = true;
      train::trainer b(fp32_b, q_b, sample_train(), sample_test(), o);
      const auto r = b.run();
      finished = r.finished;
      ++runs;
      REQUIRE(runs < 20);
      if (finished) {
        CHECK(all_parameters(q_b) == all_parameters(q_a));
        CHECK(r.history.size() == 6);
      }
    }
    CHECK(runs > 1);
  }
}

TEST_CASE("checkpoints round-trip and reject corruption and other architectures") {
  temp_dir dir("bitgrad-train-ckpt");
  auto q = make_quant();
  q.visit_quantizers([](std::string_view, auto& qz) { qz.freeze(quant::rounding::nearest); });
  train::checkpoint_data data;
  data.meta["phase"] = "finetune";
  data.optimizer_state = std::string("opt\0state", 9);
  data.loader_state = "loader";
  const fs::path file = dir.path / "c.bin";
  train::save_checkpoint(file, q, data);

  auto fresh = nn::lenet5<float, quant::frac_bits>({.seed = 99});
  REQUIRE(all_parameters(fresh) != all_parameters(q));
  const auto back = train::load_checkpoint(file, fresh);
  CHECK(all_parameters(fresh) == all_parameters(q));
  CHECK(back.meta.at("phase") == "finetune");
  CHECK(back.optimizer_state == data.optimizer_state);
  CHECK(back.loader_state == "loader");
  bool all_frozen = true;
  fresh.visit_quantizers([&](std::string_view, const auto& qz) { all_frozen &= qz.frozen(); });
  CHECK(all_frozen);

  SUBCASE("a flipped byte fails the checksum") {
    std::string bytes;
    {
      std::ifstream in(file, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    bytes[bytes.size() / 2] ^= 0x40;
    std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
    auto other = make_quant();
    const auto before = all_parameters(other);
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file, other), doctest::Contains("checksum"),
                         format_error);
    CHECK(all_parameters(other) == before); // nothing half-loaded
  }
  SUBCASE("a truncated file is rejected") {
    fs::resize_file(file, fs::file_size(file) / 3);
    auto other = make_quant();
    CHECK_THROWS_AS(train::load_checkpoint(file, other), format_error);
  }
  SUBCASE("another architecture is named") {
    auto vgg = nn::vgg_small<float, quant::frac_bits>({.seed = 1});
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file, vgg),
                         doctest::Contains("another architecture"), format_error);
  }
}

TEST_CASE("the trainer rejects bad options") {
  auto fp32 = make_fp32();
  auto q = make_quant();
  auto o = quick_options({});
  o.batch_size = 0;
  CHECK_THROWS_AS(train::trainer(fp32, q, sample_train(), sample_test(), o), config_error);
  dataset empty = sample_train();
  empty.labels.clear();
  empty.pixels.clear();
  CHECK_THROWS_AS(train::trainer(fp32, q, empty, sample_test(), quick_options({})), config_error);
}

TEST_CASE("a non-finite gradient stops training naming the step, or is skipped and counted") {
  temp_dir dir("bitgrad-train-nonfinite");
  auto options = [&](bool skip) {
    auto o = quick_options(dir.path);
    o.pretrain = {.epochs = 1, .lr = 2e-3};
    o.search = {.epochs = 0};
    o.finetune = {.epochs = 0};
    o.max_steps_per_epoch = 4;
    o.skip_nonfinite = skip;
    return o;
  };
  // One weight of fc2 is infinite: every forward produces non-finite logits.
  auto poison = [](auto& net) {
    net.visit_parameters([](param_ref<float>& p) {
      if (p.name == "fc2.weight") p.value[5] = std::numeric_limits<float>::infinity();
    });
  };
  SUBCASE("stop") {
    auto fp32 = make_fp32();
    auto q = make_quant();
    poison(fp32);
    train::trainer t(fp32, q, sample_train(), sample_test(), options(false));
    CHECK_THROWS_WITH(t.run(),
                      doctest::Contains("pretrain epoch 1 step 1: the loss is not finite"));
    CHECK_FALSE(fs::exists(dir.path / "checkpoint.bin")); // nothing good to keep yet
  }
  SUBCASE("skip and count") {
    auto fp32 = make_fp32();
    auto q = make_quant();
    poison(fp32);
    train::trainer t(fp32, q, sample_train(), sample_test(), options(true));
    const auto before = all_parameters(fp32);
    const auto r = t.run();
    CHECK(r.finished);
    CHECK(r.skipped_steps == 4);
    // Skipped steps change nothing.
    const auto after = all_parameters(fp32);
    REQUIRE(after.size() == before.size());
    bool same = true;
    for (std::size_t i = 0; i < after.size(); ++i)
      same &= (after[i] == before[i]) || (std::isinf(after[i]) && std::isinf(before[i]));
    CHECK(same);
  }
}

TEST_CASE("bitwidths and scales stay finite and in range under absurd settings") {
  for (const auto policy : {0, 1}) {
    CAPTURE(policy);
    auto o = quick_options({});
    o.pretrain = {.epochs = 0};
    o.search = {.epochs = 1, .lr = 10.0, .bits_lr = 1e6, .scale_lr = 1e6};
    o.finetune = {.epochs = 0};
    o.max_steps_per_epoch = 5;
    o.penalty_lambda = 1e9;
    o.skip_nonfinite = true;
    auto check = [](auto& net) {
      net.visit_quantizers([](std::string_view name, const auto& q) {
        for (double b : q.group_bits()) {
          CAPTURE(name);
          CHECK(std::isfinite(b));
          CHECK(b >= 2.0);
          CHECK(b <= 8.0);
        }
      });
      net.visit_parameters([](param_ref<float>& p) {
        if (p.kind != param_kind::scale) return;
        for (std::size_t i = 0; i < p.size; ++i) {
          CHECK(std::isfinite(p.value[i]));
          CHECK(p.value[i] > 0);
        }
      });
    };
    auto fp32 = make_fp32();
    if (policy == 0) {
      auto q = make_quant();
      train::trainer t(fp32, q, sample_train(), sample_test(), o);
      CHECK(t.run().finished);
      check(q);
    } else {
      auto q = nn::lenet5<float, quant::step_bits>({.seed = 3});
      train::trainer t(fp32, q, sample_train(), sample_test(), o);
      CHECK(t.run().finished);
      check(q);
    }
  }
}

TEST_CASE("bits_moment: one Adam step moves a layer's bitwidths by lr each, or in proportion") {
  // The first Adam step after bias correction moves element i by lr * g_i / sqrt(v_i):
  //   per_group  v_i = g_i^2          -> |step_i| = lr for every group (sign of the gradient)
  //   per_layer  v_i = mean_j g_j^2   -> step_i = lr * g_i / rms(g): the steps of a layer keep
  //              the ratios of its gradients, and their root mean square is lr.
  const double lr = 0.1;
  auto bit_params = [](auto& net) {
    std::vector<std::vector<double>> v;
    net.visit_parameters([&](param_ref<float>& p) {
      if (p.kind == param_kind::bitwidth) v.emplace_back(p.value, p.value + p.size);
    });
    return v;
  };
  auto one_step = [&](train::bits_normalisation moment) {
    temp_dir dir("bitgrad-train-moment");
    auto o = quick_options(dir.path);
    o.pretrain = {.epochs = 0};
    o.search = {.epochs = 1, .lr = 5e-4, .bits_lr = lr};
    o.finetune = {.epochs = 0};
    o.stop_after_steps = 1; // stop after the first search step, before freezing
    // No size penalty: at 7.5 bits its gradient, the same for every group of a layer, would
    // swamp the task gradient and hide the difference.
    o.penalty_lambda = 0;
    o.bits_moment = moment;
    auto fp32 = make_fp32();
    auto q = make_quant();
    const auto before = bit_params(q);
    train::trainer t(fp32, q, sample_train(), sample_test(), o);
    CHECK_FALSE(t.run().finished);
    auto after = bit_params(q);
    for (std::size_t l = 0; l < after.size(); ++l)
      for (std::size_t i = 0; i < after[l].size(); ++i) after[l][i] -= before[l][i];
    return after; // the steps
  };
  const auto group = one_step(train::bits_normalisation::per_group);
  const auto layer = one_step(train::bits_normalisation::per_layer);
  REQUIRE(group.size() == 5); // LeNet-5: conv1, conv2, fc1, fc2, fc3
  REQUIRE(layer.size() == group.size());
  // Adam's eps (1e-8) shortens the steps of groups whose gradient is not far above it (a few
  // fc1 channels feed dead units and get none at all), so per_group steps are at most lr and
  // most of them lr.
  const double eps_room = 0.03;
  std::size_t full_steps = 0, groups = 0;
  double widest_ratio = 1; // largest |step| / smallest |step| inside one layer, per_layer
  for (std::size_t l = 0; l < group.size(); ++l) {
    CAPTURE(l);
    REQUIRE(layer[l].size() == group[l].size());
    double square_sum = 0, smallest = 1e9, largest = 0;
    for (std::size_t i = 0; i < group[l].size(); ++i) {
      CHECK(std::abs(group[l][i]) <= lr * (1 + 1e-4));
      const bool full = std::abs(group[l][i]) >= lr * (1 - eps_room);
      full_steps += full;
      ++groups;
      // Same gradient, so the same direction under both normalisations.
      CHECK((group[l][i] > 0) == (layer[l][i] > 0));
      CHECK((group[l][i] < 0) == (layer[l][i] < 0));
      square_sum += layer[l][i] * layer[l][i];
      if (full) { // compare groups whose gradient is well above eps only
        smallest = std::min(smallest, std::abs(layer[l][i]));
        largest = std::max(largest, std::abs(layer[l][i]));
      }
    }
    const double rms = std::sqrt(square_sum / static_cast<double>(layer[l].size()));
    CHECK(rms <= lr * (1 + 1e-4));
    CHECK(rms >= lr * (1 - eps_room));
    if (largest > 0 && smallest < 1e9) widest_ratio = std::max(widest_ratio, largest / smallest);
  }
  CHECK(full_steps >= groups * 8 / 10);
  CHECK(widest_ratio > 3); // per_layer is not per_group in disguise
}
