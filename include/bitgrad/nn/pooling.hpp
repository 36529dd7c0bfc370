// Pooling layers on NCHW tensors: max_pool2d, avg_pool2d (padding counts as zeros, PyTorch's
// count_include_pad), and global_avg_pool (N, C, H, W) -> (N, C).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/pool2d.hpp>
#include <bitgrad/nn/layer.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bitgrad::nn {

/// A square pooling window.
struct pool2d_options {
  std::size_t kernel = 2;
  std::size_t stride = 0; ///< 0: the kernel size (non-overlapping windows)
  std::size_t padding = 0;
  std::string name = "pool";
};

namespace detail {

struct max_pool_op {
  static constexpr const char* kind = "max_pool2d";
  template <class T>
  static void fprop(const pool2d_geometry& g, const T* x, T* y, std::vector<std::uint32_t>& arg) {
    arg.resize(g.output_count());
    max_pool2d_fprop(g, x, y, arg.data());
  }
  template <class T>
  static void bprop(const pool2d_geometry& g, const T* dy, const std::vector<std::uint32_t>& arg,
                    T* dx) {
    max_pool2d_bprop(g, dy, arg.data(), dx);
  }
};

struct avg_pool_op {
  static constexpr const char* kind = "avg_pool2d";
  template <class T>
  static void fprop(const pool2d_geometry& g, const T* x, T* y, std::vector<std::uint32_t>&) {
    avg_pool2d_fprop(g, x, y);
  }
  template <class T>
  static void bprop(const pool2d_geometry& g, const T* dy, const std::vector<std::uint32_t>&,
                    T* dx) {
    avg_pool2d_bprop(g, dy, dx);
  }
};

} // namespace detail

/// 2-D pooling with window Op (detail::max_pool_op or detail::avg_pool_op).
template <class T, class Op>
class pool2d {
public:
  using value_type = T;
  using input_type = tensor4<T>;
  using output_type = tensor4<T>;

  explicit pool2d(const pool2d_options& opt = {})
      : name_(opt.name), kernel_(opt.kernel), stride_(opt.stride == 0 ? opt.kernel : opt.stride),
        pad_(opt.padding) {
    if (kernel_ == 0) throw config_error(name_ + ": kernel must be >= 1");
    if (2 * pad_ > kernel_)
      throw config_error(name_ + ": padding " + std::to_string(pad_) +
                         " must be at most half the kernel " + std::to_string(kernel_));
  }

  const output_type& forward(const input_type& x) {
    const auto& s = x.shape();
    geo_ = pool2d_geometry{s[0], s[1], s[2], s[3], kernel_, kernel_, stride_, stride_, pad_, pad_};
    if (s[0] == 0 || s[1] == 0 || s[2] + 2 * pad_ < kernel_ || s[3] + 2 * pad_ < kernel_)
      throw shape_error(name_ + ": input of shape " + shape_string(s) + " is smaller than the " +
                        std::to_string(kernel_) + "x" + std::to_string(kernel_) + " window");
    ensure_shape(y_, std::array<std::size_t, 4>{s[0], s[1], geo_.out_h(), geo_.out_w()});
    Op::fprop(geo_, x.data(), y_.data(), argmax_);
    x_ = &x;
    return y_;
  }
  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    check_shape(name_, "output gradient", dy.shape(),
                std::array<std::size_t, 4>{geo_.batch, geo_.channels, geo_.out_h(), geo_.out_w()});
    ensure_shape(dx_, x_->shape());
    Op::bprop(geo_, dy.data(), argmax_, dx_.data());
    return dx_;
  }

  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  /// Pooling keeps the channels (nn/layer.hpp).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const { return in; }
  std::string describe() const {
    return std::string(Op::kind) + " " + std::to_string(kernel_) + "x" + std::to_string(kernel_) +
           " stride " + std::to_string(stride_) + (pad_ ? " pad " + std::to_string(pad_) : "");
  }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  /// The square window's side, step and padding (model export reads them).
  std::size_t kernel() const { return kernel_; }
  std::size_t stride() const { return stride_; }
  std::size_t padding() const { return pad_; }

private:
  std::string name_;
  std::size_t kernel_, stride_, pad_;
  bool training_ = true;
  pool2d_geometry geo_{};
  std::vector<std::uint32_t> argmax_;
  output_type y_;
  input_type dx_;
  const input_type* x_ = nullptr;
};

template <class T>
using max_pool2d = pool2d<T, detail::max_pool_op>;
template <class T>
using avg_pool2d = pool2d<T, detail::avg_pool_op>;

/// y[n][c] = mean of x[n][c] over its H x W plane: (N, C, H, W) -> (N, C).
template <class T>
class global_avg_pool {
public:
  using value_type = T;
  using input_type = tensor4<T>;
  using output_type = tensor2<T>;

  explicit global_avg_pool(std::string name = "global_avg_pool") : name_(std::move(name)) {}

  const output_type& forward(const input_type& x) {
    const auto& s = x.shape();
    if (s[2] * s[3] == 0)
      throw shape_error(name_ + ": input of shape " + shape_string(s) + " has an empty plane");
    ensure_shape(y_, std::array<std::size_t, 2>{s[0], s[1]});
    global_avg_pool_fprop(s[0], s[1], s[2] * s[3], x.data(), y_.data());
    x_ = &x;
    return y_;
  }
  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    const auto& s = x_->shape();
    check_shape(name_, "output gradient", dy.shape(), std::array<std::size_t, 2>{s[0], s[1]});
    ensure_shape(dx_, s);
    global_avg_pool_bprop(s[0], s[1], s[2] * s[3], dy.data(), dx_.data());
    return dx_;
  }

  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  /// (N, C, H, W) -> (N, C): the channels become the features (nn/layer.hpp).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const { return in; }
  std::string describe() const { return "global_avg_pool"; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

private:
  std::string name_;
  bool training_ = true;
  output_type y_;
  input_type dx_;
  const input_type* x_ = nullptr;
};

static_assert(layer<max_pool2d<float>>);
static_assert(layer<avg_pool2d<float>>);
static_assert(layer<global_avg_pool<float>>);

} // namespace bitgrad::nn
