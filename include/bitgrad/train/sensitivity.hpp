// Per-group sensitivity diagnostics of a network with frozen bitwidths: how much the loss grows
// when one channel group alone loses one bit, measured exactly and estimated cheaply, and how
// the learned bitwidths relate to it.
//
// Words
//   fixed batches  a set of labelled batches held constant across every evaluation
//                  (fixed_batches: the first `count` batches of a data set, in order).
//   loss           the mean softmax cross-entropy over every image of the fixed batches, with
//                  the network in eval mode (mean_loss).
//   sensitivity    of group g of a layer frozen at k_g bits:
//                    S_g = loss(that group alone at k_g - 1 bits) - loss(as frozen)
//                  measured by freeze_to(bits with k_g - 1), mean_loss, freeze_to(bits) again.
//                  A group at the policy's lowest bitwidth (Q::lowest_bits: 1, the sign grid;
//                  step_bits: 2) cannot lose a bit: its sensitivity is NaN. It may be
//                  negative (one bit less happened to help on these batches).
//   estimate       of S_g from gradients alone (one forward and backward per fixed batch, no
//                  per-group evaluation). With d_i = Q_{k-1}(w)_i - Q_k(w)_i over the group's
//                  weights, gbar the gradient of the loss in the weights, and
//                  F_i = sum_b (n_b / N) n_b g_{b,i}^2 the diagonal empirical Fisher estimated
//                  from the batch gradients g_b (n_b images in batch b, N in all; exact for
//                  batches of one image when gbar is small):
//                    first_order  |sum_i gbar_i d_i|
//                    fisher       1/2 sum_i F_i d_i^2
//                    taylor       sum_i gbar_i d_i + 1/2 sum_i F_i d_i^2     (the default)
//                  The weight gradient stands for dL/dQ: they are equal for max_abs scales at
//                  k >= 2 (nothing is clipped); with learned scales clipped weights lose their
//                  term. Use several small batches, since F comes from their spread.
//   spread         bits_max - bits_min of a layer's groups.
//   rank correlation  Spearman's rho (ties take their average rank) between a layer's bits and
//                  its sensitivities (exact when measured, else the estimate), groups with a
//                  NaN sensitivity left out. Note that a group frozen at more bits loses less
//                  when it drops one bit, so a good allocation does not imply a positive rho.
//
// Layers are the leaves that have quantizer() and weight() (linear, conv2d), in
// nn::visit_layers order, which is the order of visit_quantizers and of
// train::layer_summaries; fill_layer_summaries matches rows by name. Layers whose quantizer
// has no integer bitwidths (no_quant, is_identity) get empty vectors and NaN statistics. Every
// other quantizer must be frozen (config_error otherwise). The network is left as it was:
// bitwidths restored, mode restored, gradients zeroed.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/report/records.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::train {

/// One batch of inputs and its labels.
template <class X>
struct labelled_batch {
  X x;
  std::vector<std::int32_t> labels;
};

/// The first `count` batches of `batch_size` images of `data` in data-set order, normalised as
/// `normalise` says (no shuffle, no augmentation; the last batch may be smaller). Fewer when the
/// data set runs out.
template <class T>
std::vector<labelled_batch<tensor4<T>>> fixed_batches(const dataset& data,
                                                      const loader_options& normalise,
                                                      std::size_t batch_size, std::size_t count) {
  if (batch_size == 0) throw config_error("fixed_batches: batch size must be >= 1, got 0");
  loader_options opt = normalise;
  opt.batch_size = batch_size;
  opt.shuffle = false;
  opt.drop_last = false;
  opt.crop_padding = 0;
  opt.horizontal_flip = false;
  loader<T> batches(data, opt);
  std::vector<labelled_batch<tensor4<T>>> out;
  tensor4<T> x;
  std::vector<std::int32_t> y;
  while (out.size() < count && batches.next(x, y)) out.push_back({x, y});
  return out;
}

/// Ranks 1..n of v (ties share their average rank).
inline std::vector<double> average_ranks(std::span<const double> v) {
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double r = 0.5 * static_cast<double>(i + j) + 1.0; // mean of ranks i+1 .. j+1
    for (std::size_t t = i; t <= j; ++t) rank[order[t]] = r;
    i = j + 1;
  }
  return rank;
}

/// Spearman's rank correlation of a and b (same length): the Pearson correlation of their
/// average ranks, over the pairs where neither value is NaN. NaN when fewer than two pairs
/// remain or either side is constant.
inline double spearman(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size())
    throw config_error("spearman: expected two sequences of the same length, got " +
                       std::to_string(a.size()) + " and " + std::to_string(b.size()));
  std::vector<double> x, y;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!std::isnan(a[i]) && !std::isnan(b[i])) {
      x.push_back(a[i]);
      y.push_back(b[i]);
    }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (x.size() < 2) return nan;
  const auto rx = average_ranks(x), ry = average_ranks(y);
  const double mean = 0.5 * static_cast<double>(x.size() + 1);
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (rx[i] - mean) * (ry[i] - mean);
    sxx += (rx[i] - mean) * (rx[i] - mean);
    syy += (ry[i] - mean) * (ry[i] - mean);
  }
  if (sxx == 0 || syy == 0) return nan;
  return sxy / std::sqrt(sxx * syy);
}

/// The mean cross-entropy over every image of `batches`, in eval mode (mode restored).
template <class Net, class X>
double mean_loss(Net& net, const std::vector<labelled_batch<X>>& batches) {
  using T = typename Net::value_type;
  const bool was_training = net.training();
  net.train(false);
  nn::softmax_cross_entropy<T> loss;
  double sum = 0;
  std::size_t images = 0;
  for (const auto& b : batches) {
    sum += static_cast<double>(loss.forward(net.forward(b.x), b.labels)) *
           static_cast<double>(b.labels.size());
    images += b.labels.size();
  }
  net.train(was_training);
  if (images == 0) throw config_error("mean_loss: no images in the fixed batches");
  return sum / static_cast<double>(images);
}

enum class sensitivity_estimate { first_order, fisher, taylor };

inline const char* to_string(sensitivity_estimate e) {
  switch (e) {
  case sensitivity_estimate::first_order:
    return "first_order";
  case sensitivity_estimate::fisher:
    return "fisher";
  case sensitivity_estimate::taylor:
    return "taylor";
  }
  return "?";
}

struct sensitivity_options {
  bool exact = true; ///< measure S_g exactly (one evaluation of the fixed batches per group)
  sensitivity_estimate estimate = sensitivity_estimate::taylor;
};

/// The diagnostics of one quantized layer.
struct layer_sensitivity {
  std::string name;
  std::vector<double> bits;     ///< frozen bitwidth per group
  std::vector<double> exact;    ///< S_g (NaN at the lowest bitwidth); empty when not measured
  std::vector<double> estimate; ///< the cheap estimate of S_g (NaN at the lowest bitwidth)
  double bits_spread = std::numeric_limits<double>::quiet_NaN();
  double rank_correlation = std::numeric_limits<double>::quiet_NaN();     ///< bits vs S
  double estimate_correlation = std::numeric_limits<double>::quiet_NaN(); ///< exact vs estimate
  /// exact when measured, else the estimate.
  const std::vector<double>& sensitivity() const { return exact.empty() ? estimate : exact; }
};

struct sensitivity_report {
  double base_loss = std::numeric_limits<double>::quiet_NaN();
  sensitivity_estimate estimate_kind = sensitivity_estimate::taylor;
  std::vector<layer_sensitivity> layers;
  /// Spearman between exact and estimate over every group of every layer pooled.
  double estimate_correlation = std::numeric_limits<double>::quiet_NaN();
};

namespace detail {

/// f(name, layer, quantizer) for every leaf with quantizer() and weight(), in visiting order.
template <class Net, class F>
void visit_quantized_layers(Net& net, F&& f) {
  auto leaf = [&]<class L>(std::string_view name, L& layer) {
    if constexpr (nn::quantized_layer<L>) f(name, layer, layer.quantizer());
  };
  nn::visit_layers(net, leaf);
}

template <class Q>
std::vector<int> checked_bits(std::string_view name, const Q& q) {
  if (!q.frozen())
    throw config_error("sensitivity: the quantizer of " + std::string(name) +
                       " is not frozen; freeze the network first");
  return q.frozen_bits();
}

} // namespace detail

/// S_g for every group of every quantized layer (see the top of this file); empty vectors for
/// layers whose quantizer cannot take explicit bitwidths.
template <class Net, class X>
std::vector<std::vector<double>> exact_sensitivity(Net& net,
                                                   const std::vector<labelled_batch<X>>& batches) {
  const double base = mean_loss(net, batches);
  std::vector<std::vector<double>> out;
  detail::visit_quantized_layers(net, [&]<class Q>(std::string_view name, auto&, Q& q) {
    std::vector<double> s;
    if constexpr (!Q::is_identity) {
      const std::vector<int> bits = detail::checked_bits(name, q);
      s.assign(bits.size(), std::numeric_limits<double>::quiet_NaN());
      for (std::size_t g = 0; g < bits.size(); ++g) {
        if (bits[g] <= Q::lowest_bits) continue;
        std::vector<int> lower = bits;
        --lower[g];
        q.freeze_to(lower);
        s[g] = mean_loss(net, batches) - base;
        q.freeze_to(bits);
      }
    }
    out.push_back(std::move(s));
  });
  return out;
}

/// The cheap estimate of S_g for every group of every quantized layer (same layout as
/// exact_sensitivity's result).
template <class Net, class X>
std::vector<std::vector<double>>
estimated_sensitivity(Net& net, const std::vector<labelled_batch<X>>& batches,
                      sensitivity_estimate kind = sensitivity_estimate::taylor) {
  using T = typename Net::value_type;
  const bool was_training = net.training();
  net.train(false);
  std::size_t total = 0;
  for (const auto& b : batches) total += b.labels.size();
  if (total == 0) throw config_error("sensitivity: no images in the fixed batches");

  // Gradient moments per layer: gbar and F (see the top of this file).
  std::vector<std::vector<double>> gbar, fisher;
  nn::softmax_cross_entropy<T> loss;
  for (const auto& b : batches) {
    net.zero_grad();
    loss.forward(net.forward(b.x), b.labels);
    net.backward(loss.backward());
    const double nb = static_cast<double>(b.labels.size());
    const double weight = nb / static_cast<double>(total);
    std::size_t l = 0;
    detail::visit_quantized_layers(net, [&](std::string_view, auto& layer, auto&) {
      const T* g = layer.weight_grad().data();
      const std::size_t n = layer.weight().size();
      if (gbar.size() <= l) {
        gbar.emplace_back(n, 0.0);
        fisher.emplace_back(n, 0.0);
      }
      for (std::size_t i = 0; i < n; ++i) {
        const double gi = static_cast<double>(g[i]);
        gbar[l][i] += weight * gi;
        fisher[l][i] += weight * nb * gi * gi;
      }
      ++l;
    });
  }
  net.zero_grad();

  std::vector<std::vector<double>> out;
  std::size_t l = 0;
  detail::visit_quantized_layers(net, [&]<class Q>(std::string_view name, auto& layer, Q& q) {
    std::vector<double> s;
    if constexpr (!Q::is_identity) {
      const std::vector<int> bits = detail::checked_bits(name, q);
      const T* w = layer.weight().data();
      const std::size_t n = layer.weight().size();
      std::vector<T> qk(n), qlow(n);
      std::vector<int> lower = bits;
      for (int& k : lower) k = std::max(k - 1, Q::lowest_bits);
      q.forward(w, qk.data(), false);
      q.freeze_to(lower);
      q.forward(w, qlow.data(), false);
      q.freeze_to(bits);
      q.forward(w, qk.data(), false); // leave the quantizer's state at its own bitwidths
      s.assign(bits.size(), std::numeric_limits<double>::quiet_NaN());
      std::size_t off = 0;
      for (std::size_t g = 0; g < bits.size(); ++g) {
        const std::size_t cnt = q.group_weight_count(g);
        if (bits[g] > Q::lowest_bits) {
          double first = 0, second = 0;
          for (std::size_t i = off; i < off + cnt; ++i) {
            const double d = static_cast<double>(qlow[i]) - static_cast<double>(qk[i]);
            first += gbar[l][i] * d;
            second += 0.5 * fisher[l][i] * d * d;
          }
          s[g] = kind == sensitivity_estimate::first_order ? std::abs(first)
                 : kind == sensitivity_estimate::fisher    ? second
                                                           : first + second;
        }
        off += cnt;
      }
    }
    out.push_back(std::move(s));
    ++l;
  });
  net.train(was_training);
  return out;
}

/// Exact sensitivities (when asked), the estimate, and the per-layer statistics.
template <class Net, class X>
sensitivity_report measure_sensitivity(Net& net, const std::vector<labelled_batch<X>>& batches,
                                       const sensitivity_options& opt = {}) {
  sensitivity_report r;
  r.estimate_kind = opt.estimate;
  r.base_loss = mean_loss(net, batches);
  detail::visit_quantized_layers(net, [&]<class Q>(std::string_view name, auto&, Q& q) {
    layer_sensitivity row;
    row.name = std::string(name);
    if constexpr (!Q::is_identity) {
      for (int k : detail::checked_bits(name, q)) row.bits.push_back(static_cast<double>(k));
      const auto [lo, hi] = std::minmax_element(row.bits.begin(), row.bits.end());
      row.bits_spread = *hi - *lo;
    }
    r.layers.push_back(std::move(row));
  });
  auto est = estimated_sensitivity(net, batches, opt.estimate);
  std::vector<std::vector<double>> exact;
  if (opt.exact) exact = exact_sensitivity(net, batches);
  std::vector<double> all_exact, all_estimate;
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    auto& row = r.layers[l];
    row.estimate = std::move(est[l]);
    if (opt.exact) {
      row.exact = std::move(exact[l]);
      row.estimate_correlation = spearman(row.exact, row.estimate);
      all_exact.insert(all_exact.end(), row.exact.begin(), row.exact.end());
      all_estimate.insert(all_estimate.end(), row.estimate.begin(), row.estimate.end());
    }
    if (!row.bits.empty()) row.rank_correlation = spearman(row.bits, row.sensitivity());
  }
  if (opt.exact) r.estimate_correlation = spearman(all_exact, all_estimate);
  return r;
}

/// Fills group_sensitivity, bits_spread and rank_correlation of the rows (from
/// train::layer_summaries) whose names match a layer of the report; other rows are left as
/// they are.
inline void fill_layer_summaries(std::vector<layer_summary>& rows, const sensitivity_report& r) {
  for (auto& row : rows) {
    const auto it = std::find_if(r.layers.begin(), r.layers.end(),
                                 [&](const layer_sensitivity& l) { return l.name == row.name; });
    if (it == r.layers.end() || it->bits.empty()) continue;
    if (it->bits.size() != row.groups)
      throw config_error("fill_layer_summaries: " + row.name + " has " +
                         std::to_string(row.groups) + " groups in the summary but " +
                         std::to_string(it->bits.size()) + " in the sensitivity report");
    row.group_sensitivity = it->sensitivity();
    row.bits_spread = it->bits_spread;
    row.rank_correlation = it->rank_correlation;
  }
}

} // namespace bitgrad::train
