// The lifetime of MPI in a program: MPI_Init_thread at construction, MPI_Finalize at
// destruction, unless the caller had initialised MPI already (then the session neither
// initialises nor finalises; the caller keeps ownership).
//
//   int main(int argc, char** argv) {
//     bitgrad::dist::session mpi(argc, argv);   // first: before any communicator
//     bitgrad::dist::communicator comm;          // destroyed before the session
//     return bitgrad::dist::run_or_abort([&] { ...; return 0; });
//   }
//
// Thread level: MPI_THREAD_FUNNELED (only the main thread calls MPI; OpenMP threads inside
// the kernels never do). Under mpirun, Slurm's srun or as a plain program (a "singleton": one
// rank) alike.
#pragma once

#include <bitgrad/dist/communicator.hpp>

#include <mpi.h>
#include <string>

namespace bitgrad::dist {

class session {
public:
  /// Initialises MPI with at least `required` thread support unless it is initialised
  /// already. Throws mpi_error if initialisation fails or gives less thread support than
  /// `required`.
  session(int& argc, char**& argv, int required = MPI_THREAD_FUNNELED) {
    start(&argc, &argv, required);
  }
  /// The same without the command line (MPI does not need it).
  explicit session(int required = MPI_THREAD_FUNNELED) { start(nullptr, nullptr, required); }
  session(const session&) = delete;
  session& operator=(const session&) = delete;
  ~session() {
    if (owner_ && mpi_active()) MPI_Finalize();
  }

  /// True if this session initialised MPI (and will finalise it).
  bool owner() const noexcept { return owner_; }
  /// The thread support MPI provides (MPI_THREAD_SINGLE .. MPI_THREAD_MULTIPLE).
  int thread_level() const noexcept { return provided_; }

private:
  void start(int* argc, char*** argv, int required) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) throw mpi_error("dist::session: MPI was finalised already");
    if (initialized) {
      MPI_Query_thread(&provided_);
    } else {
      check_mpi(MPI_Init_thread(argc, argv, required, &provided_), "MPI_Init_thread");
      owner_ = true;
    }
    if (provided_ < required) {
      if (owner_) MPI_Finalize(); // the destructor will not run: the constructor throws
      owner_ = false;
      throw mpi_error("dist::session: MPI provides thread level " + std::to_string(provided_) +
                      ", below the required " + std::to_string(required));
    }
  }

  bool owner_ = false;
  int provided_ = MPI_THREAD_SINGLE;
};

} // namespace bitgrad::dist
