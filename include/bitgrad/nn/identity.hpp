// identity: y = x. The shortcut of a residual block whose input and output shapes agree.
// forward returns x itself and backward returns dy itself (no copy).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>

#include <cstddef>
#include <optional>
#include <string>

namespace bitgrad::nn {

template <class T, std::size_t Rank>
class identity {
public:
  using value_type = T;
  using input_type = tensor<T, Rank>;
  using output_type = tensor<T, Rank>;

  explicit identity(std::string name = "identity") : name_(std::move(name)) {}

  const output_type& forward(const input_type& x) { return x; }
  const input_type& backward(const output_type& dy) { return dy; }
  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  /// Dimension 1 passes through (nn/layer.hpp).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const { return in; }
  std::string describe() const { return "identity"; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

private:
  std::string name_;
  bool training_ = true;
};

static_assert(layer<identity<float, 4>>);

} // namespace bitgrad::nn
