// fashion_mnist's launch in a build with bitgrad::mpi: started by an MPI launcher (mpirun,
// mpiexec, srun: its environment says so), the run is data-parallel over every rank
// (dist::data_parallel; docs/distributed.md): rank 0 prints and writes the files, and an error
// on any rank ends the whole job with "rank R: message". Started as a plain program, MPI is
// not initialised at all and the run is the one-process run of launch_local.cpp.
#include "run.hpp"

#include <bitgrad/dist/abort.hpp>
#include <bitgrad/dist/data_parallel.hpp>
#include <bitgrad/dist/session.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <stdexcept>

namespace fashion_mnist {

namespace {

/// True when an MPI launcher started this process (Open MPI, MPICH / Hydra, PMIx, Slurm).
bool started_by_mpi_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

} // namespace

bool checks_run_folder() {
  return !started_by_mpi_launcher();
}

int launch(settings& cfg) {
  if (!started_by_mpi_launcher()) {
    try {
      return run_policy(cfg);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
      return 1;
    }
  }
  bitgrad::dist::session mpi;
  return bitgrad::dist::run_or_abort([&] {
    bitgrad::dist::data_parallel<float> dp;
    // main.cpp left --resume's check to rank 0, the one rank that reads the run folder.
    const auto checkpoint = cfg.trainer.out_dir / "checkpoint.bin";
    if (dp.rank() == 0 && cfg.trainer.resume && !std::filesystem::exists(checkpoint))
      throw std::runtime_error("--resume: no checkpoint to continue from in " +
                               cfg.trainer.out_dir.string() + " (checkpoint.bin)");
    if (dp.ranks() > 1) cfg.sync = &dp;
    const int code = run_policy(cfg);
    cfg.sync = nullptr;
    return code;
  });
}

} // namespace fashion_mnist
