// sequential: layers applied one after another, y = L_{n-1}(... L_1(L_0(x))).
//
// Built from layer objects: sequential(conv, relu, pool, ...) (moved in; class template argument
// deduction gives the type; note that sequential(one_sequential) copies it rather than nesting:
// write sequential<decltype(s)>(std::move(s)) to nest a single sequential). Each layer's
// output_type must be the next one's input_type (checked at compile time). forward and backward are
// fold-style loops over the tuple; the intermediate tensors live in the layers, so the sequential
// itself owns no buffers. Parameter and quantizer names are prefixed with the sequential's name
// when it is not empty.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/visit.hpp>

#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace bitgrad::nn {

namespace detail {
template <class First, class... Rest>
struct first_of {
  using type = First;
};
template <class... Layers>
struct last_of {
  using type = typename decltype((std::type_identity<Layers>{}, ...))::type;
};

template <class... Layers, std::size_t... I>
constexpr bool chain_matches(std::index_sequence<I...>) {
  using tuple = std::tuple<Layers...>;
  return (std::same_as<typename std::tuple_element_t<I, tuple>::output_type,
                       typename std::tuple_element_t<I + 1, tuple>::input_type> &&
          ...);
}
} // namespace detail

template <layer... Layers>
class sequential {
  static_assert(sizeof...(Layers) >= 1, "sequential needs at least one layer");
  static_assert(detail::chain_matches<Layers...>(std::make_index_sequence<sizeof...(Layers) - 1>{}),
                "sequential: each layer's output_type must be the next layer's input_type");

  using first = typename detail::first_of<Layers...>::type;
  using last = typename detail::last_of<Layers...>::type;

public:
  using value_type = typename first::value_type;
  using input_type = typename first::input_type;
  using output_type = typename last::output_type;
  static constexpr std::size_t size = sizeof...(Layers);

  explicit sequential(Layers... layers) : layers_(std::move(layers)...) {}
  sequential(std::string name, Layers... layers)
      : name_(std::move(name)), layers_(std::move(layers)...) {}

  const output_type& forward(const input_type& x) { return forward_from<0>(x); }
  const input_type& backward(const output_type& dy) { return backward_from<size - 1>(dy); }

  void zero_grad() {
    std::apply([](auto&... l) { (l.zero_grad(), ...); }, layers_);
  }
  void train(bool on) {
    training_ = on;
    std::apply([on](auto&... l) { (l.train(on), ...); }, layers_);
  }
  bool training() const { return training_; }

  template <class F>
  void visit_parameters(F&& f) {
    std::apply(
        [&](auto&... l) {
          (l.visit_parameters([&](param_ref<value_type>& p) { visit_prefixed(name_, p, f); }), ...);
        },
        layers_);
  }
  template <class F>
  void visit_quantizers(F&& f) {
    std::apply(
        [&](auto&... l) {
          (l.visit_quantizers([&](std::string_view layer_name, auto& q) {
            f(std::string_view(join_name(name_, layer_name)), q);
          }),
           ...);
        },
        layers_);
  }
  /// f(full_name, leaf_layer&) for every leaf layer, in order.
  template <class F>
  void visit_layers(F& f, std::string_view prefix) {
    const std::string mine = join_name(prefix, name_);
    std::apply([&](auto&... l) { (nn::visit_layers(l, f, mine), ...); }, layers_);
  }

  std::string describe() const { return "sequential of " + std::to_string(size) + " layers"; }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  template <std::size_t I>
  auto& get() {
    return std::get<I>(layers_);
  }
  template <std::size_t I>
  const auto& get() const {
    return std::get<I>(layers_);
  }

private:
  template <std::size_t I, class X>
  const output_type& forward_from(const X& x) {
    const auto& y = std::get<I>(layers_).forward(x);
    if constexpr (I + 1 < size)
      return forward_from<I + 1>(y);
    else
      return y;
  }
  template <std::size_t I, class DY>
  const input_type& backward_from(const DY& dy) {
    const auto& dx = std::get<I>(layers_).backward(dy);
    if constexpr (I > 0)
      return backward_from<I - 1>(dx);
    else
      return dx;
  }

  std::string name_;
  bool training_ = true;
  std::tuple<Layers...> layers_;
};

template <class... Layers>
sequential(std::string, Layers...) -> sequential<Layers...>;

} // namespace bitgrad::nn
