// Errors in a data-parallel job: an exception on one rank must end the whole job with the
// rank and the message shown, never leave the other ranks waiting in a collective forever.
//
//   abort_job(message, code)   writes "rank R: message\n" to stderr in one write and calls
//                              MPI_Abort(MPI_COMM_WORLD, code): mpirun (or srun) kills every
//                              rank and exits non-zero.
//   run_or_abort(body)         returns body(); an exception escaping it goes to abort_job
//                              with its what() (code 1).
// Errors that every rank detects together (the agreement checks of dist/agreement.hpp throw
// the same exception on every rank) may be caught and handled normally instead.
#pragma once

#include <bitgrad/dist/communicator.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mpi.h>
#include <string>
#include <string_view>
#include <type_traits>
#include <unistd.h>

namespace bitgrad::dist {

/// Prints "rank R: message" on stderr and aborts every rank of the job with exit code `code`
/// (non-zero; 0 becomes 1). Without an active MPI, prints "rank 0: message" and exits.
[[noreturn]] inline void abort_job(std::string_view message, int code = 1) noexcept {
  if (code == 0) code = 1;
  int rank = 0;
  const bool active = mpi_active();
  if (active) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::string line;
  try {
    line = "rank " + std::to_string(rank) + ": " + std::string(message) + "\n";
  } catch (...) {
    line = "rank ?: out of memory while reporting an error\n";
  }
  // One write(2): lines of different ranks do not interleave mid-line.
  std::fflush(stdout);
  std::fflush(stderr);
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (active) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code); // MPI_Abort does not return; without MPI, or if it did
}

/// body(), with any escaping exception turned into abort_job(what()).
template <class F>
decltype(auto) run_or_abort(F&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    abort_job(e.what());
  } catch (...) {
    abort_job("unknown exception");
  }
}

} // namespace bitgrad::dist
