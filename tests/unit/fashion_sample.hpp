// The committed Fashion-MNIST sample (tests/data/fashion-sample), each split loaded once per
// test program. BITGRAD_TEST_DATA_DIR is set by the test's CMakeLists.txt.
#pragma once

#include <bitgrad/data/dataset.hpp>

#include <filesystem>

namespace bitgrad::testing {

inline const std::filesystem::path fashion_sample =
    std::filesystem::path(BITGRAD_TEST_DATA_DIR) / "fashion-sample";

inline const dataset& sample_train() {
  static const dataset d = load_mnist_format(fashion_sample / "train-images-idx3-ubyte.gz",
                                             fashion_sample / "train-labels-idx1-ubyte.gz");
  return d;
}

inline const dataset& sample_test() {
  static const dataset d = load_mnist_format(fashion_sample / "t10k-images-idx3-ubyte.gz",
                                             fashion_sample / "t10k-labels-idx1-ubyte.gz");
  return d;
}

} // namespace bitgrad::testing
