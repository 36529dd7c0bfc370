// Hardware costs of a quantized network, each differentiable in the learned bitwidths
// (issue #22): bit operations (BOPs) and peak activation memory. Weight memory is
// quant/size.hpp's total_size_bits, unchanged.
//
// Words
//   bits source   a set of per-group bitwidths over C channels, with a way to push dCost/db_g
//                 back into the parameters that set them: a weight quantizer (groups over output
//                 channels), an activation quantizer (quant/act_quantizer.hpp: groups over
//                 activation channels), or a constant (the 8-bit input image, float32 = 32).
//                 bits_source::of(q, channels) keeps a reference to q: q must outlive it.
//   connection    an (output channel o, input channel i) pair of a conv / linear layer that
//                 share a conv group (every pair when groups = 1).
//
// BOPs (per image), over every conv / linear layer l:
//   BOPs = sum_l sum_{(o, i) connected} m_l b_w[g(o)] b_a[h(i)]
//   m_l  = MACs per connection per image: k_h k_w out_h out_w (conv), 1 (linear)
//   g(o) = the weight group of output channel o; h(i) = the activation group of input channel
//          i, with activation channel i / r for r = in_channels / activation channels (a linear
//          layer after a flatten of (C, H, W): r = H W)
// so with per-group bitwidths each weight group counts with its own MACs. Precomputed per
// layer: M_l[g][h] = m_l #{(o, i) connected: g(o) = g, h(i) = h}, then
//   BOPs = sum_l sum_{g,h} M_l[g][h] b_w[g] b_a[h]
//   dBOPs/db_w[g] = sum_h M_l[g][h] b_a[h],   dBOPs/db_a[h] = sum_g M_l[g][h] b_w[g]
//
// Peak activation memory (bits per image), over the activation tensors t that are kept:
//   mem_t = sum_h n_t(h) b_t[h]      n_t(h) = elements of group h per image (channels x H W)
//   peak  = max_t mem_t                              temperature 0 (default)
//         = tau log sum_t exp(mem_t / tau)           temperature tau > 0 (soft maximum)
// Gradient: with the hard maximum, the subgradient at the arg-max: all of dL/dpeak goes to the
// first tensor (in the order added) whose memory is the maximum, dpeak/db_t[h] = n_t(h) there
// and 0 elsewhere. With tau > 0, the exact gradient of the soft maximum: tensor t gets the
// weight softmax(mem / tau)_t (peak <= soft peak <= peak + tau log T).
//
// A cost object holds its terms; value() evaluates it at the current bitwidths and
// add_gradient(dL/dcost) accumulates dL/dcost dcost/db into the bitwidth parameters (none for
// frozen quantizers and constants). apply_cost_penalty(cost, penalty) uses the penalty forms
// of quant/penalty.hpp against penalty.target_bits (the target in the cost's unit: BOPs or
// bits), so costs combine by adding their penalties.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/quant/penalty.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::quant {

/// dL/db_g += d_db[g] for each group of q's learned bitwidths, through whatever parameter sets
/// them: a parameter of kind bitwidth holding b itself (frac_bits, step_bits, act_quantizer:
/// "bits"), or a logit (noise_bits: b = b_min + (b_max - b_min) sigmoid(l), so the chain rule's
/// db/dl = (b_max - b_min) s (1 - s)). Nothing for a frozen quantizer.
template <class Q>
void add_bits_gradient(Q& q, const std::vector<double>& d_db) {
  if (q.frozen()) return;
  using T = typename Q::value_type;
  const double span = q.b_max() - q.b_min();
  q.visit_parameters([&](param_ref<T>& p) {
    if (p.kind != param_kind::bitwidth) return;
    const bool logit = is_bitwidth_logit(p.name);
    for (std::size_t g = 0; g < p.size && g < d_db.size(); ++g) {
      double d = d_db[g];
      if (logit) {
        const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(p.value[g])));
        d *= span * s * (1 - s);
      }
      p.grad[g] += static_cast<T>(d);
    }
  });
}

/// Per-group bitwidths over channels, and where their gradient goes (see the top of the file).
class bits_source {
public:
  /// Every channel at `bits` (no gradient): the input image (8), a float32 tensor (32).
  static bits_source constant(double bits, std::size_t channels = 1) {
    if (!(bits > 0))
      throw config_error("bits_source: expected bits > 0, got " + std::to_string(bits));
    bits_source s;
    s.channels_ = std::max<std::size_t>(channels, 1);
    s.group_size_ = s.channels_;
    s.groups_ = 1;
    s.bits_ = [bits] { return std::vector<double>{bits}; };
    s.add_ = [](const std::vector<double>&) {};
    return s;
  }
  /// The bitwidths of quantizer q (weight or activation) whose groups cover `channels`
  /// channels, group_size() channels each (the last group may be smaller).
  template <class Q>
  static bits_source of(Q& q, std::size_t channels) {
    bits_source s;
    s.channels_ = channels;
    s.groups_ = q.groups();
    s.group_size_ = std::max<std::size_t>(q.group_size(), 1);
    if (channels == 0 || s.groups_ == 0 ||
        (channels + s.group_size_ - 1) / s.group_size_ != s.groups_)
      throw config_error("bits_source: a quantizer of " + std::to_string(s.groups_) +
                         " groups of " + std::to_string(q.group_size()) +
                         " channels does not cover " + std::to_string(channels) + " channels");
    s.bits_ = [&q] { return q.group_bits(); };
    s.add_ = [&q](const std::vector<double>& d) { add_bits_gradient(q, d); };
    s.owner_ = &q;
    return s;
  }

  /// The quantizer behind the bitwidths (nullptr for a constant): budget freezing
  /// (quant/multi_budget.hpp) matches it with the quantizers it freezes.
  const void* owner() const { return owner_; }

  std::size_t channels() const { return channels_; }
  std::size_t groups() const { return groups_; }
  std::size_t group_of(std::size_t channel) const {
    return std::min(channel / group_size_, groups_ - 1);
  }
  /// Channels in group g.
  std::size_t group_channels(std::size_t g) const {
    return std::min(channels_, (g + 1) * group_size_) - g * group_size_;
  }
  /// The current bitwidth per group.
  std::vector<double> bits() const { return bits_(); }
  /// dL/db_g per group into the parameters behind the bitwidths.
  void add_gradient(const std::vector<double>& d_db) const { add_(d_db); }

private:
  std::size_t channels_ = 0, groups_ = 0, group_size_ = 1;
  std::function<std::vector<double>()> bits_;
  std::function<void(const std::vector<double>&)> add_;
  const void* owner_ = nullptr;
};

/// One conv / linear layer as the BOPs cost sees it.
struct bop_layer {
  std::string name;
  std::size_t out_channels = 0;   ///< conv: out_channels; linear: out_features
  std::size_t in_channels = 0;    ///< conv: in_channels; linear: in_features
  std::size_t conv_groups = 1;    ///< conv groups (1 for linear)
  double macs_per_connection = 1; ///< k_h k_w out_h out_w (conv), 1 (linear)
  bits_source weight;             ///< over out_channels
  bits_source input;              ///< over the activation channels feeding the layer
};

/// BOPs = sum over layers of MACs x b_w x b_a (see the top of the file).
class bops_cost {
public:
  /// Adds a layer; config_error naming it when the channel counts do not fit.
  void add_layer(bop_layer l) {
    const std::string who = "bops_cost: layer '" + l.name + "'";
    if (l.out_channels == 0 || l.in_channels == 0 || l.conv_groups == 0 ||
        l.out_channels % l.conv_groups != 0 || l.in_channels % l.conv_groups != 0)
      throw config_error(who + ": expected out and in channels divisible by the conv groups (" +
                         std::to_string(l.conv_groups) + "), got " +
                         std::to_string(l.out_channels) + " and " + std::to_string(l.in_channels));
    if (l.weight.channels() != l.out_channels)
      throw config_error(who + ": the weight bitwidths cover " +
                         std::to_string(l.weight.channels()) + " channels, expected " +
                         std::to_string(l.out_channels));
    const std::size_t act = l.input.channels();
    if (act == 0 || l.in_channels % act != 0)
      throw config_error(who + ": " + std::to_string(l.in_channels) +
                         " input channels are not a multiple of the " + std::to_string(act) +
                         " activation channels feeding it");
    if (!(l.macs_per_connection >= 0))
      throw config_error(who + ": expected macs_per_connection >= 0");
    term t{std::move(l), {}};
    const bop_layer& b = t.layer;
    const std::size_t gw = b.weight.groups(), ga = b.input.groups();
    t.macs.assign(gw * ga, 0.0);
    const std::size_t per_act = b.in_channels / act;
    const std::size_t out_per = b.out_channels / b.conv_groups,
                      in_per = b.in_channels / b.conv_groups;
    // Connections per (weight group, activation group): one conv group at a time, counted per
    // activation channel (per_act input channels each), then per output channel's group.
    for (std::size_t cg = 0; cg < b.conv_groups; ++cg) {
      std::vector<double> per_h(ga, 0.0);
      for (std::size_t i = cg * in_per; i < (cg + 1) * in_per; ++i)
        per_h[b.input.group_of(i / per_act)] += 1.0;
      for (std::size_t o = cg * out_per; o < (cg + 1) * out_per; ++o) {
        const std::size_t g = b.weight.group_of(o);
        for (std::size_t h = 0; h < ga; ++h) t.macs[g * ga + h] += per_h[h] * b.macs_per_connection;
      }
    }
    terms_.push_back(std::move(t));
  }

  std::size_t layers() const { return terms_.size(); }
  /// Layer l as added.
  const bop_layer& layer(std::size_t l) const { return terms_.at(l).layer; }
  /// M_l[g][h] of layer l, row-major over (weight group g, activation group h).
  const std::vector<double>& group_macs(std::size_t l) const { return terms_.at(l).macs; }
  /// MACs per image of layer l (at 1 x 1 bits).
  double macs(std::size_t l) const {
    double s = 0;
    for (double m : terms_.at(l).macs) s += m;
    return s;
  }
  /// BOPs of layer l at the current bitwidths.
  double layer_value(std::size_t l) const {
    const term& t = terms_.at(l);
    const auto bw = t.layer.weight.bits(), ba = t.layer.input.bits();
    double s = 0;
    for (std::size_t g = 0; g < bw.size(); ++g)
      for (std::size_t h = 0; h < ba.size(); ++h) s += t.macs[g * ba.size() + h] * bw[g] * ba[h];
    return s;
  }
  /// BOPs per image at the current bitwidths.
  double value() const {
    double s = 0;
    for (std::size_t l = 0; l < terms_.size(); ++l) s += layer_value(l);
    return s;
  }
  /// Accumulates dloss_dbops dBOPs/db into every learned bitwidth.
  void add_gradient(double dloss_dbops) const {
    for (const term& t : terms_) {
      const auto bw = t.layer.weight.bits(), ba = t.layer.input.bits();
      std::vector<double> dw(bw.size(), 0.0), da(ba.size(), 0.0);
      for (std::size_t g = 0; g < bw.size(); ++g)
        for (std::size_t h = 0; h < ba.size(); ++h) {
          const double m = t.macs[g * ba.size() + h] * dloss_dbops;
          dw[g] += m * ba[h];
          da[h] += m * bw[g];
        }
      t.layer.weight.add_gradient(dw);
      t.layer.input.add_gradient(da);
    }
  }

private:
  struct term {
    bop_layer layer;
    std::vector<double> macs; ///< M[g][h], row-major over (weight group, activation group)
  };
  std::vector<term> terms_;
};

/// One activation tensor as the memory cost sees it.
struct activation_tensor {
  std::string name;
  std::size_t elements_per_channel = 1; ///< per image: H W ((N, C) tensors: 1)
  bits_source bits;                     ///< over the tensor's C channels
};

/// Peak activation memory in bits per image (see the top of the file).
class activation_memory_cost {
public:
  /// temperature 0: hard maximum (subgradient at the arg-max); > 0: soft maximum, in bits.
  explicit activation_memory_cost(double temperature_bits = 0) : tau_(temperature_bits) {
    if (!(tau_ >= 0))
      throw config_error("activation_memory_cost: expected a temperature >= 0, got " +
                         std::to_string(tau_));
  }

  void add_tensor(activation_tensor t) {
    if (t.elements_per_channel == 0)
      throw config_error("activation_memory_cost: tensor '" + t.name +
                         "' has 0 elements per channel");
    tensors_.push_back(std::move(t));
  }
  std::size_t tensors() const { return tensors_.size(); }
  const std::string& name(std::size_t t) const { return tensors_.at(t).name; }
  /// Tensor t as added.
  const activation_tensor& tensor(std::size_t t) const { return tensors_.at(t); }

  /// Bits of tensor t per image at the current bitwidths.
  double tensor_bits(std::size_t t) const {
    const activation_tensor& a = tensors_.at(t);
    const auto b = a.bits.bits();
    double s = 0;
    for (std::size_t h = 0; h < b.size(); ++h)
      s += static_cast<double>(a.bits.group_channels(h) * a.elements_per_channel) * b[h];
    return s;
  }
  /// The first tensor of largest memory (0 when there are none).
  std::size_t peak_tensor() const {
    std::size_t best = 0;
    double m = -1;
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const double v = tensor_bits(t);
      if (v > m) {
        m = v;
        best = t;
      }
    }
    return best;
  }
  /// The (hard or soft) peak in bits per image; 0 without tensors.
  double value() const {
    if (tensors_.empty()) return 0;
    const auto w = weights();
    return w.second;
  }
  /// Accumulates dloss_dpeak dpeak/db into the learned bitwidths.
  void add_gradient(double dloss_dpeak) const {
    if (tensors_.empty()) return;
    const auto w = weights().first;
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      if (w[t] == 0) continue;
      const activation_tensor& a = tensors_[t];
      std::vector<double> d(a.bits.groups());
      for (std::size_t h = 0; h < d.size(); ++h)
        d[h] = dloss_dpeak * w[t] *
               static_cast<double>(a.bits.group_channels(h) * a.elements_per_channel);
      a.bits.add_gradient(d);
    }
  }

private:
  /// dpeak/dmem_t per tensor, and the peak.
  std::pair<std::vector<double>, double> weights() const {
    std::vector<double> mem(tensors_.size()), w(tensors_.size(), 0.0);
    for (std::size_t t = 0; t < mem.size(); ++t) mem[t] = tensor_bits(t);
    const std::size_t top = peak_tensor();
    if (tau_ == 0) {
      w[top] = 1;
      return {w, mem[top]};
    }
    double z = 0; // sum exp((mem_t - max) / tau), shifted for range
    for (std::size_t t = 0; t < mem.size(); ++t) z += (w[t] = std::exp((mem[t] - mem[top]) / tau_));
    for (double& v : w) v /= z;
    return {w, mem[top] + tau_ * std::log(z)};
  }

  double tau_;
  std::vector<activation_tensor> tensors_;
};

/// The penalty of quant/penalty.hpp on any cost (its value against p.target_bits, in the
/// cost's unit); accumulates its gradient into the bitwidths and returns it.
template <class Cost>
double apply_cost_penalty(const Cost& cost, const size_penalty& p) {
  const penalty_value v = evaluate_penalty(p, cost.value());
  if (v.dsize != 0) cost.add_gradient(v.dsize);
  return v.value;
}

/// Several costs' penalties added together, each against its own target (the training step's
/// hardware-cost term: train/step.hpp). Keeps references to the costs: they must outlive it.
///   P = sum_j P_j(cost_j),  dP/db = sum_j dP_j/dcost_j dcost_j/db
class cost_penalties {
public:
  /// Adds `cost` (bops_cost, activation_memory_cost, or any type with value() and
  /// add_gradient(double)) with its penalty `p` (p.target_bits in the cost's unit).
  template <class Cost>
  void add(std::string name, const Cost& cost, const size_penalty& p) {
    if (!(p.target_bits > 0))
      throw config_error("cost_penalties: the target of '" + name + "' must be > 0, got " +
                         std::to_string(p.target_bits));
    terms_.push_back({std::move(name), p, [&cost] { return cost.value(); },
                      [&cost](double d) { cost.add_gradient(d); }});
  }
  bool empty() const { return terms_.empty(); }
  std::size_t size() const { return terms_.size(); }
  const std::string& name(std::size_t j) const { return terms_.at(j).name; }
  /// Cost j's value now and its target.
  double value(std::size_t j) const { return terms_.at(j).value(); }
  double target(std::size_t j) const { return terms_.at(j).penalty.target_bits; }
  /// The total penalty now, without touching any gradient.
  double penalty() const {
    double s = 0;
    for (const term& t : terms_) s += evaluate_penalty(t.penalty, t.value()).value;
    return s;
  }
  /// The total penalty; accumulates its gradient into every bitwidth it depends on.
  double apply() const {
    double s = 0;
    for (const term& t : terms_) {
      const penalty_value v = evaluate_penalty(t.penalty, t.value());
      if (v.dsize != 0) t.add_gradient(v.dsize);
      s += v.value;
    }
    return s;
  }

private:
  struct term {
    std::string name;
    size_penalty penalty;
    std::function<double()> value;
    std::function<void(double)> add_gradient;
  };
  std::vector<term> terms_;
};

} // namespace bitgrad::quant
