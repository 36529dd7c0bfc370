// residual: y = block(x) + shortcut(x), the skip connection of ResNets.
//
// Block and Shortcut take the same input_type and give the same output_type; the shortcut is
// identity<T, Rank> when shapes agree, or a projection (e.g. sequential(conv 1x1 stride 2, bn)).
// Backward: dx = block.backward(dy) + shortcut.backward(dy). forward_relu (used by nn::sequential
// when an nn::relu follows, as after every ResNet block) gives relu(block(x) + shortcut(x)) in
// the same pass over the sum, and backward masks dy by y > 0 first (the relu's own passes go).
// When the block ends in a layer that can add (its forward_add_relu: a sequential ending in a
// batch_norm, as every ResNet block), forward_relu runs the block's layers, then the shortcut,
// then the last layer's normalisation with the sum and the ReLU in the same pass: bn's output
// is neither written nor read again (the same bits).
// Names are prefixed with the residual's name ("layer2.0" -> "layer2.0.conv1.weight",
// "layer2.0.shortcut.0.weight"). At construction, where nn/layer.hpp's optional feature counts are
// known, the block and the shortcut must take the same input features and give the same output
// features (e.g. an identity shortcut around a block that changes the channel count throws
// shape_error).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/simd.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/visit.hpp>

#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace bitgrad::nn {

template <layer Block, layer Shortcut>
requires std::same_as<typename Block::input_type, typename Shortcut::input_type> &&
    std::same_as<typename Block::output_type, typename Shortcut::output_type>
class residual {
public:
  using value_type = typename Block::value_type;
  using input_type = typename Block::input_type;
  using output_type = typename Block::output_type;

  /// Throws shape_error when block and shortcut are known not to agree (see above).
  residual(std::string name, Block block, Shortcut shortcut)
      : name_(std::move(name)), block_(std::move(block)), shortcut_(std::move(shortcut)) {
    output_features(input_features());
  }

  const output_type& forward(const input_type& x) { return run_forward(x, false); }
  /// relu(forward(x)) in the same pass over the sum, for a following nn::relu (nn/sequential.hpp:
  /// fused epilogues); backward then masks dy by y > 0 itself. The same bits as forward, relu.
  const output_type& forward_relu(const input_type& x) { return run_forward(x, true); }
  const input_type& backward(const output_type& dy) {
    const output_type* g = &dy;
    if (relu_) { // the following relu's backward, folded in
      ensure_shape(dmask_, dy.shape());
      relu_bprop(dy.size(), out_->data(), dy.data(), dmask_.data());
      g = &dmask_;
    }
    const input_type& da = block_.backward(*g);
    const input_type& db = shortcut_.backward(*g);
    if (da.shape() != db.shape())
      throw shape_error(who() + ": block input gradient " + shape_string(da.shape()) +
                        " and shortcut input gradient " + shape_string(db.shape()) + " differ");
    // dx = da + db in one pass (both stay valid: each lives in its own layer until its next
    // backward); the same single addition per element as copying da and adding db.
    ensure_shape(dx_, da.shape());
    add(da.size(), da.data(), db.data(), dx_.data());
    return dx_;
  }

  void zero_grad() {
    block_.zero_grad();
    shortcut_.zero_grad();
  }
  void train(bool on) {
    training_ = on;
    block_.train(on);
    shortcut_.train(on);
  }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&& f) {
    auto named = [&](param_ref<value_type>& p) { visit_prefixed(name_, p, f); };
    block_.visit_parameters(named);
    shortcut_.visit_parameters(named);
  }
  template <class F>
  void visit_quantizers(F&& f) {
    auto named = [&](std::string_view layer_name, auto& q) {
      f(std::string_view(join_name(name_, layer_name)), q);
    };
    block_.visit_quantizers(named);
    shortcut_.visit_quantizers(named);
  }
  template <class F>
  void visit_layers(F& f, std::string_view prefix) {
    const std::string mine = join_name(prefix, name_);
    nn::visit_layers(block_, f, mine);
    nn::visit_layers(shortcut_, f, mine);
  }

  /// The block's requirement, else the shortcut's; throws shape_error when they differ.
  std::optional<std::size_t> input_features() const {
    const std::optional<std::size_t> a = input_features_of(block_);
    const std::optional<std::size_t> b = input_features_of(shortcut_);
    if (a && b && *a != *b)
      throw shape_error(who() + ": block expects " + std::to_string(*a) + " input " +
                        feature_word<Block>() + ", shortcut expects " + std::to_string(*b));
    return a ? a : b;
  }
  /// Block and shortcut output features for input features `in`; throws shape_error when they
  /// differ (or when either one's own chain does not fit `in`).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const {
    std::optional<std::size_t> a, b;
    try {
      a = output_features_of(block_, in);
    } catch (const shape_error& e) {
      throw shape_error(who() + ": block: " + e.what());
    }
    try {
      b = output_features_of(shortcut_, in);
    } catch (const shape_error& e) {
      throw shape_error(who() + ": shortcut: " + e.what());
    }
    if (a && b && *a != *b)
      throw shape_error(who() + ": block gives " + std::to_string(*a) + " output " +
                        feature_word<Block>() + ", shortcut (" + layer_label(shortcut_) +
                        ") gives " + std::to_string(*b));
    return a ? a : b;
  }

  std::string describe() const { return "residual"; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  Block& block() { return block_; }
  const Block& block() const { return block_; }
  Shortcut& shortcut() { return shortcut_; }
  const Shortcut& shortcut() const { return shortcut_; }

private:
  /// y[i] = a[i] + b[i], one addition per element (forward without ReLU, backward).
  static void add(std::size_t n, const value_type* a, const value_type* b, value_type* y) {
    using B = simd_batch<value_type>;
    bitgrad::detail::elementwise_loop<value_type>(
        n,
        [&](std::size_t i) {
          (B::load_unaligned(a + i) + B::load_unaligned(b + i)).store_unaligned(y + i);
        },
        [&](std::size_t i) { y[i] = a[i] + b[i]; });
  }

  /// y = a + b, then y = (y <= 0 ? 0 : y) (relu_fprop's formula) when relu.
  const output_type& run_forward(const input_type& x, bool relu) {
    if constexpr (add_relu_fusable<Block>) {
      if (relu) { // the sum and the ReLU in the block's last pass (see the top)
        const output_type& y = block_.forward_add_relu(
            x, [&]() -> const output_type& { return shortcut_.forward(x); });
        out_ = &y;
        relu_ = true;
        return y;
      }
    }
    const output_type& a = block_.forward(x);
    const output_type& b = shortcut_.forward(x);
    if (a.shape() != b.shape())
      throw shape_error((name_.empty() ? std::string("residual") : name_) + ": block output " +
                        shape_string(a.shape()) + " and shortcut output " +
                        shape_string(b.shape()) + " differ");
    ensure_shape(y_, a.shape());
    const value_type* pa = a.data();
    const value_type* pb = b.data();
    value_type* py = y_.data();
    using T = value_type;
    using B = simd_batch<T>;
    if (relu)
      bitgrad::detail::elementwise_loop<T>(
          a.size(),
          [&](std::size_t i) {
            const B v = B::load_unaligned(pa + i) + B::load_unaligned(pb + i);
            xsimd::select(v <= B(T(0)), B(T(0)), v).store_unaligned(py + i);
          },
          [&](std::size_t i) {
            const T v = pa[i] + pb[i];
            py[i] = v <= T(0) ? T(0) : v;
          });
    else
      add(a.size(), pa, pb, py);
    relu_ = relu;
    out_ = &y_;
    return y_;
  }

  std::string who() const { return name_.empty() ? std::string("residual") : name_; }

  std::string name_;
  bool training_ = true;
  bool relu_ = false;                ///< the last forward was forward_relu: *out_ = relu(a + b)
  const output_type* out_ = nullptr; ///< the last forward's output: y_, or the block's own
  Block block_;
  Shortcut shortcut_;
  output_type y_, dmask_;
  input_type dx_;
};

} // namespace bitgrad::nn
