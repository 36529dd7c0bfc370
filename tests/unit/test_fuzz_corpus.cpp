// The committed fuzz seed corpora (tests/fuzz/corpus/<target>/) still mean what their names
// say: every "valid-*" file parses, every other file is rejected with format_error. A format
// change that invalidates the seeds fails here; regenerate them with make_seed_corpus (see
// tests/fuzz/make_seed_corpus.cpp). Crash-freedom on these files and on the regression inputs
// is checked by the ctest tests fuzz_replay.<target>.
#include "../fuzz/checkpoint_net.hpp"

#include <bitgrad/data/cifar.hpp>
#include <bitgrad/data/idx.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/train/checkpoint.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace test_fuzz_corpus {

namespace fs = std::filesystem;
using namespace bitgrad;

namespace {

const fs::path corpus = fs::path(BITGRAD_TEST_DATA_DIR) / ".." / "fuzz" / "corpus";

using parser = std::function<void(const std::vector<std::uint8_t>&, const std::string&)>;

/// Runs `parse` on every file of corpus/<target>; returns {valid, invalid} counts.
std::pair<int, int> check_corpus(const std::string& target, const parser& parse) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(corpus / target))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  int valid = 0, invalid = 0;
  for (const fs::path& f : files) {
    const std::string name = f.filename().string();
    CAPTURE(name);
    const auto bytes = read_file_bytes(f, 1 << 20);
    if (name.rfind("valid-", 0) == 0) {
      CHECK_NOTHROW(parse(bytes, name));
      ++valid;
    } else {
      CHECK_THROWS_AS(parse(bytes, name), format_error);
      ++invalid;
    }
  }
  return {valid, invalid};
}

} // namespace

TEST_CASE("fuzz seed corpus: idx") {
  const auto [valid, invalid] = check_corpus("idx", [](const auto& bytes, const auto& name) {
    parse_idx(bytes, name, std::uint64_t{1} << 20);
  });
  CHECK(valid >= 5);
  CHECK(invalid >= 5);
}

TEST_CASE("fuzz seed corpus: cifar") {
  const auto [valid, invalid] = check_corpus("cifar", [](const auto& bytes, const auto& name) {
    dataset d;
    append_cifar10(d, bytes, name);
  });
  CHECK(valid >= 2);
  CHECK(invalid >= 3);
}

TEST_CASE("fuzz seed corpus: checkpoint") {
  const auto [valid, invalid] = check_corpus("checkpoint", [](const auto& bytes, const auto& name) {
    auto net = bitgrad_fuzz::checkpoint_net();
    train::parse_checkpoint(bytes, name, net);
  });
  CHECK(valid >= 2);
  CHECK(invalid >= 3);
}

} // namespace test_fuzz_corpus
