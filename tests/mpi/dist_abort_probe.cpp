// A job that fails on one rank while the others wait in a collective (run by
// dist_abort_probe.cmake under mpirun -np 2). Mode (argv[1]):
//   throw   rank 1 throws inside run_or_abort: abort_job prints "rank 1: <message>" and
//           MPI_Abort ends every rank
//   kill    rank 1 dies of SIGKILL (no handler can run): mpirun must end the job by itself
// Rank 0 waits in an all-reduce that rank 1 never joins: without the abort it would hang.
#include <bitgrad/dist/abort.hpp>
#include <bitgrad/dist/communicator.hpp>
#include <bitgrad/dist/session.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  bitgrad::dist::session mpi(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "throw";
  return bitgrad::dist::run_or_abort([&] {
    bitgrad::dist::communicator comm;
    comm.barrier();
    if (comm.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300)); // rank 0 is waiting by now
      if (mode == "kill") std::raise(SIGKILL);
      throw std::runtime_error("deliberate failure in step 7 (dist_abort_probe)");
    }
    double x = 1;
    comm.all_reduce_sum(std::span<double>(&x, 1)); // never completes: rank 1 is gone
    std::printf("rank %d: the all-reduce returned, which it must not\n", comm.rank());
    return 0;
  });
}
