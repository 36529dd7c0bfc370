// Compiled (not run) by g++ at -O3 -march=x86-64-v4 with -Wall -Wextra -Werror: the model file
// and the runtime, the headers a deployed program includes, must not trip GCC's optimiser
// warnings. GCC 12 reported a false -Wrestrict inside char_traits for shape::str() at -O3
// (issue #17: `make bench` failed on Intel AVX-512 machines).
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  using namespace bitgrad;
  const auto n = static_cast<std::uint32_t>(argc);
  std::puts(format::shape::image(n, 28, 28).str().c_str());
  std::puts(format::shape::features(n * 10).str().c_str());
  if (argc > 1) {
    try {
      const deploy::runtime rt = deploy::runtime::load(argv[1]);
      std::printf("%s -> %s\n", rt.model().input.str().c_str(), rt.model().output().str().c_str());
    } catch (const std::exception& e) {
      std::puts(e.what());
      return 1;
    }
  }
  return 0;
}
