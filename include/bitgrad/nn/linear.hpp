// linear: y = x W^T + b, a fully connected layer whose weights go through a quantizer.
//
//   x  : (N, in_features)
//   W  : (out_features, in_features), channel-major: row o is output channel o
//   b  : (out_features)
//   y  : (N, out_features)
//
// Forward: wq = Q(W) (skipped when Q is the identity: W is used directly), then one GEMM with
// the bias fused in its epilogue. Backward: dx = dy wq, dwq = dy^T x, db = column sums of dy,
// then the quantizer turns dwq into dW (and its own parameter gradients): the weight and its
// quantizer are one member, nn/quantized_weight.hpp.
// forward_relu fuses a following ReLU: y = max(0, x W^T + b) in the epilogue, and backward
// then starts from dy * (y > 0).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/nn/init.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/quantized_weight.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>

namespace bitgrad::nn {

/// What a linear layer is built from (designated initialisers read well:
/// `{.in_features = 256, .out_features = 120, .seed = 1, .name = "fc1"}`).
struct linear_options {
  std::size_t in_features = 0;
  std::size_t out_features = 0;
  bool bias = true;
  std::uint64_t seed = 0;      ///< seeds the Kaiming-uniform initialisation
  std::string name = "linear"; ///< used in messages and parameter names
};

/// T: element type. Quant: the weight quantizer policy (quant::no_quant for FP32).
template <class T, template <class> class Quant = quant::no_quant>
class linear {
public:
  using value_type = T;
  using input_type = tensor2<T>;
  using output_type = tensor2<T>;
  using quantizer_type = Quant<T>;
  static_assert(quant::quantizer<quantizer_type>);

  explicit linear(const linear_options& opt, const typename quantizer_type::options& qopt = {})
      : name_(opt.name), in_(opt.in_features), out_(opt.out_features), has_bias_(opt.bias),
        qw_(checked_shape(opt), qopt) {
    bias_ = xt::zeros<T>({out_});
    grad_bias_ = xt::zeros<T>({out_});
    std::mt19937_64 rng(opt.seed);
    const T bound = kaiming_uniform_bound<T>(in_);
    fill_uniform(qw_.weight().data(), qw_.weight().size(), bound, rng);
    if (has_bias_) fill_uniform(bias_.data(), bias_.size(), bound, rng);
    qw_.bind(name_, out_, in_);
  }

  const output_type& forward(const input_type& x) { return run_forward(x, false); }

  /// y = max(0, x W^T + b) in one pass: the ReLU in the GEMM's epilogue. Until the next
  /// forward(), backward() takes dL/d(relu output) and masks it by y > 0 itself. nn::sequential
  /// calls this for a linear followed by nn::relu (nn/sequential.hpp: fused epilogues); the
  /// bits are those of forward() then relu.
  const output_type& forward_relu(const input_type& x) { return run_forward(x, true); }

  /// A tensor of another rank than (N, features): a compile-time error (see nn/layer.hpp).
  template <class X>
  requires tensor_of_other_rank<X, input_type>
  const output_type& forward(const X& x) {
    static_assert(always_false<X>,
                  "linear::forward: a linear layer takes (N, features), not image batches "
                  "(N, C, H, W): put nn::flatten in front of it");
    (void)x;
    throw shape_error("forward: input of another rank"); // never compiled
  }

  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    const std::size_t n = x_->shape()[0];
    check_shape(name_, "output gradient", dy.shape(), std::array<std::size_t, 2>{n, out_});
    ensure_shape(dx_, x_->shape());
    const T* g = dy.data();
    if (relu_) { // the fused ReLU's backward: dy * (y > 0)
      ensure_shape(dy_masked_, dy.shape());
      relu_bprop(dy.size(), y_.data(), g, dy_masked_.data());
      g = dy_masked_.data();
    }
    // dx = dy * wq : (n x out) (out x in)
    gemm(transpose::no, transpose::no, n, in_, out_, T(1), g, out_, qw_.used(), in_, T(0),
         dx_.data(), in_);
    // dwq = dy^T x : (out x n) (n x in), then dW from it
    const auto dwq = qw_.wgrad_target_for(false);
    gemm(transpose::yes, transpose::no, out_, in_, n, T(1), g, out_, x_->data(), in_, dwq.beta,
         dwq.data, in_);
    qw_.wgrad_done();
    if (has_bias_) bias_grad_rows(n, out_, g, grad_bias_.data()); // db += column sums
    return dx_;
  }

  void zero_grad() {
    qw_.zero_grad();
    grad_bias_.fill(T(0));
  }
  void train(bool on) { qw_.train(on); }
  bool training() const { return qw_.training(); }

  template <class F>
  void visit_parameters(F&& f) {
    qw_.visit_weight(name_, f);
    if (has_bias_)
      visit_prefixed(
          name_,
          param_ref<T>{"bias", bias_.data(), grad_bias_.data(), bias_.size(), param_kind::bias}, f);
    qw_.visit_quantizer_parameters(name_, f);
  }
  template <class F>
  void visit_quantizers(F&& f) {
    qw_.visit_quantizers(name_, f);
  }

  /// in_features in, out_features out (nn/layer.hpp).
  std::optional<std::size_t> input_features() const { return in_; }
  std::optional<std::size_t> output_features(std::optional<std::size_t>) const { return out_; }

  std::string describe() const {
    return "linear " + std::to_string(in_) + "->" + std::to_string(out_) +
           (has_bias_ ? "" : " no-bias") + " " + quantizer_type::policy_name;
  }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }
  bool has_bias() const { return has_bias_; }
  /// Turns the bias on (initialised to 0), e.g. before folding a batch norm into this layer.
  void enable_bias() {
    if (!has_bias_) bias_.fill(T(0));
    has_bias_ = true;
  }
  tensor2<T>& weight() { return qw_.weight(); }
  const tensor2<T>& weight() const { return qw_.weight(); }
  tensor1<T>& bias() { return bias_; }
  const tensor1<T>& bias() const { return bias_; }
  const tensor2<T>& weight_grad() const { return qw_.weight_grad(); }
  const tensor1<T>& bias_grad() const { return grad_bias_; }
  quantizer_type& quantizer() { return qw_.quantizer(); }
  const quantizer_type& quantizer() const { return qw_.quantizer(); }

private:
  const output_type& run_forward(const input_type& x, bool relu) {
    check_shape(name_, "input", x.shape(), std::array<std::size_t, 2>{0, in_});
    const std::size_t n = x.shape()[0];
    ensure_shape(y_, std::array<std::size_t, 2>{n, out_});
    const T* w = qw_.forward();
    auto run = [&](const auto& ep) {
      gemm(transpose::no, transpose::yes, n, out_, in_, T(1), x.data(), in_, w, in_, T(0),
           y_.data(), out_, ep);
    };
    if (has_bias_ && relu)
      run(epilogue::bias_cols_relu<T>{bias_.data()});
    else if (has_bias_)
      run(epilogue::bias_cols<T>{bias_.data()});
    else if (relu)
      run(epilogue::relu{});
    else
      run(epilogue::identity{});
    relu_ = relu;
    x_ = &x;
    return y_;
  }

  /// (out_features, in_features); config_error naming the layer when either is 0.
  static typename tensor2<T>::shape_type checked_shape(const linear_options& opt) {
    if (opt.in_features == 0 || opt.out_features == 0)
      throw config_error(opt.name + ": in_features and out_features must be >= 1, got " +
                         std::to_string(opt.in_features) + " and " +
                         std::to_string(opt.out_features));
    return {opt.out_features, opt.in_features};
  }

  std::string name_;
  std::size_t in_, out_;
  bool has_bias_;
  quantized_weight<tensor2<T>, quantizer_type> qw_;
  tensor1<T> bias_, grad_bias_;
  output_type y_ = output_type::from_shape({0, 0});
  output_type dy_masked_ = output_type::from_shape({0, 0});
  bool relu_ = false; ///< the last forward was forward_relu
  input_type dx_ = input_type::from_shape({0, 0});
  const input_type* x_ = nullptr;
};

static_assert(layer<linear<float>>);
static_assert(quantized_layer<linear<float>>);

} // namespace bitgrad::nn
