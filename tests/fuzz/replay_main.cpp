// Replays fuzz inputs through a target's LLVMFuzzerTestOneInput without libFuzzer, so the
// normal (gcc) test build runs every committed corpus file and every regression input:
//
//   fuzz_replay_<target> FILE_OR_DIR...
//
// Directories are walked (sorted, recursively); each file is read and passed to the target
// once. A crash (abort, sanitizer report, uncaught exception) fails the test; the last
// "replaying" line names the input. Exit status 0 when every input ran, 1 when a path is
// missing or no input was found (an empty corpus means a broken setup, not a pass).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg = argv[i];
    if (fs::is_directory(arg)) {
      for (const auto& entry : fs::recursive_directory_iterator(arg))
        if (entry.is_regular_file()) inputs.push_back(entry.path());
    } else if (fs::is_regular_file(arg)) {
      inputs.push_back(arg);
    } else if (!fs::exists(arg)) {
      std::cerr << "fuzz replay: " << arg.string() << " does not exist\n";
      return 1;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  if (inputs.empty()) {
    std::cerr << "fuzz replay: no input files\n";
    return 1;
  }
  for (const fs::path& path : inputs) {
    std::cout << "replaying " << path.string() << std::endl;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::cerr << "fuzz replay: cannot open " << path.string() << '\n';
      return 1;
    }
    const std::vector<char> bytes{std::istreambuf_iterator<char>(in),
                                  std::istreambuf_iterator<char>()};
    std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    // An empty vector has no data(); pass a valid pointer as libFuzzer does.
    static const std::uint8_t empty = 0;
    LLVMFuzzerTestOneInput(data.empty() ? &empty : data.data(), data.size());
  }
  std::cout << "replayed " << inputs.size() << " inputs\n";
  return 0;
}
