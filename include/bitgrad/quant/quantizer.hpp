// The quantizer contract and the words used everywhere in bitgrad.
//
// Words
//   channel   an output channel of a weight tensor: a row of a linear layer's W (out x in), or
//             one filter of a conv2d's W (out x in/groups x kh x kw). Weights are stored
//             channel-major: channel c owns elements [c * per_channel, (c+1) * per_channel).
//   group     g consecutive channels quantized together (g = 1: per channel; g = C_out: per
//             tensor; the last group may be smaller).
//   bitwidth  b, per group: a real number while training, an integer k once frozen.
//   scale     s, per group: the step between quantization levels.
//   code      a signed integer in [-(2^(k-1)-1), 2^(k-1)-1] (symmetric, zero exact; fixed_bits'
//             full grid adds -2^(k-1)); the quantized weight is code * s. For k = 1 the code
//             is the sign, in {-1, +1}.
//   size      the bits a group costs when stored: n_g * b_g for its codes plus its overhead,
//             the scale as float32 and the bitwidth as one byte (40 bits per group).
//
// Contract (Q with element type T = Q::value_type, built from Q::options), the concept
// `quantizer` below; every member is required of every quantizer, no_quant included:
//   void bind(size_t channels, size_t per_channel, const T* w)
//       fixes the layout, sizes the per-group parameters, initialises scales from w; thaws.
//   void forward(const T* w, T* wq, bool training)        wq = Q(w), channels*per_channel values.
//   void backward(const T* w, const T* grad_wq, T* grad_w)
//       grad_w += dL/dw given grad_wq = dL/dQ(w) for the last forward; accumulates the
//       gradients of the quantizer's own parameters (bitwidths, scales) as well.
//   void visit_parameters(F&& f)   f(param_ref<T>&) for the quantizer's own parameters, in a
//       fixed order. Kinds: whatever sets the learned bitwidths is of kind bitwidth (frac_bits
//       and step_bits "bits", noise_bits "logit"), so the optimizer's bitwidth group and the
//       per-layer second moment reach every policy; steps and ranges are of kind scale.
//   void zero_grad()
//   double size_bits() const       bits to store the tensor, overhead included; differentiable
//                                  in the bitwidths while training.
//   void add_size_gradient(T dloss_dsize)   accumulates dloss_dsize * d size_bits / d params.
//   void project()                 puts parameters back inside their bounds (after a step).
//   void freeze(rounding r)        bitwidths become integers; afterwards it behaves exactly as
//                                  an integer quantizer, and bitwidths no longer train.
//   void freeze_to(const std::vector<int>& k)   freezes at explicit integer bitwidths, one per
//                                  group, each in [lowest_bits, 16]; config_error otherwise.
//   bool frozen() const
//   double b_min() const, b_max() const   the bounds of the learned bitwidths.
//   std::size_t groups() const, group_size() const, weight_count() const,
//               group_weight_count(g) const
//   std::vector<double> group_bits() const   current (real or integer) bitwidth per group.
//   export, once frozen (config_error before):
//   std::vector<int> frozen_bits() const; std::vector<T> group_scales(const T* w) const;
//   void codes(const T* w, std::int32_t* out) const   with code * scale == forward(w) exactly.
//   state: void save(io::byte_writer&) const, void load(io::byte_reader&): the integer
//       bitwidths (quant/group_quantizer.hpp gives the bytes), then any state of the policy's
//       own (noise_bits: its noise step); real-valued parameters travel as parameters.
//   static constexpr bool is_identity        true only for no_quant (layers skip the copy,
//                                            export stores float32, it has no codes).
//   static constexpr const char* policy_name ("frac_bits", ...)
//   static constexpr int lowest_bits         the smallest integer bitwidth its grids have (1:
//                                            the sign grid; step_bits: 2); sensitivity
//                                            (train/sensitivity.hpp) lowers no group below it.
//
// The quantizing policies (frac_bits.hpp, noise_bits.hpp, step_bits.hpp, fixed_bits.hpp) build
// on one per-group core, quant/group_quantizer.hpp, which implements everything above but the
// relaxation (bind, forward, backward, parameters, size gradient, project). Beyond the
// contract they offer compression_ratio() and layout(). Group layout and overhead: groups.hpp;
// whole-model size: size.hpp; penalty: penalty.hpp; budget-aware freezing: budget.hpp;
// kernels: kernels/quantize.hpp.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::quant {

/// How freeze() turns real bitwidths into integers.
enum class rounding {
  nearest,     ///< round(b)
  up,          ///< ceil(b)
  budget_aware ///< the rounding that keeps the model within its size target (see budget.hpp)
};

template <class T>
struct any_param_visitor {
  void operator()(param_ref<T>&) const {}
};

template <class Q>
concept quantizer = requires(Q& q, const Q& cq, typename Q::value_type* p,
                             const typename Q::value_type* cp, typename Q::value_type v,
                             std::size_t n, bool on, rounding r, const std::vector<int>& k,
                             std::int32_t* codes, io::byte_writer& out, io::byte_reader& in) {
  typename Q::value_type;
  typename Q::options;
  q.bind(n, n, cp);
  q.forward(cp, p, on);
  q.backward(cp, cp, p);
  q.visit_parameters(any_param_visitor<typename Q::value_type>{});
  q.zero_grad();
  { cq.size_bits() } -> std::convertible_to<double>;
  q.add_size_gradient(v);
  q.project();
  q.freeze(r);
  q.freeze_to(k);
  { cq.frozen() } -> std::convertible_to<bool>;
  { cq.b_min() } -> std::convertible_to<double>;
  { cq.b_max() } -> std::convertible_to<double>;
  { cq.groups() } -> std::convertible_to<std::size_t>;
  { cq.group_size() } -> std::convertible_to<std::size_t>;
  { cq.weight_count() } -> std::convertible_to<std::size_t>;
  { cq.group_weight_count(n) } -> std::convertible_to<std::size_t>;
  { cq.group_bits() } -> std::convertible_to<std::vector<double>>;
  { cq.frozen_bits() } -> std::convertible_to<std::vector<int>>;
  { cq.group_scales(cp) } -> std::convertible_to<std::vector<typename Q::value_type>>;
  cq.codes(cp, codes);
  cq.save(out);
  q.load(in);
  { Q::is_identity } -> std::convertible_to<bool>;
  { Q::policy_name } -> std::convertible_to<const char*>;
  { Q::lowest_bits } -> std::convertible_to<int>;
};

} // namespace bitgrad::quant
