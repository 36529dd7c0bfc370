// One finite-difference checker for every quantizer parameter (and the weights): central
// differences of a scalar loss against the gradients a backward pass accumulated.
// Quantizer-local on purpose (the layers have nn/gradcheck.hpp); both follow the same rule.
#pragma once

#include <bitgrad/core/parameter.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

namespace bitgrad::testing {

struct fd_options {
  double h = 1e-6;        ///< step
  double rtol = 1e-6;     ///< relative tolerance
  double atol = 1e-9;     ///< absolute tolerance
  bool one_sided = false; ///< forward difference (L(p + h) - L(p)) / h
};

/// Every parameter of q as a param_ref (the order of visit_parameters).
template <class Q>
std::vector<param_ref<typename Q::value_type>> parameters_of(Q& q) {
  std::vector<param_ref<typename Q::value_type>> out;
  q.visit_parameters([&](param_ref<typename Q::value_type>& p) { out.push_back(p); });
  return out;
}

/// The parameter called `name` (fails the test if absent).
template <class T>
param_ref<T> find_param(const std::vector<param_ref<T>>& params, const std::string& name) {
  for (const auto& p : params)
    if (p.name == name) return p;
  FAIL("no parameter named " << name);
  return params.front();
}

/// For every element of every listed parameter: grad == dloss/dvalue by finite differences.
/// Returns the number of elements checked.
template <class T, class Loss>
std::size_t check_gradients(const std::vector<param_ref<T>>& params, Loss&& loss,
                            const fd_options& o = {}) {
  std::size_t checked = 0;
  for (const auto& p : params) {
    for (std::size_t i = 0; i < p.size; ++i) {
      const T v0 = p.value[i];
      const T h = static_cast<T>(o.h);
      p.value[i] = v0 + h;
      const double lp = static_cast<double>(loss());
      p.value[i] = o.one_sided ? v0 : v0 - h;
      const double lm = static_cast<double>(loss());
      p.value[i] = v0;
      const double fd = (lp - lm) / (o.one_sided ? o.h : 2 * o.h);
      const double an = static_cast<double>(p.grad[i]);
      INFO(p.name, "[", i, "]: analytic ", an, ", finite difference ", fd);
      CHECK(std::abs(fd - an) <= o.atol + o.rtol * std::max(std::abs(fd), std::abs(an)));
      ++checked;
    }
  }
  return checked;
}

} // namespace bitgrad::testing
