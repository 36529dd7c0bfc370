// Learned activation bitwidths in the trainer (issue #22 phase 2): the penalty of the size,
// BOPs and peak activation memory budgets and its gradient in every weight and activation
// bitwidth (finite differences, double), budget freezing against every active budget at once
// (quant/multi_budget.hpp), and a LeNet-5 with activation quantizers through the trainer's
// three phases under a BOPs budget.
#include <bitgrad/bitgrad.hpp>
#include <bitgrad/nn/model_costs.hpp>
#include <bitgrad/quant/multi_budget.hpp>
#include <bitgrad/report/csv.hpp>
#include <bitgrad/report/json.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace test_act_trainer {

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

/// Every bitwidth parameter of net set to a random real value in [lo, hi].
template <class Net>
void randomise_bits(Net& net, double lo, double hi, std::uint64_t seed) {
  using T = typename Net::value_type;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  net.visit_parameters([&](param_ref<T>& p) {
    if (p.kind != param_kind::bitwidth) return;
    for (std::size_t i = 0; i < p.size; ++i) p.value[i] = static_cast<T>(u(rng));
  });
}

template <class Net>
std::vector<double> activation_bits(Net& net) {
  std::vector<double> b;
  nn::visit_activation_quantizers(net, [&](std::string_view, auto& q) {
    for (double v : q.group_bits()) b.push_back(v);
  });
  return b;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <class Net>
double weight_bits(Net& net) {
  return quant::total_size_bits([&](auto&& f) { net.visit_quantizers(f); });
}

} // namespace

TEST_CASE("the total penalty (size + BOPs + peak activation memory) has the gradient of finite "
          "differences in every weight and activation bitwidth") {
  nn::act_model_options<double, quant::frac_bits> o{.seed = 1};
  o.quant.group_size = 4; // several weight groups per layer
  o.act_quant.b_min = 1;
  auto net = nn::lenet5(o);
  randomise_bits(net, 3.1, 6.9, 11);
  auto weights = [&](auto&& f) { net.visit_quantizers(f); };
  auto costs = nn::model_costs_of(net, {});
  // Targets below the current costs, so every term is active; quadratic: smooth.
  const quant::size_penalty size{
      .form = quant::penalty_form::quadratic, .lambda = 0.7, .target_bits = 0.5 * weight_bits(net)};
  auto relative = [&](double target, double lambda) {
    return quant::size_penalty{.form = quant::penalty_form::quadratic,
                               .lambda = lambda,
                               .target_bits = target,
                               .unit_bits = target};
  };
  quant::cost_penalties cp;
  cp.add("bops", costs.bops, relative(0.5 * costs.bops.value(), 1.3));
  cp.add("activation_memory", costs.memory, relative(0.5 * costs.memory.value(), 0.9));
  auto total = [&] { return quant::evaluate_penalty(size, weight_bits(net)).value + cp.penalty(); };
  net.zero_grad();
  const double p0 = quant::apply_size_penalty(weights, size) + cp.apply();
  CHECK(p0 == doctest::Approx(total()).epsilon(1e-12));

  const double h = 1e-5;
  std::size_t checked = 0, act_checked = 0;
  net.visit_parameters([&](param_ref<double>& p) {
    if (p.kind != param_kind::bitwidth) return;
    const bool act = p.name.find("_quant.bits") != std::string::npos;
    for (std::size_t i = 0; i < p.size; ++i) {
      const double v = p.value[i];
      p.value[i] = v + h;
      const double up = total();
      p.value[i] = v - h;
      const double down = total();
      p.value[i] = v;
      const double fd = (up - down) / (2 * h);
      INFO(p.name << "[" << i << "]");
      CHECK(p.grad[i] == doctest::Approx(fd).epsilon(1e-6).scale(1e-9));
      CHECK(p.grad[i] != 0);
      ++checked;
      if (act) ++act_checked;
    }
  });
  CHECK(act_checked == 4); // one per activation quantizer (per tensor)
  CHECK(checked > 60);

  // BOPs reaches the weight bitwidths too: without it a weight's gradient is the size's alone.
  auto conv1_bits_grad = [&] {
    double g = 0;
    net.visit_parameters([&](param_ref<double>& p) {
      if (p.name == "conv1.bits") g = p.grad[0];
    });
    return g;
  };
  net.zero_grad();
  (void)quant::apply_size_penalty(weights, size);
  const double size_only = conv1_bits_grad();
  net.zero_grad();
  (void)quant::apply_size_penalty(weights, size);
  (void)cp.apply();
  CHECK(size_only > 0);
  CHECK(conv1_bits_grad() > size_only);
}

namespace {

struct budget_net {
  nn::act_model_options<float, quant::frac_bits> o = [] {
    nn::act_model_options<float, quant::frac_bits> o{.seed = 4};
    o.act_quant.b_min = 1;
    return o;
  }();
  decltype(nn::lenet5(o)) net = nn::lenet5(o);
  nn::model_costs costs = nn::model_costs_of(net, {});
  budget_net() { randomise_bits(net, 3.2, 7.8, 5); }
  auto weights() {
    return [this](auto&& f) { net.visit_quantizers(f); };
  }
  auto acts() {
    return [this](auto&& f) { nn::visit_activation_quantizers(net, f); };
  }
  /// The learned bits, rounded up, of every learnable group (weights, then activations).
  std::vector<double> learned() {
    std::vector<double> b;
    weights()([&](std::string_view, const auto& q) {
      for (double v : q.group_bits()) b.push_back(v);
    });
    for (double v : activation_bits(net)) b.push_back(v);
    return b;
  }
};

/// After freezing: every group that could take one more bit (below b_max when a budget counts
/// it, else below ceil(learned)) breaks at least one budget when it does (#24: the groups a
/// budget counts may go above ceil(learned)).
void check_maximal(budget_net& m, const std::vector<double>& learned, const quant::budgets& b) {
  std::size_t index = 0, raisable = 0, weight_groups = 0;
  m.weights()([&](std::string_view, const auto& q) { weight_groups += q.groups(); });
  const bool weights_limited = b.size_bits || b.bops, acts_limited = b.bops || b.memory;
  auto fits = [&] {
    if (b.size_bits && weight_bits(m.net) > *b.size_bits) return false;
    if (b.bops && m.costs.bops.value() > b.bops_target) return false;
    if (b.memory && m.costs.memory.value() > b.memory_target_bits) return false;
    return true;
  };
  auto each = [&](std::string_view name, auto& q) {
    std::vector<int> k = q.frozen_bits();
    for (std::size_t g = 0; g < k.size(); ++g, ++index) {
      const bool limited = index < weight_groups ? weights_limited : acts_limited;
      const int cap = limited ? static_cast<int>(std::floor(q.b_max()))
                              : std::min(static_cast<int>(std::floor(q.b_max())),
                                         static_cast<int>(std::ceil(learned[index])));
      if (k[g] >= cap) continue;
      ++raisable;
      ++k[g];
      q.freeze_to(k);
      INFO(name << " group " << g << " at " << k[g] - 1 << " (learned " << learned[index] << ")");
      CHECK_FALSE(fits());
      --k[g];
      q.freeze_to(k);
    }
  };
  m.weights()(each);
  m.acts()(each);
  MESSAGE(raisable << " groups could take one more bit");
}

} // namespace

TEST_CASE("freezing against size, BOPs and activation memory at once meets every budget and "
          "leaves no bit unspent") {
  budget_net m;
  const std::vector<double> learned = m.learned();
  const double size0 = weight_bits(m.net), bops0 = m.costs.bops.value(),
               mem0 = m.costs.memory.value();
  quant::budgets b{.size_bits = 0.7 * size0,
                   .bops = &m.costs.bops,
                   .bops_target = 0.4 * bops0,
                   .memory = &m.costs.memory,
                   .memory_target_bits = 0.6 * mem0};
  const auto r = quant::freeze_to_budgets(m.weights(), m.acts(), b);
  REQUIRE(r.checks.size() == 3);
  CHECK(r.all_met);
  CHECK(weight_bits(m.net) <= *b.size_bits);
  CHECK(m.costs.bops.value() <= b.bops_target);
  CHECK(m.costs.memory.value() <= b.memory_target_bits);
  CHECK(r.checks[0].value == doctest::Approx(weight_bits(m.net)));
  CHECK(r.checks[1].value == doctest::Approx(m.costs.bops.value()));
  CHECK(r.checks[2].value == doctest::Approx(m.costs.memory.value()));
  m.acts()([](std::string_view, const auto& q) { CHECK(q.frozen()); });
  m.weights()([](std::string_view, const auto& q) { CHECK(q.frozen()); });
  check_maximal(m, learned, b);
}

TEST_CASE("freezing against each budget alone meets it, within one step") {
  for (int which = 0; which < 3; ++which) {
    budget_net m;
    const std::vector<double> learned = m.learned();
    quant::budgets b;
    if (which == 0) b.size_bits = 0.6 * weight_bits(m.net);
    if (which == 1) {
      b.bops = &m.costs.bops;
      b.bops_target = 0.5 * m.costs.bops.value();
    }
    if (which == 2) {
      b.memory = &m.costs.memory;
      b.memory_target_bits = 0.5 * m.costs.memory.value();
    }
    CAPTURE(which);
    const auto r = quant::freeze_to_budgets(m.weights(), m.acts(), b);
    REQUIRE(r.checks.size() == 1);
    CHECK(r.checks[0].met);
    CHECK(r.checks[0].value <= r.checks[0].target);
    check_maximal(m, learned, b);
  }
}

TEST_CASE("freezing with every budget already met spends it (every group the budget counts at "
          "b_max, #24); an unreachable budget is reported unmet") {
  budget_net m;
  const std::vector<double> learned = m.learned();
  quant::budgets loose{.bops = &m.costs.bops, .bops_target = 10 * m.costs.bops.value()};
  const auto r = quant::freeze_to_budgets(m.weights(), m.acts(), loose);
  CHECK(r.all_met);
  std::vector<double> frozen = m.learned();
  // 8 bits everywhere is 2-3x the learned bits' BOPs, within 10x: every group (all of them
  // count in BOPs) takes b_max. Before #24 they stopped at ceil(learned).
  for (std::size_t i = 0; i < frozen.size(); ++i) CHECK(frozen[i] == 8.0);
  // A size budget alone limits the weights only: the activations stop at ceil(learned).
  budget_net m3;
  const std::vector<double> learned3 = m3.learned();
  quant::budgets size_only{.size_bits = 10 * weight_bits(m3.net)};
  CHECK(quant::freeze_to_budgets(m3.weights(), m3.acts(), size_only).all_met);
  const std::vector<double> frozen3 = m3.learned();
  std::size_t weight_groups = 0;
  m3.weights()([&](std::string_view, const auto& q) { weight_groups += q.groups(); });
  for (std::size_t i = 0; i < frozen3.size(); ++i)
    CHECK(frozen3[i] == (i < weight_groups ? 8.0 : std::min(8.0, std::ceil(learned3[i]))));

  budget_net m2;
  // Below the 8-bit input image alone (784 bytes): no bitwidth can reach it.
  quant::budgets tight{.memory = &m2.costs.memory, .memory_target_bits = 8.0 * 700};
  const auto r2 = quant::freeze_to_budgets(m2.weights(), m2.acts(), tight);
  CHECK_FALSE(r2.all_met);
  CHECK_FALSE(r2.checks[0].met);
  // relu1_quant (3456 values per image) went to 1 bit trying; every tensor the bitwidths can
  // bring within the target is within it
  CHECK(activation_bits(m2.net)[0] == 1);
  for (std::size_t t = 0; t < m2.costs.memory.tensors(); ++t)
    if (m2.costs.memory.name(t) != "input")
      CHECK(m2.costs.memory.tensor_bits(t) <= tight.memory_target_bits);
  CHECK_THROWS_AS(
      quant::freeze_to_budgets(m2.weights(), m2.acts(), quant::budgets{.size_bits = -1.0}),
      config_error);
}

TEST_CASE("the trainer learns activation bitwidths in search, freezes them with the weights and "
          "meets a BOPs and an activation memory budget") {
  nn::act_model_options<float, quant::frac_bits> o{.seed = 3};
  o.act_quant.b_init = 6.5;
  auto fp32 = nn::lenet5<float>({.seed = 3});
  auto quant = nn::lenet5(o);
  const double bops0 = nn::model_costs_of(quant, {}).bops.value();

  train::trainer_options opt;
  opt.batch_size = 32;
  opt.pretrain = {.epochs = 1, .lr = 2e-3};
  opt.search = {.epochs = 2, .lr = 5e-4, .bits_lr = 0.1};
  opt.finetune = {.epochs = 1, .lr = 2e-4};
  opt.max_steps_per_epoch = 8;
  opt.target_average_bits = 6; // loose: the cost budgets bind
  opt.target_bops = 0.3 * bops0;
  opt.target_activation_kb = 1.5; // relu1_quant: 3456 values per image, 1.5 KB = 3.47 bits
  opt.seed = 5;
  const fs::path dir = fs::temp_directory_path() / ("act-trainer-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  opt.out_dir = dir;
  std::ostringstream progress;
  opt.log = &progress;
  opt.terminal = false;
  train::trainer t(fp32, quant, sample_train(), sample_test(), opt);
  REQUIRE(t.costs() != nullptr);
  REQUIRE(t.cost_penalties().size() == 2);

  // The activation bitwidths at the end of every search epoch.
  struct watch : train::observer {
    decltype(quant)& net;
    std::vector<std::vector<double>> search_bits;
    explicit watch(decltype(quant)& n) : net(n) {}
    void on_epoch_end(const train::epoch_end_event& e) override {
      if (e.history.back().phase == "search") search_bits.push_back(activation_bits(net));
    }
  } w(quant);
  t.add_observer(w);
  const auto r = t.run();
  REQUIRE(r.finished);
  REQUIRE(w.search_bits.size() == 2);
  for (double b : w.search_bits.back()) CHECK(b < 6.5); // learned down under the penalties
  for (double b : w.search_bits.back()) CHECK(b != std::floor(b)); // still real-valued
  nn::visit_activation_quantizers(quant, [](std::string_view, const auto& q) {
    CHECK(q.frozen());
    for (double b : q.group_bits()) CHECK(b == std::floor(b));
  });
  CHECK(t.costs()->bops.value() <= *opt.target_bops);
  CHECK(t.costs()->memory.value() <= 8000 * *opt.target_activation_kb);
  CHECK(r.summary.quant_accuracy > 0.3);

  // Each cost against its budget: the summary, summary.json, log.csv and the progress lines.
  REQUIRE(r.summary.costs.size() == 3);
  CHECK(r.summary.costs[1].name == "bops");
  CHECK(r.summary.costs[1].value == doctest::Approx(t.costs()->bops.value()));
  CHECK(r.summary.costs[1].target == *opt.target_bops);
  CHECK(r.summary.costs[2].value == doctest::Approx(t.costs()->memory.value() / 8));
  CHECK(r.summary.costs[2].target == 1500);
  for (const auto& c : r.summary.costs) CHECK(c.met);
  const json summary = json::parse(read_text(dir / "summary.json"));
  REQUIRE(summary.contains("costs"));
  CHECK(summary["costs"][1]["name"] == "bops");
  CHECK(summary["costs"][1]["met"] == true);
  CHECK(summary["costs"][2]["target"].get<double>() == 1500);
  CHECK(summary["costs"][2]["value"].get<double>() == doctest::Approx(r.summary.costs[2].value));
  const auto rows = read_csv(dir / "log.csv");
  REQUIRE(rows.size() == 5); // header, pretrain, 2 search, finetune
  CHECK(rows[0].back() == "activation_bytes");
  CHECK(rows[1][9].empty()); // pretrain: the FP32 network, no costs
  CHECK(std::stod(rows[4][9]) == doctest::Approx(t.costs()->bops.value()));
  CHECK(std::stod(rows[2][10]) > std::stod(rows[4][10])); // search -> finetune: memory frozen down
  CHECK(progress.str().find("  BOPs ") != std::string::npos);
  CHECK(progress.str().find("froze bitwidths within budgets") != std::string::npos);
  const std::string html = read_text(dir / "report.html");
  CHECK(html.find("<h2>Costs</h2>") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("the trainer rejects bad cost targets and cost targets on a network it cannot cost") {
  auto fp32 = nn::lenet5<float>({.seed = 3});
  auto quant = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{.seed = 3});
  train::trainer_options opt;
  opt.log = nullptr;
  opt.target_bops = -1;
  CHECK_THROWS_WITH_AS(train::trainer(fp32, quant, sample_train(), sample_test(), opt),
                       doctest::Contains("target BOPs must be > 0"), config_error);
  opt.target_bops.reset();
  opt.cost_input.channels = 3; // LeNet-5 takes one channel
  opt.target_activation_kb = 2;
  CHECK_THROWS_WITH_AS(train::trainer(fp32, quant, sample_train(), sample_test(), opt),
                       doctest::Contains("needs the network's costs"), config_error);
}

TEST_CASE("size_budget = false drops the size budget: a size target below the smallest model "
          "is then no error, and only the cost budgets are penalised") {
  auto fp32 = nn::lenet5<float>({.seed = 3});
  auto quant = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{.seed = 3});
  train::trainer_options opt;
  opt.log = nullptr;
  opt.target_average_bits = 0.5; // below every group at b_min
  opt.target_bops = 1e6;
  CHECK_THROWS_WITH_AS(train::trainer(fp32, quant, sample_train(), sample_test(), opt),
                       doctest::Contains("below the smallest model"), config_error);
  opt.size_budget = false;
  train::trainer t(fp32, quant, sample_train(), sample_test(), opt);
  REQUIRE(t.cost_penalties().size() == 1);
  CHECK(t.cost_penalties().name(0) == "bops");
}

namespace {

template <class Net>
std::vector<float> all_parameters(Net& net) {
  std::vector<float> v;
  net.visit_parameters([&](param_ref<float>& p) { v.insert(v.end(), p.value, p.value + p.size); });
  return v;
}

/// A short LeNet-5 run with activation quantizers under a BOPs budget, stopped after
/// `stop_epochs` epochs / `stop_steps` steps and resumed until it finishes (0, 0: straight).
std::pair<std::vector<float>, std::vector<double>>
act_run(const fs::path& dir, std::size_t stop_epochs, std::size_t stop_steps) {
  for (int runs = 0; runs < 20; ++runs) {
    auto fp32 = nn::lenet5<float>({.seed = 3});
    auto quant = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{.seed = 3});
    train::trainer_options opt;
    opt.batch_size = 32;
    opt.pretrain = {.epochs = 1, .lr = 2e-3};
    opt.search = {.epochs = 2, .lr = 5e-4, .bits_lr = 0.1};
    opt.finetune = {.epochs = 2, .lr = 2e-4};
    opt.max_steps_per_epoch = 4;
    opt.target_bops = 1e6;
    opt.seed = 2;
    opt.out_dir = dir;
    opt.resume = true;
    opt.stop_after_epochs = stop_epochs;
    opt.stop_after_steps = stop_steps;
    opt.log = nullptr;
    train::trainer t(fp32, quant, sample_train(), sample_test(), opt);
    if (t.run().finished) {
      std::vector<double> acts;
      nn::visit_activation_quantizers(quant, [&](std::string_view, const auto& q) {
        REQUIRE(q.frozen());
        for (double b : q.group_bits()) acts.push_back(b);
        for (double a : q.group_ranges()) acts.push_back(a);
      });
      return {all_parameters(quant), acts};
    }
  }
  FAIL("the run did not finish");
  return {};
}

} // namespace

TEST_CASE("a run with activation quantizers stopped and resumed ends bit-identical (their frozen "
          "bitwidths and calibration travel in the checkpoint)") {
  const fs::path base = fs::temp_directory_path() / ("act-resume-" + std::to_string(::getpid()));
  fs::remove_all(base);
  const auto straight = act_run(base / "straight", 0, 0);
  for (const auto& rule : {std::pair<std::size_t, std::size_t>{1, 0}, {0, 3}}) {
    const std::size_t epochs = rule.first, steps = rule.second; // clang 14: no captured bindings
    CAPTURE(epochs);
    CAPTURE(steps);
    const auto resumed =
        act_run(base / ("r" + std::to_string(epochs) + std::to_string(steps)), epochs, steps);
    CHECK(resumed.second == straight.second);
    CHECK(resumed.first == straight.first);
  }
  fs::remove_all(base);
}

} // namespace test_act_trainer
