// Pointwise activations: relu (max(0, x)) and relu6 (min(6, max(0, x))), on tensors of any rank.
// Backward passes dy where the activation's slope is 1 (0 < x, and x < 6 for relu6), else 0.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/nn/layer.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace bitgrad::nn {

namespace detail {
struct relu_op {
  static constexpr const char* kind = "relu";
  template <class T>
  static void fprop(std::size_t n, const T* x, T* y) {
    relu_fprop(n, x, y);
  }
  template <class T>
  static void bprop(std::size_t n, const T* x, const T* dy, T* dx) {
    relu_bprop(n, x, dy, dx);
  }
};
struct relu6_op {
  static constexpr const char* kind = "relu6";
  template <class T>
  static void fprop(std::size_t n, const T* x, T* y) {
    relu6_fprop(n, x, y);
  }
  template <class T>
  static void bprop(std::size_t n, const T* x, const T* dy, T* dx) {
    relu6_bprop(n, x, dy, dx);
  }
};
} // namespace detail

/// A parameter-free pointwise layer y = Op(x) on rank-Rank tensors.
template <class T, std::size_t Rank, class Op>
class pointwise {
public:
  using value_type = T;
  using input_type = tensor<T, Rank>;
  using output_type = tensor<T, Rank>;

  explicit pointwise(std::string name = Op::kind) : name_(std::move(name)) {}

  const output_type& forward(const input_type& x) {
    ensure_shape(y_, x.shape());
    Op::fprop(x.size(), x.data(), y_.data());
    x_ = &x;
    fused_ = false;
    return y_;
  }
  /// The ReLU already applied by the layer before (its forward_relu, nn/sequential.hpp: fused
  /// epilogues): returns y itself, and until the next forward() backward returns dy itself (that
  /// layer masks it). relu only: relu6 does not fuse.
  const output_type&
  forward_fused(const input_type& y) requires std::is_same_v<Op, detail::relu_op> {
    x_ = &y;
    fused_ = true;
    return y;
  }
  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    check_same_shape(dy);
    if (fused_) return dy;
    ensure_shape(dx_, x_->shape());
    Op::bprop(dy.size(), x_->data(), dy.data(), dx_.data());
    return dx_;
  }

  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  /// Dimension 1 passes through (nn/layer.hpp).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const { return in; }
  std::string describe() const { return Op::kind; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

private:
  void check_same_shape(const output_type& dy) const {
    std::array<std::size_t, Rank> want{};
    for (std::size_t i = 0; i < Rank; ++i) want[i] = x_->shape()[i];
    check_shape(name_, "output gradient", dy.shape(), want);
  }

  std::string name_;
  bool training_ = true;
  bool fused_ = false; ///< the last forward was forward_fused
  output_type y_;
  input_type dx_;
  const input_type* x_ = nullptr;
};

/// y = max(0, x).
template <class T, std::size_t Rank>
using relu = pointwise<T, Rank, detail::relu_op>;

/// y = min(6, max(0, x)).
template <class T, std::size_t Rank>
using relu6 = pointwise<T, Rank, detail::relu6_op>;

static_assert(layer<relu<float, 2>>);
static_assert(layer<relu6<float, 4>>);

} // namespace bitgrad::nn
