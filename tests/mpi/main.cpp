// The doctest runner of the MPI tests: every rank runs every test case (they are collective);
// rank 0 reports in full, the others only their failures. The exit code is non-zero on every
// rank if any rank had a failure.
#define DOCTEST_CONFIG_IMPLEMENT
#include <bitgrad/dist/session.hpp>

#include <doctest/doctest.h>

#include <mpi.h>

int main(int argc, char** argv) {
  bitgrad::dist::session mpi(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  doctest::Context context(argc, argv);
  if (rank != 0) {
    context.setOption("minimal", true);
    context.setOption("no-colors", true);
  }
  int failed = context.run() != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return failed;
}
