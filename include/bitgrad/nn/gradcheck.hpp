// The one finite-difference gradient checker, for any layer or network (nn::layer) in double.
//
// Loss: L(x, params) = sum_i y_i * R_i with y = net.forward(x) and R a fixed random projection
// (uniform in [-1, 1], seeded). The analytic gradients come from one zero_grad + forward +
// backward(R): dL/dx is backward's result, dL/dp is each parameter's accumulated gradient.
// Each checked element is then perturbed by +-epsilon and compared with the central difference
//   numeric = (L(v + eps) - L(v - eps)) / (2 eps)
//   error   = |analytic - numeric| / max(|analytic|, |numeric|, floor)
// (relative for large gradients, absolute below `floor`). The result names the worst element.
//
// Quantized layers: the loss is piecewise smooth in the weights (rounding jumps), so pick points
// away from rounding boundaries and a small epsilon, and check only the kinds whose gradient is
// exact there (e.g. bitwidth with b inside (k, k+1) for frac_bits, scale) through `kinds`.
// Stochastic layers: hold their randomness fixed (dropout::hold_mask) before checking.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace bitgrad::nn {

struct gradcheck_options {
  double epsilon = 1e-6;
  double floor = 1e-3;             ///< errors are absolute below this gradient magnitude
  std::uint64_t seed = 1;          ///< seeds the projection R and the element sampling
  bool check_input = true;         ///< check dL/dx
  std::vector<param_kind> kinds{}; ///< parameter kinds to check; empty: every kind
  std::size_t max_per_tensor = 0;  ///< check at most this many random elements per tensor (0: all)
};

struct gradcheck_result {
  struct tensor_error {
    std::string name; ///< "input" or the parameter's full name
    double max_error;
    std::size_t checked;
  };
  double max_error = 0; ///< worst error over every checked element
  std::string worst;    ///< "conv1.weight[17]", "input[3]"
  double analytic = 0;  ///< at the worst element
  double numeric = 0;   ///< at the worst element
  std::size_t checked = 0;
  std::vector<tensor_error> tensors; ///< worst error per checked tensor, in visiting order
};

namespace detail {

template <class Y, class R>
double projected(const Y& y, const R& r) {
  double sum = 0;
  for (std::size_t i = 0; i < y.size(); ++i) sum += y.data()[i] * r.data()[i];
  return sum;
}

inline std::vector<std::size_t> pick(std::size_t n, std::size_t limit, std::mt19937_64& rng) {
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), std::size_t(0));
  if (limit != 0 && limit < n) {
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(limit);
    std::sort(idx.begin(), idx.end());
  }
  return idx;
}

} // namespace detail

/// Checks net's backward against central differences at input x (see the file comment).
template <layer L>
gradcheck_result gradcheck(L& net, const typename L::input_type& x,
                           const gradcheck_options& opt = {}) {
  static_assert(std::is_same_v<typename L::value_type, double>,
                "gradcheck runs in double precision: instantiate the network with double");
  if (!(opt.epsilon > 0)) throw config_error("gradcheck: epsilon must be > 0");
  using input_type = typename L::input_type;
  using output_type = typename L::output_type;

  std::mt19937_64 rng(opt.seed);
  input_type xv = x; // the point; perturbed in place
  output_type r = net.forward(xv);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  for (std::size_t i = 0; i < r.size(); ++i) r.data()[i] = uni(rng);

  // Analytic gradients.
  net.zero_grad();
  const output_type& y0 = net.forward(xv);
  if (y0.shape() != r.shape())
    throw shape_error("gradcheck: " + net.name() + " changed its output shape between calls");
  const input_type dx = net.backward(r);
  std::vector<param_ref<double>> params;
  net.visit_parameters([&](param_ref<double>& p) {
    if (opt.kinds.empty() ||
        std::find(opt.kinds.begin(), opt.kinds.end(), p.kind) != opt.kinds.end())
      params.push_back(p);
  });
  std::vector<std::vector<double>> grads;
  for (const auto& p : params) grads.emplace_back(p.grad, p.grad + p.size);

  gradcheck_result result;
  auto loss = [&] { return detail::projected(net.forward(xv), r); };
  auto check = [&](const std::string& name, double* values, const double* analytic, std::size_t n) {
    gradcheck_result::tensor_error te{name, 0.0, 0};
    for (std::size_t i : detail::pick(n, opt.max_per_tensor, rng)) {
      const double saved = values[i];
      values[i] = saved + opt.epsilon;
      const double lp = loss();
      values[i] = saved - opt.epsilon;
      const double lm = loss();
      values[i] = saved;
      const double numeric = (lp - lm) / (2 * opt.epsilon);
      const double a = analytic[i];
      const double err =
          std::abs(a - numeric) / std::max({std::abs(a), std::abs(numeric), opt.floor});
      ++te.checked;
      te.max_error = std::max(te.max_error, err);
      if (result.worst.empty() || err > result.max_error) {
        result.max_error = err;
        result.worst = name + "[" + std::to_string(i) + "]";
        result.analytic = a;
        result.numeric = numeric;
      }
    }
    result.checked += te.checked;
    result.tensors.push_back(te);
  };

  if (opt.check_input) check("input", xv.data(), dx.data(), xv.size());
  for (std::size_t k = 0; k < params.size(); ++k)
    check(params[k].name, params[k].value, grads[k].data(), params[k].size);
  net.forward(xv); // leave the network's buffers at the unperturbed point
  return result;
}

} // namespace bitgrad::nn
