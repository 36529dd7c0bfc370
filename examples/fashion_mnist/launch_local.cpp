// fashion_mnist's launch without MPI (a build without bitgrad::mpi): one process.
#include "run.hpp"

#include <cstdio>
#include <exception>

namespace fashion_mnist {

bool checks_run_folder() {
  return true;
}

int launch(settings& cfg) {
  try {
    return run_policy(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    return 1;
  }
}

} // namespace fashion_mnist
