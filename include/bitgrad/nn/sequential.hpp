// sequential: layers applied one after another, y = L_{n-1}(... L_1(L_0(x))).
//
// Built from layer objects: sequential(conv, relu, pool, ...) (moved in; class template argument
// deduction gives the type; note that sequential(one_sequential) copies it rather than nesting:
// write sequential<decltype(s)>(std::move(s)) to nest a single sequential). Each layer's
// output_type must be the next one's input_type, and forward() takes input_type only (both
// checked at compile time; a missing nn::flatten before a linear layer is named). forward and
// backward are fold-style loops over the tuple; the intermediate tensors live in the layers, so the
// sequential itself owns no buffers. Parameter and quantizer names are prefixed with the
// sequential's name when it is not empty.
//
// Shapes are checked at construction as far as they are known there: walking the layers, each
// one's input_features() (nn/layer.hpp) must equal the features (dimension 1) the layers before
// it give, or the constructor throws shape_error naming the layer by its index (as in get<I>()),
// its description and name, the expected and the actual count, and the layer that gave it:
//   "sequential: layer 2 (linear 5->2 no_quant 'fc2'): expected 5 input features, got 3 from
//    layer 1 (relu 'relu')"
// The walk forgets the count after a layer that cannot state it (flatten, user layers without
// the optional members) until a layer requires one again; what it cannot see is checked at the
// first forward, by the layer that receives the wrong shape.
//
// Fused epilogues, below the layer graph: where a layer that offers forward_relu (conv2d,
// linear, batch_norm) is followed directly by nn::relu, forward runs the pair as one pass: the
// layer puts the ReLU into its epilogue (y = max(0, conv(x) + b) or max(0, bn(x)) written once)
// and the relu layer passes y on (forward_fused); backward, the relu layer passes dy on and the
// layer masks it by y > 0 inside its own backward (conv/linear: before dgrad, wgrad and bias
// gradient; batch_norm: inside its sums and dx). The layers, their names, parameters,
// describe(), visit_layers and so checkpoints, model files and ONNX exports stay those of the
// two layers; only the work changes. ReLU is exact, so the outputs and gradients are the same
// bits as layer by layer (tests/unit/test_models.cpp holds the two against each other).
// forward_add_relu(x, skip) hands nn::residual's sum and ReLU to the last layer the same way
// (batch_norm: relu(bn(x) + skip) in its normalisation pass).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/visit.hpp>

#include <concepts>
#include <cstddef>
#include <optional>
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

/// No layer that gives (N, C, H, W) is followed by one that takes (N, features).
template <class... Layers, std::size_t... I>
constexpr bool no_missing_flatten(std::index_sequence<I...>) {
  using tuple = std::tuple<Layers...>;
  return (!(static_rank<typename std::tuple_element_t<I, tuple>::output_type>() == 4 &&
            static_rank<typename std::tuple_element_t<I + 1, tuple>::input_type>() == 2) &&
          ...);
}

/// L then R run as one pass: L computes relu(L(x)) itself (forward_relu) and R is the relu that
/// then passes values and gradients on (forward_fused).
template <class L, class R>
concept relu_fusable = requires(L& l, R& r, const typename L::input_type& x,
                                const typename R::input_type& y) {
  { l.forward_relu(x) } -> std::same_as<const typename L::output_type&>;
  { r.forward_fused(y) } -> std::same_as<const typename R::output_type&>;
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
  static_assert(
      detail::no_missing_flatten<Layers...>(std::make_index_sequence<sizeof...(Layers) - 1>{}),
      "sequential: a layer that gives image batches (N, C, H, W) is followed by one that takes "
      "(N, features), such as nn::linear: put nn::flatten between them");
  static_assert(detail::chain_matches<Layers...>(std::make_index_sequence<sizeof...(Layers) - 1>{}),
                "sequential: each layer's output_type must be the next layer's input_type");

  using first = typename detail::first_of<Layers...>::type;
  using last = typename detail::last_of<Layers...>::type;

public:
  using value_type = typename first::value_type;
  using input_type = typename first::input_type;
  using output_type = typename last::output_type;
  static constexpr std::size_t size = sizeof...(Layers);

  /// Throws shape_error when two consecutive layers are known not to fit (see above).
  explicit sequential(Layers... layers) : layers_(std::move(layers)...) {
    output_features(std::nullopt);
  }
  sequential(std::string name, Layers... layers)
      : name_(std::move(name)), layers_(std::move(layers)...) {
    output_features(std::nullopt);
  }

  const output_type& forward(const input_type& x) { return forward_from<0>(x); }
  /// relu(forward(x) + skip()), the sum and the ReLU in the last layer's pass (its
  /// forward_add_relu, called after the layers before it ran): nn::residual with a block that
  /// ends in a batch_norm. skip() gives a tensor of the output's shape.
  template <class Skip>
  requires add_relu_fusable<last>
  const output_type& forward_add_relu(const input_type& x, Skip&& skip) {
    return forward_from<0>(x, &skip);
  }
  /// A tensor of another rank than input_type: a compile-time error (see nn/layer.hpp).
  template <class X>
  requires tensor_of_other_rank<X, input_type>
  const output_type& forward(const X& x) {
    static_assert(always_false<X>,
                  "sequential::forward: the input has another rank than the first layer takes; "
                  "a network of nn::linear layers fed image batches (N, C, H, W) needs "
                  "nn::flatten as its first layer: put nn::flatten in front of the first linear");
    (void)x;
    throw shape_error("forward: input of another rank"); // never compiled
  }
  const input_type& backward(const output_type& dy) { return backward_from<size - 1>(dy); }
  /// backward(dy), calling hook(p) for every parameter p of a layer right after that layer's
  /// backward returned (p.grad is final from then on; dist/backward_hook.hpp states the
  /// contract). A nested sequential or residual block is reported after its whole backward.
  template <class Hook>
  const input_type& backward(const output_type& dy, Hook&& hook) {
    static_assert(std::invocable<Hook&, param_ref<value_type>&>,
                  "sequential::backward(dy, hook): hook must be callable with param_ref<T>&");
    return backward_hooked<size - 1>(dy, hook);
  }

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

  /// The first layer's requirement (nn/layer.hpp).
  std::optional<std::size_t> input_features() const {
    return input_features_of(std::get<0>(layers_));
  }
  /// The last layer's output features for input features `in`, checking every layer on the
  /// way; throws shape_error on a mismatch.
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const {
    std::string from = "the input";
    std::apply(
        [&](const auto&... l) {
          std::size_t i = 0;
          ((in = chain_step(i++, l, in, from)), ...);
        },
        layers_);
    return in;
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
  /// One layer of the construction-time walk: checks `in` (given by `from`) against layer i's
  /// requirement and returns its output features.
  template <class L>
  std::optional<std::size_t> chain_step(std::size_t i, const L& l, std::optional<std::size_t> in,
                                        std::string& from) const {
    const std::string who = name_.empty() ? std::string("sequential") : name_;
    const std::string here = "layer " + std::to_string(i) + " (" + layer_label(l) + ")";
    const std::optional<std::size_t> want = input_features_of(l);
    if (in && want && *in != *want)
      throw shape_error(who + ": " + here + ": expected " + std::to_string(*want) + " input " +
                        feature_word<L>() + ", got " + std::to_string(*in) + " from " + from);
    std::optional<std::size_t> out;
    try {
      out = output_features_of(l, want ? want : in);
    } catch (const shape_error& e) { // a composition's own chain: say where it sits
      throw shape_error(who + ": " + here + ": " + e.what());
    }
    from = here;
    return out;
  }

  template <std::size_t I>
  static constexpr bool fuses_with_next() {
    if constexpr (I + 1 < size)
      return detail::relu_fusable<std::tuple_element_t<I, std::tuple<Layers...>>,
                                  std::tuple_element_t<I + 1, std::tuple<Layers...>>>;
    else
      return false;
  }

  /// Layers I.. on x; with a skip callable (not std::nullptr_t), the last layer runs
  /// forward_add_relu(x, *skip) (forward_add_relu above).
  template <std::size_t I, class X, class Skip = std::nullptr_t>
  const output_type& forward_from(const X& x, Skip* skip = nullptr) {
    constexpr bool add_relu = !std::is_same_v<Skip, std::nullptr_t>;
    if constexpr (fuses_with_next<I>()) { // layer I + relu I + 1 in one pass (see the top)
      static_assert(!add_relu || I + 2 < size, "the last layer is a relu, not add_relu_fusable");
      const auto& y = std::get<I + 1>(layers_).forward_fused(std::get<I>(layers_).forward_relu(x));
      if constexpr (I + 2 < size)
        return forward_from<I + 2>(y, skip);
      else
        return y;
    } else if constexpr (add_relu && I + 1 == size) {
      return std::get<I>(layers_).forward_add_relu(x, *skip);
    } else {
      const auto& y = std::get<I>(layers_).forward(x);
      if constexpr (I + 1 < size)
        return forward_from<I + 1>(y, skip);
      else
        return y;
    }
  }
  template <std::size_t I, class DY>
  const input_type& backward_from(const DY& dy) {
    const auto& dx = std::get<I>(layers_).backward(dy);
    if constexpr (I > 0)
      return backward_from<I - 1>(dx);
    else
      return dx;
  }

  template <std::size_t I, class DY, class Hook>
  const input_type& backward_hooked(const DY& dy, Hook& hook) {
    auto& layer = std::get<I>(layers_);
    const auto& dx = layer.backward(dy);
    layer.visit_parameters([&](param_ref<value_type>& p) { visit_prefixed(name_, p, hook); });
    if constexpr (I > 0)
      return backward_hooked<I - 1>(dx, hook);
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
