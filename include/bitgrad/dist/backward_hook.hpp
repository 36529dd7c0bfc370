// The hook that lets gradient communication start while the backward pass is still running.
//
// Contract (what a container promises a hook):
//   During backward, right after one of its layers' backward() has returned, the container
//   calls hook(p) for every parameter p of that layer (in the layer's visit_parameters order).
//   From then on p.grad is final for this step: nothing later in the backward pass touches it.
//   A parameter is reported at most once per backward pass.
// A hook is any callable of param_ref<T>& (the same shape as a parameter visitor), so a
// container can report a layer with `layer.visit_parameters(hook)`. Cost: one call per
// parameter tensor per step.
//
// dist::gradient_reducer::hook() gives the hook that starts a bucket's all-reduce as soon as
// all of the bucket's gradients are final (dist/gradient_reducer.hpp).
//
// backward_with_hook(net, dy, hook) runs a sequential's backward layer by layer from the last
// to the first with the hook called after each (top-level) layer: what nn::sequential's own
// backward(dy, hook) is meant to do once it takes the hook (phase 2 of issue 21). A residual
// block at the top level is reported as one layer, after its whole backward. This header needs
// no MPI.
#pragma once

#include <bitgrad/core/parameter.hpp>

#include <concepts>
#include <cstddef>

namespace bitgrad::dist {

/// F is a hook for parameters of element type T (see the top of this header).
template <class F, class T>
concept gradient_hook = std::invocable < F&,
        param_ref<T>
& > ;

namespace detail {
template <std::size_t I, class Net, class DY, class Hook>
const typename Net::input_type& backward_from(Net& net, const DY& dy, Hook& hook) {
  auto& layer = net.template get<I>();
  const auto& dx = layer.backward(dy);
  layer.visit_parameters(hook);
  if constexpr (I > 0)
    return backward_from<I - 1>(net, dx, hook);
  else
    return dx;
}
} // namespace detail

/// net.backward(dy), layer by layer (last first), calling hook(p) for each parameter of a
/// layer right after that layer's backward. Net: an nn::sequential (get<I>(), size).
template <class Net, class Hook>
requires gradient_hook<Hook, typename Net::value_type>
const typename Net::input_type& backward_with_hook(Net& net, const typename Net::output_type& dy,
                                                   Hook&& hook) {
  return detail::backward_from<Net::size - 1>(net, dy, hook);
}

} // namespace bitgrad::dist
