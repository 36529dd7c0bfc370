// Pretrained weights in: load weights, biases and batch-norm statistics by parameter name from
// an .npz (io/npz.hpp) into a bitgrad network; and save_npz, its exact inverse.
//
//   auto net = nn::lenet5<float>({});
//   train::load_npz(net, "lenet5.npz");     // every name must match, every shape must fit
//
// Names (the full layer names of nn::visit_layers, as visit_parameters prints them):
//   conv2d, linear   <layer>.weight, <layer>.bias (when the layer has a bias)
//   batch_norm       <layer>.gamma, <layer>.beta, <layer>.running_mean, <layer>.running_var
// (PyTorch names batch norm's gamma and beta "weight" and "bias", and adds num_batches_tracked:
// rename / drop them when saving, as examples/pytorch_lenet5.py does.)
//
// Layouts: no conversion is needed from PyTorch. A conv weight is (out, in / groups, kh, kw)
// row-major in both (PyTorch's nn.Conv2d.weight is bitgrad's conv2d weight, element for
// element, and both compute the cross-correlation y[o] = sum w[o][c][i][j] x[c][h+i][w+j]); a
// linear weight is (out, in) in both (y = x W^T + b). Arrays must be C-ordered, float32 or
// float64 (converted to the network's element type).
//
// Errors (config_error, naming the file and the array): a parameter with no array, an array
// with no parameter, a shape that does not match, a dtype bitgrad does not take, a non-finite
// value. Nothing is written into the network unless every array passes.
//
// A network with quantizers whose state is initialised from the weights (scales, ranges):
// call rebind_quantizers(net) (train/model_info.hpp) after loading, as the trainer does when it
// copies FP32 weights into the quantized twin.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/xt.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/npz.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/npz_export.hpp>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace bitgrad::train {

namespace detail {

/// One parameter tensor the loader fills: its full name, shape and storage.
template <class T>
struct named_tensor {
  std::string name;
  std::vector<std::size_t> shape;
  T* data;
  std::string owner; ///< "conv1 (conv2d 1->6 5x5 ...)" for messages
};

template <class T, class Net>
std::vector<named_tensor<T>> loadable_tensors(Net& net) {
  std::vector<named_tensor<T>> out;
  auto add = [&](const std::string& layer, const std::string& what, auto& tensor,
                 const std::string& describe) {
    std::vector<std::size_t> shape(tensor.shape().begin(), tensor.shape().end());
    out.push_back(
        {layer + "." + what, std::move(shape), tensor.data(), layer + " (" + describe + ")"});
  };
  auto visit = [&](std::string_view full, auto& l) {
    using L = std::remove_cvref_t<decltype(l)>;
    const std::string name(full);
    if constexpr (nn::quantized_layer<L>) { // conv2d, linear
      add(name, "weight", l.weight(), l.describe());
      if (l.has_bias()) add(name, "bias", l.bias(), l.describe());
    } else if constexpr (is_batch_norm<L>) {
      add(name, "gamma", l.gamma(), l.describe());
      add(name, "beta", l.beta(), l.describe());
      add(name, "running_mean", l.running_mean(), l.describe());
      add(name, "running_var", l.running_var(), l.describe());
    }
  };
  nn::visit_layers(net, visit);
  return out;
}

inline std::string shape_text(const std::vector<std::size_t>& s) {
  std::string t = "(";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) t += ", ";
    t += std::to_string(s[i]);
  }
  return t + (s.size() == 1 ? ",)" : ")");
}

} // namespace detail

/// The parameter names load_npz expects for `net`, in network order.
template <class Net>
std::vector<std::string> npz_parameter_names(Net& net) {
  std::vector<std::string> names;
  for (const auto& t : detail::loadable_tensors<typename Net::value_type>(net))
    names.push_back(t.name);
  return names;
}

/// Loads `arrays` (read from `file`) into net; see the top of this header.
template <class Net>
void load_arrays(Net& net, const std::vector<npy_array>& arrays, const std::string& file) {
  using T = typename Net::value_type;
  const auto targets = detail::loadable_tensors<T>(net);
  std::map<std::string, const npy_array*> by_name;
  for (const npy_array& a : arrays)
    if (!by_name.emplace(a.name, &a).second)
      throw config_error(file + ": array '" + a.name + "' appears twice");
  // Every check before the first write.
  std::vector<std::vector<double>> values(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    const auto it = by_name.find(t.name);
    if (it == by_name.end())
      throw config_error(file + ": no array '" + t.name + "' for " + t.owner + ", expected shape " +
                         detail::shape_text(t.shape));
    const npy_array& a = *it->second;
    if (a.shape != t.shape)
      throw config_error(file + ": '" + t.name + "' has shape " + a.shape_string() + ", " +
                         t.owner + " expects " + detail::shape_text(t.shape));
    try {
      values[i] = a.to_doubles();
    } catch (const config_error& e) {
      throw config_error(file + ": " + e.what());
    }
    for (std::size_t k = 0; k < values[i].size(); ++k)
      if (!std::isfinite(values[i][k]))
        throw config_error(file + ": '" + t.name + "' holds a non-finite value at element " +
                           std::to_string(k));
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    std::string extra, expected;
    for (const auto& [name, a] : by_name) extra += (extra.empty() ? "'" : ", '") + name + "'";
    for (const auto& t : targets) expected += (expected.empty() ? "" : ", ") + t.name;
    throw config_error(file + ": " + extra + (by_name.size() == 1 ? " matches" : " match") +
                       " no parameter of the network (it takes: " + expected + ")");
  }
  for (std::size_t i = 0; i < targets.size(); ++i)
    for (std::size_t k = 0; k < values[i].size(); ++k)
      targets[i].data[k] = static_cast<T>(values[i][k]);
}

/// Loads the .npz at path into net (weights, biases, batch-norm statistics by name).
template <class Net>
void load_npz(Net& net, const std::filesystem::path& path) {
  load_arrays(net, read_npz(path), path.string());
}

/// Writes what load_npz reads: every weight, bias and batch-norm statistic of net by name, in
/// the network's element type (float32 or float64), atomically.
template <class Net>
void save_npz(Net& net, const std::filesystem::path& path) {
  using T = typename Net::value_type;
  std::vector<npy_entry> entries;
  for (const auto& t : detail::loadable_tensors<T>(net)) {
    std::size_t n = 1;
    for (std::size_t d : t.shape) n *= d;
    xt::xarray<T> a = xt::adapt(t.data, n, xt::no_ownership(), t.shape);
    entries.push_back({t.name, xt::dump_npy(a)});
  }
  write_file_atomically(path, zip_npy_entries(entries));
}

} // namespace bitgrad::train
