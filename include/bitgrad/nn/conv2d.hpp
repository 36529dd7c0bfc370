// conv2d: a 2-D convolution layer whose weights go through a quantizer.
//
//   x  : (N, in_channels, H, W)
//   W  : (out_channels, in_channels / groups, kernel, kernel), channel-major (one filter per
//        output channel, the quantizer's "channel")
//   b  : (out_channels)
//   y  : (N, out_channels, out_h, out_w), out = (in + 2*pad - dilation*(kernel-1) - 1)/stride + 1
//
// Forward: wq = Q(W) (skipped for the identity quantizer), then the conv kernel with the bias
// (and, with fuse_relu, the ReLU) fused in. Backward: dx by conv2d_dgrad, dwq and db by
// conv2d_wgrad, then the quantizer turns dwq into dW and its own parameter gradients (the
// weight and its quantizer are one member, nn/quantized_weight.hpp).
// With fuse_relu the layer is relu(conv(x)): dy is first masked where y == 0.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/nn/init.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/quantized_weight.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace bitgrad::nn {

/// What a conv2d layer is built from (square kernels, strides, paddings and dilations).
struct conv2d_options {
  std::size_t in_channels = 0;
  std::size_t out_channels = 0;
  std::size_t kernel = 3;
  std::size_t stride = 1;
  std::size_t padding = 0;
  std::size_t dilation = 1;
  std::size_t groups = 1;
  bool bias = true;
  bool fuse_relu = false;      ///< y = relu(conv(x) + b) in one pass
  std::uint64_t seed = 0;      ///< seeds the Kaiming-uniform initialisation
  std::string name = "conv2d"; ///< used in messages and parameter names
  /// false: backward() skips dL/dx (returns zeros), as for a network's first layer, whose input
  /// is the data: there dgrad is pure cost (10 % of a LeNet-5 training step). See set_input_grad.
  bool input_grad = true;
};

/// T: element type. Quant: the weight quantizer policy (quant::no_quant for FP32).
template <class T, template <class> class Quant = quant::no_quant>
class conv2d {
public:
  using value_type = T;
  using input_type = tensor4<T>;
  using output_type = tensor4<T>;
  using quantizer_type = Quant<T>;
  static_assert(quant::quantizer<quantizer_type>);

  explicit conv2d(const conv2d_options& opt, const typename quantizer_type::options& qopt = {})
      : name_(opt.name), opt_(opt), qw_(weight_shape(opt), qopt) {
    const std::size_t per_channel = nominal_geometry(opt).filter_size();
    bias_ = xt::zeros<T>({opt.out_channels});
    grad_bias_ = xt::zeros<T>({opt.out_channels});
    std::mt19937_64 rng(opt.seed);
    const T bound = kaiming_uniform_bound<T>(per_channel);
    fill_uniform(qw_.weight().data(), qw_.weight().size(), bound, rng);
    if (opt.bias) fill_uniform(bias_.data(), bias_.size(), bound, rng);
    qw_.bind(name_, opt.out_channels, per_channel);
  }

  const output_type& forward(const input_type& x) { return run_forward(x, opt_.fuse_relu); }

  /// y = relu(conv(x) + b) in one pass whatever fuse_relu says: until the next forward(),
  /// backward() takes dL/d(relu output) and masks it by y > 0 itself. nn::sequential calls this
  /// for a conv2d followed by nn::relu (nn/sequential.hpp: fused epilogues); the bits are those
  /// of forward() then relu.
  const output_type& forward_relu(const input_type& x) { return run_forward(x, true); }

  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    check_shape(
        name_, "output gradient", dy.shape(),
        std::array<std::size_t, 4>{geo_.batch, geo_.out_channels, geo_.out_h(), geo_.out_w()});
    const T* g = dy.data();
    if (relu_) {
      ensure_shape(dy_masked_, dy.shape());
      relu_bprop(dy.size(), y_.data(), g, dy_masked_.data());
      g = dy_masked_.data();
    }
    if (opt_.input_grad) {
      ensure_shape(dx_, x_->shape());
      conv2d_dgrad(geo_, g, qw_.used(), dx_.data(), scratch_);
    } else if (!same_shape(dx_, x_->shape())) {
      dx_ = xt::zeros<T>(x_->shape());
    }
    T* db = opt_.bias ? grad_bias_.data() : nullptr;
    // conv2d_wgrad accumulates: into dW for the identity, into a zeroed dwq otherwise.
    conv2d_wgrad(geo_, x_->data(), g, qw_.wgrad_target_for(true).data, db, scratch_);
    qw_.wgrad_done();
    return dx_;
  }

  void zero_grad() {
    qw_.zero_grad();
    grad_bias_.fill(T(0));
  }
  void train(bool on) { qw_.train(on); }
  /// Whether backward() computes dL/dx (conv2d_options::input_grad). A trainer turns it off on
  /// the first layer: net.get<0>().set_input_grad(false).
  void set_input_grad(bool on) { opt_.input_grad = on; }
  bool input_grad() const { return opt_.input_grad; }
  bool training() const { return qw_.training(); }

  template <class F>
  void visit_parameters(F&& f) {
    qw_.visit_weight(name_, f);
    if (opt_.bias)
      visit_prefixed(
          name_,
          param_ref<T>{"bias", bias_.data(), grad_bias_.data(), bias_.size(), param_kind::bias}, f);
    qw_.visit_quantizer_parameters(name_, f);
  }
  template <class F>
  void visit_quantizers(F&& f) {
    qw_.visit_quantizers(name_, f);
  }

  /// in_channels in, out_channels out (nn/layer.hpp).
  std::optional<std::size_t> input_features() const { return opt_.in_channels; }
  std::optional<std::size_t> output_features(std::optional<std::size_t>) const {
    return opt_.out_channels;
  }

  std::string describe() const {
    std::string d = "conv2d " + std::to_string(opt_.in_channels) + "->" +
                    std::to_string(opt_.out_channels) + " " + std::to_string(opt_.kernel) + "x" +
                    std::to_string(opt_.kernel);
    if (opt_.stride != 1) d += " stride " + std::to_string(opt_.stride);
    if (opt_.padding != 0) d += " pad " + std::to_string(opt_.padding);
    if (opt_.dilation != 1) d += " dilation " + std::to_string(opt_.dilation);
    if (opt_.groups != 1) d += " groups " + std::to_string(opt_.groups);
    if (!opt_.bias) d += " no-bias";
    if (opt_.fuse_relu) d += " +relu";
    return d + " " + quantizer_type::policy_name;
  }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  const conv2d_options& options() const { return opt_; }
  bool has_bias() const { return opt_.bias; }
  /// Turns the bias on (initialised to 0), e.g. before folding a batch norm into this layer.
  void enable_bias() {
    if (!opt_.bias) bias_.fill(T(0));
    opt_.bias = true;
  }
  tensor4<T>& weight() { return qw_.weight(); }
  const tensor4<T>& weight() const { return qw_.weight(); }
  tensor1<T>& bias() { return bias_; }
  const tensor1<T>& bias() const { return bias_; }
  const tensor4<T>& weight_grad() const { return qw_.weight_grad(); }
  const tensor1<T>& bias_grad() const { return grad_bias_; }
  quantizer_type& quantizer() { return qw_.quantizer(); }
  const quantizer_type& quantizer() const { return qw_.quantizer(); }

private:
  const output_type& run_forward(const input_type& x, bool relu) {
    const auto& s = x.shape();
    if (s[1] != opt_.in_channels)
      throw shape_error(name_ + ": expected input of shape (0, " +
                        std::to_string(opt_.in_channels) + ", 0, 0) (0 = any), got " +
                        shape_string(s));
    geo_ = geometry_for(opt_, s[0], s[2], s[3]);
    if (s[0] == 0 || geo_.extent_h() > s[2] + 2 * opt_.padding ||
        geo_.extent_w() > s[3] + 2 * opt_.padding)
      throw shape_error(name_ + ": input of shape " + shape_string(s) + " is too small for a " +
                        std::to_string(opt_.kernel) + "x" + std::to_string(opt_.kernel) +
                        " kernel with padding " + std::to_string(opt_.padding));
    ensure_shape(y_,
                 std::array<std::size_t, 4>{s[0], opt_.out_channels, geo_.out_h(), geo_.out_w()});
    const T* w = qw_.forward();
    const T* b = opt_.bias ? bias_.data() : nullptr;
    if (relu)
      conv2d_fprop_relu(geo_, x.data(), w, b, y_.data(), scratch_);
    else
      conv2d_fprop(geo_, x.data(), w, b, y_.data(), scratch_);
    relu_ = relu;
    x_ = &x;
    return y_;
  }

  static bool same_shape(const input_type& t, const typename input_type::shape_type& s) {
    return std::equal(s.begin(), s.end(), t.shape().begin(), t.shape().end());
  }
  static conv2d_geometry geometry_for(const conv2d_options& o, std::size_t batch, std::size_t h,
                                      std::size_t w) {
    conv2d_geometry g;
    g.batch = batch;
    g.in_channels = o.in_channels;
    g.in_h = h;
    g.in_w = w;
    g.out_channels = o.out_channels;
    g.kernel_h = g.kernel_w = o.kernel;
    g.stride_h = g.stride_w = o.stride;
    g.pad_h = g.pad_w = o.padding;
    g.dilation_h = g.dilation_w = o.dilation;
    g.groups = o.groups;
    return g;
  }
  /// The fixed part of the geometry, validated on a nominal input large enough for the kernel;
  /// config_error naming the layer otherwise.
  static conv2d_geometry nominal_geometry(const conv2d_options& o) {
    const std::size_t side = o.dilation * (o.kernel - (o.kernel > 0)) + 1;
    conv2d_geometry g = geometry_for(o, 1, side, side);
    try {
      g.validate();
    } catch (const config_error& e) {
      throw config_error(o.name + ": " + e.what());
    }
    return g;
  }
  /// (out_channels, in_channels / groups, kernel, kernel), once the geometry is valid.
  static typename tensor4<T>::shape_type weight_shape(const conv2d_options& o) {
    (void)nominal_geometry(o);
    return {o.out_channels, o.in_channels / o.groups, o.kernel, o.kernel};
  }

  std::string name_;
  conv2d_options opt_;
  quantized_weight<tensor4<T>, quantizer_type> qw_;
  tensor1<T> bias_, grad_bias_;
  conv2d_geometry geo_{};
  std::vector<T> scratch_;
  output_type y_, dy_masked_;
  input_type dx_;
  bool relu_ = false; ///< the last forward applied the ReLU (fuse_relu or forward_relu)
  const input_type* x_ = nullptr;
};

static_assert(layer<conv2d<float>>);
static_assert(quantized_layer<conv2d<float>>);

} // namespace bitgrad::nn
