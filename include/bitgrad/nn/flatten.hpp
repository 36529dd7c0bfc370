// flatten: (N, C, H, W) -> (N, C*H*W), the bridge from convolutions to linear layers.
// Row-major storage makes this a plain copy; backward copies dy back into the input's shape.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>

namespace bitgrad::nn {

template <class T>
class flatten {
public:
  using value_type = T;
  using input_type = tensor4<T>;
  using output_type = tensor2<T>;

  explicit flatten(std::string name = "flatten") : name_(std::move(name)) {}

  const output_type& forward(const input_type& x) {
    const auto& s = x.shape();
    ensure_shape(y_, std::array<std::size_t, 2>{s[0], s[1] * s[2] * s[3]});
    std::copy(x.data(), x.data() + x.size(), y_.data());
    in_shape_ = {s[0], s[1], s[2], s[3]};
    seen_ = true;
    return y_;
  }
  const input_type& backward(const output_type& dy) {
    if (!seen_) throw config_error(name_ + ": backward called before forward");
    check_shape(
        name_, "output gradient", dy.shape(),
        std::array<std::size_t, 2>{in_shape_[0], in_shape_[1] * in_shape_[2] * in_shape_[3]});
    ensure_shape(dx_, in_shape_);
    std::copy(dy.data(), dy.data() + dy.size(), dx_.data());
    return dx_;
  }

  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  std::string describe() const { return "flatten"; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

private:
  std::string name_;
  bool training_ = true;
  bool seen_ = false;
  std::array<std::size_t, 4> in_shape_{};
  output_type y_;
  input_type dx_;
};

static_assert(layer<flatten<float>>);

} // namespace bitgrad::nn
