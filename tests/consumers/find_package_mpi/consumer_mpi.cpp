// A small outside program using the installed bitgrad::mpi component: initialises MPI (one
// rank when run without mpirun), sums a gradient-like span over the ranks with the bucketed
// reducer and checks the result.
#include <bitgrad/dist/dist.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  bitgrad::dist::session mpi(argc, argv);
  return bitgrad::dist::run_or_abort([&] {
    bitgrad::dist::communicator comm;
    std::vector<float> value(5, 1.0f), grad(5, 2.0f);
    auto params = [&](auto&& f) {
      bitgrad::param_ref<float> p{"w", value.data(), grad.data(), value.size(),
                                  bitgrad::param_kind::weight};
      f(p);
    };
    bitgrad::dist::gradient_reducer<float> reducer(comm, params);
    reducer.begin_step(params, 1.0 / comm.size());
    reducer.finish();
    const bool ok = grad[4] == 2.0f;
    std::printf("bitgrad::mpi: %d rank(s), averaged gradient %s\n", comm.size(),
                ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
  });
}
