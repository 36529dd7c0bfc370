// batch_norm: per-channel normalisation with a learned affine map, as PyTorch's BatchNorm1d
// (Rank 2: x is (N, F), one channel per feature) and BatchNorm2d (Rank 4: x is (N, C, H, W)).
//
//   training:  mean, var = batch statistics of each channel (var biased, divisor m = N*H*W)
//              y = gamma * (x - mean) / sqrt(var + eps) + beta
//              running_mean = (1 - momentum) * running_mean + momentum * mean
//              running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
//   eval:      the same with running_mean and running_var in place of the batch statistics.
// gamma (init 1) and beta (init 0) are parameters of kind norm; the running statistics are
// buffers (not trained). The arithmetic is in kernels/batch_norm.hpp (with the batch
// statistics from kernels/elementwise.hpp: channel_mean_var). The layer keeps a pointer to x
// (nn/layer.hpp allows it) instead of storing xhat = (x - mean) inv_std: backward recomputes xhat
// from x with the forward's formula (the same bits), so the forward writes y alone. fold_batch_norm
// rewrites a preceding conv2d or linear so that it computes bn(layer(x)) of the eval mode by
// itself.
//
// Synchronised statistics (SyncBatchNorm; data-parallel training, set_sync): in training the
// mean and variance are those of the global batch, the union of every process's slice
// (nn/batch_norm_sync.hpp; one sum over the processes of 2C + 1 doubles), and running_var takes
// the global M / (M - 1). Backward: with w = m_r / M (this process's share of the values) and
// the local sums s = sum dy, h = sum dy xhat, one sum over the processes of 2C doubles gives
//   S = (sum_r w_r s_r) / w,  H = (sum_r w_r h_r) / w
// and dx = gamma inv_std / M (M dy - S - xhat H) (kernels/batch_norm.hpp: batch_norm_dgrad with
// count M): the global batch's gradient in this process's loss scale (its loss is the mean over
// its own images; the gradient reducer weighs it by w). dgamma and dbeta stay local sums, which
// the gradient reducer's weighted sum makes global. Every process must then run forward and
// backward in training together (they are collectives), each with at least one image.
// Without set_sync (the default) each process normalises with its own slice's statistics.
//
// forward_relu (used by nn::sequential for a batch_norm followed directly by nn::relu) writes
// relu(y) in the same pass; backward then masks dy by y > 0 inside the sums and dx, with or
// without set_sync (the local sums are of the masked dy): the relu layer's passes disappear.
// forward_add_relu (used by nn::residual for a block that ends in a batch_norm, when a relu
// follows the residual) writes relu(y + skip) in the same pass, the residual's sum and ReLU.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/batch_norm.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/nn/batch_norm_sync.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/linear.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace bitgrad::nn {

struct batch_norm_options {
  std::size_t features = 0; ///< channels (Rank 4) or features (Rank 2)
  double eps = 1e-5;
  double momentum = 0.1;
  std::string name = "bn";
};

template <class T, std::size_t Rank>
class batch_norm {
  static_assert(Rank == 2 || Rank == 4, "batch_norm: Rank 2 (N, F) or Rank 4 (N, C, H, W)");

public:
  using value_type = T;
  using input_type = tensor<T, Rank>;
  using output_type = tensor<T, Rank>;

  explicit batch_norm(const batch_norm_options& opt)
      : name_(opt.name), c_(opt.features), eps_(static_cast<T>(opt.eps)),
        momentum_(static_cast<T>(opt.momentum)) {
    if (c_ == 0) throw config_error(name_ + ": features must be >= 1");
    if (!(opt.eps > 0)) throw config_error(name_ + ": eps must be > 0");
    if (!(opt.momentum >= 0 && opt.momentum <= 1))
      throw config_error(name_ + ": momentum must be in [0, 1], got " +
                         std::to_string(opt.momentum));
    gamma_ = xt::ones<T>({c_});
    beta_ = xt::zeros<T>({c_});
    grad_gamma_ = xt::zeros<T>({c_});
    grad_beta_ = xt::zeros<T>({c_});
    running_mean_ = xt::zeros<T>({c_});
    running_var_ = xt::ones<T>({c_});
    mean_ = xt::zeros<T>({c_});
    var_ = xt::zeros<T>({c_});
    inv_std_ = xt::zeros<T>({c_});
  }

  const output_type& forward(const input_type& x) { return run_forward(x, false); }
  /// relu(forward(x)) in one pass, for a following nn::relu (nn/sequential.hpp: fused
  /// epilogues); backward then takes the gradient of the ReLU's output and folds its mask
  /// (y > 0) into the batch norm's sums and dx. The same bits as forward, then relu.
  const output_type& forward_relu(const input_type& x) { return run_forward(x, true); }
  /// relu(forward(x) + skip()) in one pass: skip() (called first) gives a tensor of the output's
  /// shape, the shortcut of a residual block that ends in this batch norm and whose sum a ReLU
  /// follows (nn/residual.hpp). backward stays forward's: it takes the gradient of bn(x), the
  /// sum's gradient that the residual masked by y > 0. The same bits as forward, the addition,
  /// then relu.
  template <class Skip>
  const output_type& forward_add_relu(const input_type& x, Skip&& skip) {
    const output_type& s = skip();
    if (s.shape() != x.shape())
      throw shape_error(name_ + ": output " + shape_string(x.shape()) + " and skip operand " +
                        shape_string(s.shape()) + " differ");
    return run_forward(x, false, s.data());
  }

  const input_type& backward(const output_type& dy) {
    if (!seen_) throw config_error(name_ + ": backward called before forward");
    std::array<std::size_t, Rank> want{};
    for (std::size_t i = 0; i < Rank; ++i) want[i] = y_.shape()[i];
    check_shape(name_, "output gradient", dy.shape(), want);
    ensure_shape(dx_, y_.shape());
    if (sync_ && batch_stats_) {
      sync_dgrad(dy.data());
      return dx_;
    }
    if (relu_)
      batch_norm_relu_bprop(n_, c_, plane_, dy.data(), xhat(), y_.data(), gamma_.data(),
                            inv_std_.data(), batch_stats_, dx_.data(), grad_gamma_.data(),
                            grad_beta_.data());
    else
      batch_norm_bprop(n_, c_, plane_, dy.data(), xhat(), gamma_.data(), inv_std_.data(),
                       batch_stats_, dx_.data(), grad_gamma_.data(), grad_beta_.data());
    return dx_;
  }

  /// Synchronised statistics (see the top): `sum` replaces a vector of doubles by its sum over
  /// the processes of the job, in place (collective); empty = per-process statistics.
  void set_sync(std::function<void(std::span<double>)> sum) { sync_ = std::move(sum); }
  bool synchronised() const { return static_cast<bool>(sync_); }

  void zero_grad() {
    grad_gamma_.fill(T(0));
    grad_beta_.fill(T(0));
  }
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&& f) {
    visit_prefixed(
        name_, param_ref<T>{"gamma", gamma_.data(), grad_gamma_.data(), c_, param_kind::norm}, f);
    visit_prefixed(name_,
                   param_ref<T>{"beta", beta_.data(), grad_beta_.data(), c_, param_kind::norm}, f);
  }
  template <class F>
  void visit_quantizers(F&&) {}
  /// features (channels) in and out (nn/layer.hpp).
  std::optional<std::size_t> input_features() const { return c_; }
  std::optional<std::size_t> output_features(std::optional<std::size_t>) const { return c_; }

  std::string describe() const {
    return std::string(Rank == 2 ? "batch_norm1d " : "batch_norm2d ") + std::to_string(c_);
  }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  std::size_t features() const { return c_; }
  T eps() const { return eps_; }
  T momentum() const { return momentum_; }
  tensor1<T>& gamma() { return gamma_; }
  const tensor1<T>& gamma() const { return gamma_; }
  tensor1<T>& beta() { return beta_; }
  const tensor1<T>& beta() const { return beta_; }
  tensor1<T>& running_mean() { return running_mean_; }
  const tensor1<T>& running_mean() const { return running_mean_; }
  tensor1<T>& running_var() { return running_var_; }
  const tensor1<T>& running_var() const { return running_var_; }

private:
  /// forward (relu = false) or forward_relu (relu = true); with skip (not null), the
  /// forward_add_relu: y = relu(bn(x) + skip), relu_ stays false (backward is forward's).
  const output_type& run_forward(const input_type& x, bool relu, const T* skip = nullptr) {
    std::array<std::size_t, Rank> want{};
    want[1] = c_;
    check_shape(name_, "input", x.shape(), want);
    const std::size_t n = x.shape()[0];
    const std::size_t plane = x.size() / (n == 0 ? 1 : n) / c_;
    const std::size_t count = n * plane;
    if (count == 0) throw shape_error(name_ + ": empty input " + shape_string(x.shape()));
    batch_stats_ = training_;
    ensure_shape(y_, x.shape());
    // xhat is not stored: backward recomputes it from x (xhat()).
    T* const no_xhat = nullptr;
    if (training_) {
      if (count < 2)
        throw shape_error(name_ + ": training needs more than one value per channel, got input " +
                          shape_string(x.shape()));
      if (sync_) {
        global_count_ = sync_moments(n, plane, x.data());
        normalize(x, relu, skip);
      } else {
        // The statistics and the normalisation channel by channel (the same bits as
        // channel_mean_var, then batch_norm_fprop).
        global_count_ = static_cast<double>(count);
        if (skip != nullptr)
          batch_norm_add_relu_train_fprop(n, c_, plane, x.data(), skip, eps_, gamma_.data(),
                                          beta_.data(), mean_.data(), var_.data(), inv_std_.data(),
                                          no_xhat, y_.data());
        else if (relu)
          batch_norm_relu_train_fprop(n, c_, plane, x.data(), eps_, gamma_.data(), beta_.data(),
                                      mean_.data(), var_.data(), inv_std_.data(), no_xhat,
                                      y_.data());
        else
          batch_norm_train_fprop(n, c_, plane, x.data(), eps_, gamma_.data(), beta_.data(),
                                 mean_.data(), var_.data(), inv_std_.data(), no_xhat, y_.data());
      }
      const T m = static_cast<T>(global_count_);
      batch_norm_running_update(c_, momentum_, m / (m - T(1)), mean_.data(), var_.data(),
                                running_mean_.data(), running_var_.data());
    } else {
      mean_ = running_mean_;
      var_ = running_var_;
      normalize(x, relu, skip);
    }
    x_ = &x;
    n_ = n;
    plane_ = plane;
    relu_ = relu;
    seen_ = true;
    return y_;
  }

  /// y_ = bn(x) (relu(bn(x)) if relu, relu(bn(x) + skip) if skip) with mean_ and var_ as they
  /// are; xhat not stored.
  void normalize(const input_type& x, bool relu, const T* skip) {
    const std::size_t n = x.shape()[0], plane = x.size() / n / c_;
    T* const xhat = nullptr;
    if (skip != nullptr)
      batch_norm_add_relu_fprop(n, c_, plane, x.data(), skip, mean_.data(), var_.data(), eps_,
                                gamma_.data(), beta_.data(), inv_std_.data(), xhat, y_.data());
    else if (relu)
      batch_norm_relu_fprop(n, c_, plane, x.data(), mean_.data(), var_.data(), eps_, gamma_.data(),
                            beta_.data(), inv_std_.data(), xhat, y_.data());
    else
      batch_norm_fprop(n, c_, plane, x.data(), mean_.data(), var_.data(), eps_, gamma_.data(),
                       beta_.data(), inv_std_.data(), xhat, y_.data());
  }

  /// mean_, var_ of the global batch; returns M. Collective.
  double sync_moments(std::size_t n, std::size_t plane, const T* x) {
    std::vector<double> sums = channel_shifted_sums(n, c_, plane, x, running_mean_.data());
    sync_(std::span<double>(sums));
    const channel_moments m =
        moments_from_sums(std::span<const double>(sums), c_, running_mean_.data());
    if (m.count < 2)
      throw shape_error(name_ +
                        ": training needs more than one value per channel in the global "
                        "batch, got " +
                        std::to_string(m.count));
    for (std::size_t c = 0; c < c_; ++c) {
      mean_[c] = static_cast<T>(m.mean[c]);
      var_[c] = static_cast<T>(m.var[c]);
    }
    return m.count;
  }

  /// dx_ from the global batch's sums (see the top); dgamma, dbeta += the local sums.
  /// Collective.
  void sync_dgrad(const T* dy) {
    std::vector<T> local(2 * c_);
    if (relu_)
      batch_norm_relu_grad_sums(n_, c_, plane_, dy, xhat(), y_.data(), local.data(),
                                local.data() + c_);
    else
      batch_norm_grad_sums(n_, c_, plane_, dy, xhat(), local.data(), local.data() + c_);
    const double w = static_cast<double>(n_ * plane_) / global_count_;
    std::vector<double> global(2 * c_);
    for (std::size_t i = 0; i < global.size(); ++i) global[i] = w * static_cast<double>(local[i]);
    sync_(std::span<double>(global));
    std::vector<T> sums(2 * c_);
    for (std::size_t i = 0; i < sums.size(); ++i)
      sums[i] = w > 0 ? static_cast<T>(global[i] / w) : T(0);
    for (std::size_t c = 0; c < c_; ++c) {
      grad_beta_[c] += local[c];
      grad_gamma_[c] += local[c_ + c];
    }
    if (relu_)
      batch_norm_relu_dgrad(n_, c_, plane_, dy, xhat(), y_.data(), gamma_.data(), inv_std_.data(),
                            static_cast<T>(global_count_), sums.data(), sums.data() + c_, true,
                            dx_.data());
    else
      batch_norm_dgrad(n_, c_, plane_, dy, xhat(), gamma_.data(), inv_std_.data(),
                       static_cast<T>(global_count_), sums.data(), sums.data() + c_, true,
                       dx_.data());
  }

  /// xhat = (x - mean) inv_std of the last forward, recomputed by the backward kernels from the
  /// input (kept alive and unchanged until backward: nn/layer.hpp) with the forward's formula:
  /// the same bits as storing it, one store pass less in the forward.
  batch_norm_xhat<T> xhat() const {
    return {.xhat = nullptr, .x = x_->data(), .mean = mean_.data(), .inv_std = inv_std_.data()};
  }

  std::string name_;
  std::size_t c_;
  T eps_, momentum_;
  bool training_ = true;
  bool batch_stats_ = true;
  bool seen_ = false;
  bool relu_ = false; ///< the last forward was forward_relu: y_ is relu(bn(x)), dy masked by y_ > 0
  std::size_t n_ = 0, plane_ = 0;
  double global_count_ = 0; ///< M of the last training forward
  std::function<void(std::span<double>)> sync_;
  tensor1<T> gamma_, beta_, grad_gamma_, grad_beta_, running_mean_, running_var_;
  tensor1<T> mean_, var_, inv_std_;
  output_type y_;
  input_type dx_;
  const input_type* x_ = nullptr; ///< the last forward's input
};

static_assert(layer<batch_norm<float, 2>>);
static_assert(layer<batch_norm<float, 4>>);

namespace detail {
// Scales channel o of w (per_channel values) by gamma/sqrt(var+eps) and shifts the bias so that
// the layer alone computes the eval-mode bn(layer(x)).
template <class T, std::size_t Rank>
void fold_channels(const std::string& who, std::size_t channels, std::size_t per_channel, T* w,
                   T* b, const batch_norm<T, Rank>& bn) {
  if (bn.features() != channels)
    throw config_error("fold_batch_norm: " + bn.name() + " has " + std::to_string(bn.features()) +
                       " channels but " + who + " has " + std::to_string(channels));
  for (std::size_t o = 0; o < channels; ++o) {
    const T s = bn.gamma()[o] / std::sqrt(bn.running_var()[o] + bn.eps());
    for (std::size_t k = 0; k < per_channel; ++k) w[o * per_channel + k] *= s;
    b[o] = (b[o] - bn.running_mean()[o]) * s + bn.beta()[o];
  }
}
} // namespace detail

/// Rewrites conv's weights and bias (turning the bias on) so that conv(x) equals the eval-mode
/// bn(conv(x)) of before. The quantizer is not touched: fold FP32 weights, or re-bind the
/// quantizer afterwards (its scales were initialised from the old weights).
template <class T, template <class> class Quant>
void fold_batch_norm(conv2d<T, Quant>& conv, const batch_norm<T, 4>& bn) {
  if (conv.options().fuse_relu)
    throw config_error("fold_batch_norm: " + conv.name() +
                       " applies a fused ReLU before the batch norm; cannot fold");
  conv.enable_bias();
  const std::size_t out = conv.options().out_channels;
  detail::fold_channels(conv.name(), out, conv.weight().size() / out, conv.weight().data(),
                        conv.bias().data(), bn);
}

/// The same for a linear layer followed by a batch_norm<T, 2>.
template <class T, template <class> class Quant>
void fold_batch_norm(linear<T, Quant>& fc, const batch_norm<T, 2>& bn) {
  fc.enable_bias();
  detail::fold_channels(fc.name(), fc.out_features(), fc.in_features(), fc.weight().data(),
                        fc.bias().data(), bn);
}

} // namespace bitgrad::nn
