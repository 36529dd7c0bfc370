// API misuse fails loudly and early, with a message that says what is wrong and where:
// layers that do not fit together, bad quantizer options, bitwidths outside [1, 16], a size
// target the minimum bitwidth cannot reach, empty data sets, batch size 0, and a checkpoint of
// another architecture (or of a diverged run).
#include <bitgrad/bitgrad.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

namespace test_misuse {

namespace fs = std::filesystem;
using namespace bitgrad;
using doctest::Contains;

namespace {

/// n images of c x s x s bytes, labels i % classes.
dataset tiny_dataset(std::size_t n, std::size_t c = 1, std::size_t s = 28,
                     std::size_t classes = 10) {
  dataset d;
  d.channels = c;
  d.height = s;
  d.width = s;
  d.classes = classes;
  for (std::size_t i = 0; i < n; ++i) {
    d.labels.push_back(static_cast<std::int32_t>(i % classes));
    for (std::size_t p = 0; p < c * s * s; ++p)
      d.pixels.push_back(static_cast<std::uint8_t>((i * 13 + p) % 256));
  }
  return d;
}

template <class Net>
std::vector<double> all_parameters(Net& net) {
  std::vector<double> v;
  net.visit_parameters([&](auto& p) { v.insert(v.end(), p.value, p.value + p.size); });
  return v;
}

struct temp_file {
  fs::path path;
  explicit temp_file(const std::string& name)
      : path(fs::temp_directory_path() /
             ("bitgrad-misuse-" + name + "-" + std::to_string(::getpid()))) {}
  ~temp_file() {
    std::error_code ignored;
    fs::remove(path, ignored);
  }
};

template <class Q>
auto quantizers_of(Q& net) {
  return [&net](auto&& f) { net.visit_quantizers(f); };
}

} // namespace

TEST_CASE("layers whose feature counts do not fit are rejected when the sequential is built, "
          "naming the layer's index and type, the expected and the actual count") {
  using lin = nn::linear<float>;
  using conv = nn::conv2d<float>;
  SUBCASE("linear after linear (through a relu)") {
    CHECK_THROWS_WITH_AS(
        nn::sequential(lin({.in_features = 784, .out_features = 100, .name = "fc1"}),
                       nn::relu<float, 2>("relu"),
                       lin({.in_features = 50, .out_features = 10, .name = "fc2"})),
        "sequential: layer 2 (linear 50->10 no_quant 'fc2'): expected 50 input features, got 100 "
        "from layer 1 (relu 'relu')",
        shape_error);
  }
  SUBCASE("conv2d after conv2d, through a max pool; the sequential's own name leads") {
    CHECK_THROWS_WITH_AS(
        nn::sequential(std::string("net"),
                       conv({.in_channels = 1, .out_channels = 4, .kernel = 3, .name = "c1"}),
                       nn::max_pool2d<float>({.kernel = 2, .name = "pool"}),
                       conv({.in_channels = 3, .out_channels = 2, .kernel = 3, .name = "c2"})),
        "net: layer 2 (conv2d 3->2 3x3 no_quant 'c2'): expected 3 input channels, got 4 from "
        "layer 1 (max_pool2d 2x2 stride 2 'pool')",
        shape_error);
  }
  SUBCASE("batch_norm2d after a conv2d") {
    CHECK_THROWS_WITH_AS(
        nn::sequential(conv({.in_channels = 3, .out_channels = 16, .kernel = 3, .name = "c1"}),
                       nn::batch_norm<float, 4>({.features = 32, .name = "bn1"})),
        "sequential: layer 1 (batch_norm2d 32 'bn1'): expected 32 input channels, got 16 from "
        "layer 0 (conv2d 3->16 3x3 no_quant 'c1')",
        shape_error);
  }
  SUBCASE("a linear after global average pooling takes the channels as features") {
    CHECK_THROWS_WITH_AS(
        nn::sequential(conv({.in_channels = 3, .out_channels = 8, .kernel = 3, .name = "c1"}),
                       nn::global_avg_pool<float>("gap"),
                       lin({.in_features = 10, .out_features = 2, .name = "fc"})),
        Contains("layer 2 (linear 10->2 no_quant 'fc'): expected 10 input features, got 8 from "
                 "layer 1 (global_avg_pool 'gap')"),
        shape_error);
  }
  SUBCASE("after a flatten the count is unknown until a layer states one again") {
    CHECK_THROWS_WITH_AS(
        nn::sequential(conv({.in_channels = 1, .out_channels = 2, .kernel = 3, .name = "c1"}),
                       nn::flatten<float>("flatten"),
                       lin({.in_features = 32, .out_features = 5, .name = "fc1"}),
                       nn::dropout<float, 2>({.p = 0.5, .name = "drop"}),
                       lin({.in_features = 4, .out_features = 2, .name = "fc2"})),
        Contains("layer 4 (linear 4->2 no_quant 'fc2'): expected 4 input features, got 5 from "
                 "layer 3 (dropout"),
        shape_error);
  }
  SUBCASE("inside a nested sequential: both positions are named") {
    auto head = nn::sequential(std::string("head"), nn::relu<float, 2>("relu"),
                               lin({.in_features = 50, .out_features = 10, .name = "fc2"}));
    CHECK_THROWS_WITH_AS(
        nn::sequential(lin({.in_features = 784, .out_features = 100, .name = "fc1"}),
                       std::move(head)),
        "sequential: layer 1 (sequential of 2 layers 'head'): head: layer 1 (linear 50->10 "
        "no_quant 'fc2'): expected 50 input features, got 100 from layer 0 (relu 'relu')",
        shape_error);
  }
  SUBCASE("a residual whose block changes the channels around an identity shortcut") {
    auto block =
        nn::sequential(conv({.in_channels = 4, .out_channels = 8, .kernel = 3, .name = "c1"}));
    CHECK_THROWS_WITH_AS(
        nn::residual(std::string("blk"), std::move(block), nn::identity<float, 4>("shortcut")),
        "blk: block gives 8 output channels, shortcut (identity 'shortcut') gives 4", shape_error);
  }
  SUBCASE("a residual whose block and projection shortcut take different inputs") {
    auto block =
        nn::sequential(conv({.in_channels = 4, .out_channels = 8, .kernel = 3, .name = "c1"}));
    auto shortcut =
        nn::sequential(conv({.in_channels = 3, .out_channels = 8, .kernel = 1, .name = "proj"}));
    CHECK_THROWS_WITH_AS(nn::residual(std::string("blk"), std::move(block), std::move(shortcut)),
                         "blk: block expects 4 input channels, shortcut expects 3", shape_error);
  }
  SUBCASE("fitting layers build") {
    CHECK_NOTHROW(nn::sequential(lin({.in_features = 784, .out_features = 100, .name = "fc1"}),
                                 nn::relu<float, 2>("relu"),
                                 lin({.in_features = 100, .out_features = 10, .name = "fc2"})));
    CHECK_NOTHROW(nn::sequential(
        conv({.in_channels = 3, .out_channels = 16, .kernel = 3, .name = "c1"}),
        nn::batch_norm<float, 4>({.features = 16, .name = "bn1"}), nn::relu<float, 4>("relu"),
        nn::avg_pool2d<float>({.kernel = 2, .name = "pool"}),
        conv({.in_channels = 16, .out_channels = 8, .kernel = 3, .name = "c2"})));
  }
}

namespace {

/// A user layer that states nothing about its features (neither optional member): y = x.
struct user_copy_layer {
  using value_type = float;
  using input_type = tensor2<float>;
  using output_type = tensor2<float>;
  const output_type& forward(const input_type& x) { return y_ = x; }
  const input_type& backward(const output_type& dy) { return dx_ = dy; }
  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  std::string describe() const { return "user copy"; }
  const std::string& name() const { return name_; }
  std::string name_ = "user";
  bool training_ = true;
  output_type y_;
  input_type dx_;
};
static_assert(nn::layer<user_copy_layer>);

} // namespace

TEST_CASE("what construction cannot see fails at the first forward, naming the layer and both "
          "shapes") {
  SUBCASE("a user layer without the optional feature members stops the check") {
    auto net = nn::sequential(
        nn::linear<float>({.in_features = 4, .out_features = 3, .name = "fc1"}), user_copy_layer{},
        nn::linear<float>({.in_features = 5, .out_features = 2, .name = "fc2"}));
    const tensor2<float> x = xt::ones<float>({2, 4});
    CHECK_THROWS_WITH_AS(net.forward(x),
                         "fc2: expected input of shape (0, 5) (0 = any), got (2, 3)", shape_error);
  }
  SUBCASE("a flatten whose size does not match the next linear") {
    // conv 1->2 3x3 on 6x6 gives (N, 2, 4, 4): 32 features, not 30.
    auto net = nn::sequential(
        nn::conv2d<float>({.in_channels = 1, .out_channels = 2, .kernel = 3, .name = "conv"}),
        nn::flatten<float>("flatten"),
        nn::linear<float>({.in_features = 30, .out_features = 2, .name = "head"}));
    const tensor4<float> x = xt::ones<float>({1, 1, 6, 6});
    CHECK_THROWS_WITH_AS(net.forward(x),
                         "head: expected input of shape (0, 30) (0 = any), got (1, 32)",
                         shape_error);
  }
  SUBCASE("an input with the wrong channel count") {
    auto net = nn::sequential(
        nn::conv2d<float>({.in_channels = 1, .out_channels = 4, .kernel = 3, .name = "c1"}),
        nn::conv2d<float>({.in_channels = 4, .out_channels = 2, .kernel = 3, .name = "c2"}));
    const tensor4<float> x = xt::ones<float>({2, 3, 8, 8});
    try {
      net.forward(x);
      FAIL("no shape_error");
    } catch (const shape_error& e) {
      const std::string what = e.what();
      CHECK(what.rfind("c1: ", 0) == 0);
      CHECK(what.find("(2, 3, 8, 8)") != std::string::npos); // what it got
      CHECK(what.find("(0, 1, 0, 0)") != std::string::npos); // the channels it expects
    }
  }
  SUBCASE("LeNet-5 fed an image of the wrong size") {
    auto net = nn::lenet5<float>({.seed = 1});
    const tensor4<float> x = xt::zeros<float>({1, 1, 32, 32});
    CHECK_THROWS_WITH_AS(net.forward(x), Contains("fc1: expected input of shape (0, 256)"),
                         shape_error);
    CHECK_THROWS_WITH_AS(net.forward(x), Contains("got (1, 400)"), shape_error);
  }
}

TEST_CASE("the model builders pass the construction check") {
  CHECK_NOTHROW(nn::lenet5<float>({.seed = 1}));
  CHECK_NOTHROW(nn::lenet5<float, quant::frac_bits, quant::fixed_bits>({.seed = 1}));
  CHECK_NOTHROW(nn::lenet5<float>({.seed = 1, .in_channels = 3, .in_size = 32}));
  CHECK_NOTHROW(nn::vgg_small<float>({.seed = 3}));
  CHECK_NOTHROW(nn::vgg_small<float, quant::frac_bits>({.in_channels = 3, .in_size = 32}));
  CHECK_NOTHROW(nn::resnet20<float>({.seed = 1}));
  CHECK_NOTHROW(nn::resnet20<float, quant::frac_bits, quant::fixed_bits>({.width = 8}));
  // ... and state their input and output features.
  const auto lenet = nn::lenet5<float>({.seed = 1});
  CHECK(lenet.input_features() == std::optional<std::size_t>(1));
  CHECK(lenet.output_features(1) == std::optional<std::size_t>(10));
  const auto resnet = nn::resnet20<float>({.num_classes = 7});
  CHECK(resnet.input_features() == std::optional<std::size_t>(3));
  CHECK(resnet.output_features(std::nullopt) == std::optional<std::size_t>(7));
}

TEST_CASE("group size 0 or larger than the channel count is rejected when the layer is built") {
  SUBCASE("frac_bits group_size 0") {
    CHECK_THROWS_WITH_AS(
        (nn::linear<float, quant::frac_bits>({.in_features = 4, .out_features = 3, .name = "fc"},
                                             {.group_size = 0, .b_init = {}})),
        Contains("fc: frac_bits: expected group_size >= 1 (or per_tensor), got 0"), config_error);
  }
  SUBCASE("fixed_bits group_size above the channel count") {
    CHECK_THROWS_WITH_AS(
        (nn::conv2d<float, quant::fixed_bits>(
            {.in_channels = 1, .out_channels = 6, .kernel = 3, .name = "conv"}, {.group_size = 7})),
        Contains("conv: fixed_bits: expected group_size <= channels (6) or per_tensor, got 7"),
        config_error);
  }
  SUBCASE("step_bits group_size above the channel count") {
    CHECK_THROWS_WITH_AS(
        (nn::linear<float, quant::step_bits>({.in_features = 4, .out_features = 3, .name = "fc"},
                                             {.group_size = 4, .b_init = {}})),
        Contains("fc: step_bits: expected group_size <= channels (3) or per_tensor, got 4"),
        config_error);
  }
  SUBCASE("through a model builder") {
    // conv2 of LeNet-5 has 16 channels (conv1 6, fc3 10: model_options::quant reaches them).
    nn::model_options<float, quant::frac_bits> o;
    o.quant.group_size = 17;
    CHECK_THROWS_WITH_AS((nn::lenet5<float, quant::frac_bits>(o)),
                         Contains("expected group_size <= channels ("), config_error);
    o.edge_quant = o.quant;
    o.edge_quant->group_size = 1;
    CHECK_THROWS_WITH_AS((nn::lenet5<float, quant::frac_bits>(o)),
                         Contains("conv2: frac_bits: expected group_size <= channels (16)"),
                         config_error);
  }
  SUBCASE("per_tensor and group_size == channels are fine") {
    CHECK_NOTHROW(nn::linear<float, quant::frac_bits>(
        {.in_features = 4, .out_features = 3}, {.group_size = quant::per_tensor, .b_init = {}}));
    CHECK_NOTHROW(nn::linear<float, quant::frac_bits>({.in_features = 4, .out_features = 3},
                                                      {.group_size = 3, .b_init = {}}));
  }
}

TEST_CASE("b_min > b_max and bounds outside [1, 16] are rejected when the quantizer is built") {
  CHECK_THROWS_WITH_AS(quant::frac_bits<float>({.b_min = 8, .b_max = 4, .b_init = 6}),
                       "frac_bits: expected b_min <= b_max, got b_min = 8 > b_max = 4",
                       config_error);
  CHECK_THROWS_WITH_AS(quant::step_bits<float>({.b_min = 6, .b_max = 3, .b_init = {}}),
                       Contains("expected b_min <= b_max, got b_min = 6 > b_max = 3"),
                       config_error);
  CHECK_THROWS_WITH_AS(quant::frac_bits<float>({.b_min = 2, .b_max = 17, .b_init = {}}),
                       "frac_bits: expected bitwidth bounds inside [1, 16], got [2, 17]",
                       config_error);
  CHECK_THROWS_WITH_AS(quant::frac_bits<float>({.b_min = 0, .b_max = 8, .b_init = {}}),
                       "frac_bits: expected bitwidth bounds inside [1, 16], got [0, 8]",
                       config_error);
  CHECK_THROWS_WITH_AS(quant::frac_bits<float>({.b_min = 2, .b_max = 8, .b_init = 9}),
                       Contains("expected b_init inside [b_min, b_max] = [2, 8], got 9"),
                       config_error);
  // NaN bounds are not silently accepted either.
  CHECK_THROWS_AS(quant::frac_bits<float>({.b_min = std::nan(""), .b_max = 8, .b_init = 4}),
                  config_error);
}

TEST_CASE("integer bitwidths outside [1, 16] are rejected and leave the quantizer unchanged") {
  SUBCASE("fixed_bits options") {
    CHECK_THROWS_WITH_AS(quant::fixed_bits<float>({.bits = 0}),
                         "fixed_bits: expected an integer bitwidth in [1, 16], got 0",
                         config_error);
    CHECK_THROWS_WITH_AS(quant::fixed_bits<float>({.bits = 17}),
                         "fixed_bits: expected an integer bitwidth in [1, 16], got 17",
                         config_error);
    CHECK_NOTHROW(quant::fixed_bits<float>({.bits = 1}));
    CHECK_NOTHROW(quant::fixed_bits<float>({.bits = 16}));
  }
  SUBCASE("freeze_to 0 or 17") {
    nn::linear<float, quant::frac_bits> fc({.in_features = 4, .out_features = 3, .name = "fc"},
                                           {.b_init = {}});
    auto& q = fc.quantizer();
    const auto before = q.group_bits();
    CHECK_THROWS_WITH_AS(q.freeze_to({4, 0, 4}),
                         "frac_bits: expected an integer bitwidth in [1, 16], got 0", config_error);
    CHECK_THROWS_WITH_AS(q.freeze_to({17, 4, 4}),
                         "frac_bits: expected an integer bitwidth in [1, 16], got 17",
                         config_error);
    CHECK_FALSE(q.frozen());
    CHECK(q.group_bits() == before);
    CHECK_THROWS_WITH_AS(q.freeze_to({4, 4}),
                         "frac_bits: expected 3 bitwidths (one per group), got 2", config_error);
    q.freeze_to({1, 16, 4});
    CHECK(q.frozen_bits() == std::vector<int>{1, 16, 4});
  }
  SUBCASE("fixed_bits freeze_to 17") {
    nn::linear<float, quant::fixed_bits> fc({.in_features = 4, .out_features = 2, .name = "fc"},
                                            {.group_size = 1, .bits = 4});
    CHECK_THROWS_WITH_AS(fc.quantizer().freeze_to({17, 4}),
                         "fixed_bits: expected an integer bitwidth in [1, 16], got 17",
                         config_error);
    CHECK(fc.quantizer().frozen_bits() == std::vector<int>{4, 4});
  }
}

TEST_CASE("a size target below what the minimum bitwidth allows is reported, not silently met") {
  // LeNet-5 with frac_bits in [2, 8]: the smallest model has every group at 2 bits. The
  // bitwidths start at 2.4, as a search against an unreachable target leaves them (the size
  // penalty pushes every group down to b_min).
  nn::model_options<float, quant::frac_bits> o;
  o.seed = 1;
  o.quant.b_init = 2.4;
  auto net = nn::lenet5<float, quant::frac_bits>(o);
  auto visit = quantizers_of(net);
  double floor_bits = 0;
  std::size_t weights = 0;
  net.visit_quantizers([&](std::string_view, const auto& q) {
    floor_bits += 2.0 * static_cast<double>(q.weight_count()) +
                  quant::group_overhead_bits * static_cast<double>(q.groups());
    weights += q.weight_count();
  });
  REQUIRE(weights > 0);

  SUBCASE("freeze_to_budget: within_target is false and every group takes the minimum") {
    const double target = 1.0 * static_cast<double>(weights); // 1 bit per weight < 2 bits
    const quant::budget_result r = quant::freeze_to_budget(visit, target);
    CHECK_FALSE(r.within_target);
    CHECK(r.target_bits == target);
    CHECK(r.size_bits == doctest::Approx(floor_bits));
    CHECK(r.size_bits > r.target_bits);
    net.visit_quantizers([](std::string_view, const auto& q) {
      for (int k : q.frozen_bits()) CHECK(k == 2);
    });
  }
  SUBCASE("the trainer refuses it when it is built, naming both sizes") {
    auto fp32 = nn::lenet5<float>({.seed = 1});
    const dataset train_set = tiny_dataset(4), test_set = tiny_dataset(2);
    train::trainer_options opt;
    opt.target_average_bits = 1.0;
    opt.log = nullptr;
    CHECK_THROWS_WITH_AS(train::trainer(fp32, net, train_set, test_set, opt),
                         Contains("is below the smallest model the bitwidth bounds allow"),
                         config_error);
    opt.target_average_bits = 3.0;
    CHECK_NOTHROW(train::trainer(fp32, net, train_set, test_set, opt));
    opt.target_bytes = -5.0;
    CHECK_THROWS_WITH_AS(train::trainer(fp32, net, train_set, test_set, opt),
                         Contains("target bytes must be > 0"), config_error);
  }
  SUBCASE("bitwidths still high: rounded down to the minimum, and still reported") {
    // budget.hpp: when even the all-floor model exceeds the target, groups go down one bit at
    // a time until every group is at its lowest allowed bitwidth.
    nn::model_options<float, quant::frac_bits> high;
    high.quant.b_init = 6.5;
    auto big = nn::lenet5<float, quant::frac_bits>(high);
    auto big_visit = quantizers_of(big);
    const quant::budget_result r =
        quant::freeze_to_budget(big_visit, 1.0 * static_cast<double>(weights));
    CHECK_FALSE(r.within_target);
    CHECK(r.size_bits == doctest::Approx(floor_bits));
    int above_minimum = 0;
    big.visit_quantizers([&](std::string_view, const auto& q) {
      for (int k : q.frozen_bits()) above_minimum += k != 2;
    });
    CHECK(above_minimum == 0);
  }
  SUBCASE("a reachable target is met") {
    const quant::budget_result r = quant::freeze_to_budget(visit, floor_bits + 1000.0);
    CHECK(r.within_target);
    CHECK(r.size_bits <= r.target_bits);
  }
}

TEST_CASE("an empty data set is rejected by the loader and the trainer") {
  const dataset empty = tiny_dataset(0);
  const dataset some = tiny_dataset(3);
  CHECK_THROWS_WITH_AS(loader<float>(empty, {.batch_size = 4}), "loader: the dataset is empty",
                       config_error);
  auto fp32 = nn::lenet5<float>({.seed = 1});
  auto q = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  train::trainer_options o;
  o.log = nullptr;
  CHECK_THROWS_WITH_AS(train::trainer(fp32, q, empty, some, o),
                       "trainer: the training set is empty", config_error);
  CHECK_THROWS_WITH_AS(train::trainer(fp32, q, some, empty, o), "trainer: the test set is empty",
                       config_error);
  CHECK_THROWS_WITH_AS(train::evaluate(fp32, empty, loader_options{}), Contains("empty"),
                       config_error);
}

TEST_CASE("batch size 0 is rejected by the loader and the trainer") {
  const dataset data = tiny_dataset(3);
  CHECK_THROWS_WITH_AS(loader<float>(data, {.batch_size = 0}),
                       "loader: batch size must be at least 1", config_error);
  auto fp32 = nn::lenet5<float>({.seed = 1});
  auto q = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  train::trainer_options o;
  o.batch_size = 0;
  o.log = nullptr;
  CHECK_THROWS_WITH_AS(train::trainer(fp32, q, data, data, o),
                       "trainer: batch size must be >= 1, got 0", config_error);
}

TEST_CASE("a checkpoint of another architecture is rejected and the network left unchanged") {
  temp_file file("arch");
  auto saved = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  train::save_checkpoint(file.path, saved, {});

  SUBCASE("another quantizer policy: the first differing parameter is named") {
    auto other = nn::lenet5<float, quant::fixed_bits>({.seed = 2});
    const auto before = all_parameters(other);
    CHECK_THROWS_WITH_AS(
        train::load_checkpoint(file.path, other),
        Contains("checkpoint of another architecture: parameter 2 is 'conv1.bits' (6 values), "
                 "the network expects 'conv1.scale' (6 values)"),
        format_error);
    CHECK(all_parameters(other) == before);
  }
  SUBCASE("another group size: the sizes are named") {
    nn::model_options<float, quant::frac_bits> o;
    o.seed = 2;
    o.quant.group_size = quant::per_tensor;
    auto other = nn::lenet5<float, quant::frac_bits>(o);
    const auto before = all_parameters(other);
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file.path, other),
                         Contains("'conv1.bits' (6 values), the network expects 'conv1.bits' (1 "
                                  "values)"),
                         format_error);
    CHECK(all_parameters(other) == before);
  }
  SUBCASE("another model") {
    auto other = nn::vgg_small<float, quant::frac_bits>({.seed = 2});
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file.path, other),
                         Contains("checkpoint of another architecture"), format_error);
  }
  SUBCASE("another element type") {
    auto other = nn::lenet5<double, quant::frac_bits>({.seed = 2});
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file.path, other),
                         Contains("parameters stored with 4-byte values, the network uses 8"),
                         format_error);
  }
  SUBCASE("the same architecture loads") {
    auto same = nn::lenet5<float, quant::frac_bits>({.seed = 2});
    train::load_checkpoint(file.path, same);
    CHECK(all_parameters(same) == all_parameters(saved));
  }
}

TEST_CASE("a checkpoint with non-finite values, bitwidths outside [1, 16] or scales <= 0 is "
          "rejected") {
  // Found by fuzz_checkpoint: such values reached frac_bits' float-to-int conversion of the
  // bitwidth (undefined behaviour) at the next forward.
  temp_file file("values");
  auto set_first = [](auto& net, std::string_view name, float v) {
    bool found = false;
    net.visit_parameters([&](param_ref<float>& p) {
      if (p.name == name) {
        p.value[0] = v;
        found = true;
      }
    });
    REQUIRE(found);
  };
  auto load_into_fresh = [&] {
    auto fresh = nn::lenet5<float, quant::frac_bits>({.seed = 2});
    const auto before = all_parameters(fresh);
    try {
      train::load_checkpoint(file.path, fresh);
    } catch (...) {
      CHECK(all_parameters(fresh) == before);
      throw;
    }
  };
  SUBCASE("a NaN weight") {
    auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
    set_first(net, "fc1.weight", std::numeric_limits<float>::quiet_NaN());
    train::save_checkpoint(file.path, net, {});
    CHECK_THROWS_WITH_AS(load_into_fresh(),
                         Contains("parameter 'fc1.weight' value 0 is nan, not finite"),
                         format_error);
  }
  SUBCASE("an infinite bias") {
    auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
    set_first(net, "conv2.bias", std::numeric_limits<float>::infinity());
    train::save_checkpoint(file.path, net, {});
    CHECK_THROWS_WITH_AS(load_into_fresh(), Contains("'conv2.bias' value 0 is inf, not finite"),
                         format_error);
  }
  SUBCASE("a scale of 0") {
    auto net = nn::lenet5<float, quant::fixed_bits>({.seed = 1});
    set_first(net, "fc1.scale", 0.0f);
    train::save_checkpoint(file.path, net, {});
    auto fresh = nn::lenet5<float, quant::fixed_bits>({.seed = 2});
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file.path, fresh),
                         Contains("'fc1.scale' value 0 is 0.000000, not a positive scale"),
                         format_error);
  }
  SUBCASE("noise_bits' logits: any value in [-10, 10] loads (a logit is not a bitwidth), 40 not") {
    // noise_bits' bitwidth parameter is a logit, b = b_min + (b_max - b_min) sigmoid(l): a
    // negative logit (a group nearer b_min than b_max) is an ordinary trained state.
    for (float l : {-3.0f, 0.0f, -10.0f}) {
      auto net = nn::lenet5<float, quant::noise_bits>({.seed = 1});
      set_first(net, "fc2.logit", l);
      train::save_checkpoint(file.path, net, {});
      auto fresh = nn::lenet5<float, quant::noise_bits>({.seed = 2});
      train::load_checkpoint(file.path, fresh);
      CHECK(all_parameters(fresh) == all_parameters(net));
    }
    auto net = nn::lenet5<float, quant::noise_bits>({.seed = 1});
    set_first(net, "fc2.logit", 40.0f);
    train::save_checkpoint(file.path, net, {});
    auto fresh = nn::lenet5<float, quant::noise_bits>({.seed = 2});
    CHECK_THROWS_WITH_AS(train::load_checkpoint(file.path, fresh),
                         Contains("'fc2.logit' value 0 is 40.000000, not a logit in [-10, 10]"),
                         format_error);
  }
  SUBCASE("a bitwidth of 0.5 or 40") {
    for (float b : {0.5f, 40.0f}) {
      auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
      set_first(net, "fc2.bits", b);
      train::save_checkpoint(file.path, net, {});
      CHECK_THROWS_WITH_AS(load_into_fresh(), Contains("not a bitwidth in [1, 16]"), format_error);
    }
  }
}

} // namespace test_misuse
