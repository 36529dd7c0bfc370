// The option forms a user writes, as the README and the headers show them, compiled with
// -Wall -Wextra -Wpedantic -Werror by g++ and clang++ (designated initializers that name only
// some members must not warn: every member of an options struct has a default initializer).
// Run as part of the plain_include consumer: every option checked below reaches its object, and
// the export / accuracy snippet gives what the hand-written loop gives.
#include <bitgrad/bitgrad.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("readme snippets: %s FAILED\n", what);
    ++failures;
  }
}

/// The policy options, one member at a time and nested in model_options.
void policy_options() {
  using namespace bitgrad;
  const quant::frac_bits<float>::options frac{.group_size = 3};
  const quant::step_bits<float>::options step{.group_size = 3};
  const quant::noise_bits<float>::options noise{.group_size = 3};
  const quant::fixed_bits<float>::options fixed{.group_size = 3};
  const quant::frac_bits<float>::options frac_range{.b_min = 3, .b_max = 6};
  const quant::frac_bits<float>::options frac_init{.b_init = 4.5};
  const quant::step_bits<float>::options step_range{.b_min = 2, .b_max = 5};
  const quant::noise_bits<float>::options noise_seed{.b_max = 6, .seed = 7};
  const quant::fixed_bits<float>::options fixed_bits{.bits = 3};
  expect(frac.group_size == 3 && !frac.b_init && frac.b_max == 8, "frac_bits options");
  expect(step.group_size == 3 && !step.b_init, "step_bits options");
  expect(noise.group_size == 3 && !noise.b_init, "noise_bits options");
  expect(fixed.group_size == 3 && fixed.bits == 4, "fixed_bits options");
  expect(frac_range.b_min == 3 && frac_range.b_max == 6, "frac_bits bit range");
  expect(frac_init.b_init && *frac_init.b_init == 4.5, "frac_bits b_init");
  expect(step_range.b_max == 5 && noise_seed.seed == 7 && fixed_bits.bits == 3, "policy options");

  // model_options: the policy options of the hidden layers travel with .quant.
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1, .quant = {.group_size = 4}});
  std::size_t groups_conv2 = 0;
  net.visit_quantizers([&](std::string_view name, auto& q) {
    if (name == "conv2") groups_conv2 = q.groups();
  });
  expect(groups_conv2 == 4, "model_options .quant = {.group_size = 4}: conv2 has 16 / 4 groups");
}

/// Optimizer, trainer and loader options.
void training_options() {
  using namespace bitgrad;
  const optim::adam_options adam{.lr = 1e-3};
  const optim::adamw_options adamw{.lr = 1e-3, .weight_decay = 0.05};
  const optim::sgd_options sgd{.lr = 0.1, .momentum = 0.9};
  const optim::group_options group{.lr = 0.02, .weight_decay = 0};
  const train::phase_options phase{.epochs = 2, .lr = 1e-3};
  const train::trainer_options trainer{.batch_size = 32, .seed = 3};
  const train::trainer_options phases{
      .pretrain = {.epochs = 1}, .search = {.epochs = 1}, .finetune = {.epochs = 0}};
  const train::trainer_options target{.target_average_bits = 2.5,
                                      .normalise = {.mean = {0.5}, .stddev = {0.25}}};
  const loader_options loader{.batch_size = 64, .seed = 1, .mean = {0.286}, .stddev = {0.353}};
  const quant::size_penalty penalty{.lambda = 5.0, .target_bits = 1000};
  expect(adam.lr == 1e-3 && adam.beta1 == 0.9, "adam_options");
  expect(adamw.weight_decay == 0.05 && sgd.momentum == 0.9, "adamw / sgd options");
  expect(group.lr && *group.lr == 0.02 && group.weight_decay && *group.weight_decay == 0,
         "group_options");
  expect(phase.epochs == 2 && phase.bits_lr == 0, "phase_options");
  expect(trainer.batch_size == 32 && trainer.seed == 3 && !trainer.target_bytes &&
             trainer.out_dir.empty(),
         "trainer_options");
  expect(phases.pretrain.epochs == 1 && phases.finetune.epochs == 0, "trainer_options phases");
  expect(target.target_average_bits == 2.5 && target.normalise.mean.at(0) == 0.5,
         "trainer_options target and normalisation");
  expect(loader.batch_size == 64 && loader.shuffle, "loader_options");
  expect(penalty.lambda == 5.0 && penalty.unit_bits == 8192.0, "size_penalty");
}

/// The README's "Using it" loop, one step on two random images.
void using_it() {
  using namespace bitgrad;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  tensor4<float> x = tensor4<float>::from_shape({2, 1, 28, 28});
  for (auto& v : x) v = u(rng);
  const std::vector<std::int32_t> y{3, 7};
  nn::softmax_cross_entropy<float> loss;

  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1}); // bitwidth per channel
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  auto quantizers = [&](auto&& f) { net.visit_quantizers(f); };
  optim::adam<float> opt({.lr = 1e-3});
  opt.set_group(param_kind::bitwidth, {.lr = 0.02, .weight_decay = 0});
  quant::size_penalty penalty{.lambda = 5.0,
                              .target_bits = quant::target_bits_for_average(quantizers, 3.0)};
  // one step
  net.zero_grad();
  float l = loss.forward(net.forward(x), y);
  net.backward(loss.backward());
  quant::apply_size_penalty(quantizers, penalty); // d(size penalty)/d(bitwidths)
  opt.step(params);
  net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  // at the end: integer bitwidths within the size target
  const quant::budget_result r = quant::freeze_to_budget(quantizers, penalty.target_bits);
  expect(std::isfinite(l), "one step: finite loss");
  expect(r.within_target && r.size_bits <= penalty.target_bits, "freeze_to_budget: within target");
}

/// The README's export and accuracy snippet, on eight random 28x28 images.
void export_and_accuracy() {
  using namespace bitgrad;
  dataset data;
  data.channels = 1;
  data.height = data.width = 28;
  data.classes = 10;
  std::mt19937 rng(2);
  for (int i = 0; i < 8; ++i) data.labels.push_back(i % 10);
  data.pixels.resize(data.size() * data.image_size());
  for (auto& p : data.pixels) p = static_cast<std::uint8_t>(rng() % 256);
  const dataset& train_set = data;
  const dataset& test_set = data;

  auto fp32 = nn::lenet5<float>({.seed = 1});
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  train::trainer trainer(fp32, net, train_set, test_set,
                         {.target_average_bits = 16,
                          .normalise = {.mean = {0.286}, .stddev = {0.353}},
                          .log = nullptr});
  // Unique names: the g++ and clang++ builds of this test may run at the same time.
  const std::string tag = std::to_string(std::random_device{}());
  const std::filesystem::path dir = std::filesystem::temp_directory_path();
  const std::filesystem::path a = dir / ("bitgrad-readme-snippets-" + tag + "-a.bgm");
  const std::filesystem::path b = dir / ("bitgrad-readme-snippets-" + tag + "-b.bgm");

  train::export_model(trainer, a);
  train::export_model(net, b, train_set, {.mean = {0.286}, .stddev = {0.353}});

  auto rt = deploy::runtime::load(a);
  double acc = rt.accuracy(test_set);                                      // float path
  deploy::evaluation e = rt.evaluate(test_set, deploy::precision::packed); // packed integer engine
  std::size_t bytes = rt.resident_weight_bytes(); // <= 1.25x rt.weight_payload_bytes() until a
                                                  // float run decodes a float copy
  const auto rt_b = deploy::runtime::load(b);
  std::filesystem::remove(a);
  std::filesystem::remove(b);

  // The hand-written loop the two calls replace.
  const std::vector<float> x = rt.normalise(test_set.pixels.data(), test_set.size());
  const std::vector<std::size_t> top = deploy::runtime::top1(rt.run(x.data(), test_set.size()));
  std::size_t correct = 0;
  for (std::size_t i = 0; i < top.size(); ++i)
    correct += top[i] == static_cast<std::size_t>(test_set.labels[i]);
  expect(acc == static_cast<double>(correct) / 8.0, "runtime::accuracy == the hand loop");
  expect(e.images == 8 && e.predictions.size() == 8, "runtime::evaluate");
  expect(bytes > rt.weight_payload_bytes(), "resident weights include the float path's copy");
  expect(rt.model().mean == std::vector<double>{0.286} && rt_b.model().mean == rt.model().mean,
         "export_model(trainer): the trainer's normalisation");
}

} // namespace

int readme_snippets() {
  policy_options();
  training_options();
  using_it();
  export_and_accuracy();
  std::printf("readme snippets: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
