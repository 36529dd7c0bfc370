// The MPI communicator bitgrad's data-parallel training talks through (component bitgrad::mpi,
// CMake: find_package(bitgrad CONFIG COMPONENTS mpi), target bitgrad::mpi).
//
// Words:
//   rank       this process's number in the communicator, 0 .. size-1. Rank 0 writes files.
//   collective an operation every rank of the communicator must call, in the same order
//              (barrier, broadcast, all-reduce, all-gather); a rank that skips one makes the
//              others wait forever, which is why errors go through dist/abort.hpp.
//   request    a started non-blocking collective (MPI_Iallreduce, ...); its buffer must stay
//              alive and untouched until the request completes (test() true, or wait()).
//
// communicator duplicates the MPI communicator it is given (MPI_COMM_WORLD by default), so
// bitgrad's messages never match the caller's, and sets MPI_ERRORS_RETURN on the duplicate: a
// failed call throws mpi_error naming the call and MPI's message instead of killing the job
// silently. MPI must be initialised first (dist/session.hpp does it, or the caller did).
//
// Threads: only the thread that initialised MPI calls it (MPI_THREAD_FUNNELED is enough);
// bitgrad's OpenMP kernels never call MPI.
#pragma once

#include <bitgrad/core/error.hpp>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mpi.h>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace bitgrad::dist {

/// An MPI call failed; the message names the call and gives MPI's error string.
struct mpi_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Throws mpi_error unless rc is MPI_SUCCESS.
inline void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) length = 0;
  throw mpi_error(std::string(call) + " failed: " +
                  (length > 0 ? std::string(text, static_cast<std::size_t>(length))
                              : "MPI error " + std::to_string(rc)));
}

/// True between MPI_Init and MPI_Finalize.
inline bool mpi_active() noexcept {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

/// The MPI datatype of T: float, double, and the fixed-width integers.
template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return MPI_INT32_T;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return MPI_UINT32_T;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return MPI_UINT64_T;
  else if constexpr (std::is_same_v<T, std::byte> || std::is_same_v<T, char> ||
                     std::is_same_v<T, unsigned char>)
    return MPI_BYTE;
  else
    static_assert(sizeof(T) == 0, "mpi_type: no MPI datatype for this type");
}

namespace detail {
/// An element count as MPI's int; throws config_error beyond INT_MAX.
inline int mpi_count(std::size_t n, const char* who) {
  if (n > static_cast<std::size_t>(INT_MAX))
    throw config_error(std::string(who) + ": " + std::to_string(n) +
                       " elements exceed MPI's count limit " + std::to_string(INT_MAX) +
                       " (use smaller buckets)");
  return static_cast<int>(n);
}
} // namespace detail

/// A started non-blocking collective. Move-only. Destroying a pending request waits for it
/// (its buffer may be released right after), except while an exception unwinds: then the
/// request is abandoned, as the job is about to be aborted (dist/abort.hpp) and waiting could
/// hang on a rank that will never join.
class request {
public:
  request() = default;
  explicit request(MPI_Request r) : r_(r) {}
  request(request&& other) noexcept : r_(std::exchange(other.r_, MPI_REQUEST_NULL)) {}
  request& operator=(request&& other) noexcept {
    if (this != &other) {
      finish_quietly();
      r_ = std::exchange(other.r_, MPI_REQUEST_NULL);
    }
    return *this;
  }
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request() { finish_quietly(); }

  /// True while the operation may still be running.
  bool pending() const noexcept { return r_ != MPI_REQUEST_NULL; }
  /// Advances MPI's progress; true when the operation has completed (or there was none).
  bool test() {
    if (r_ == MPI_REQUEST_NULL) return true;
    int done = 0;
    check_mpi(MPI_Test(&r_, &done, MPI_STATUS_IGNORE), "MPI_Test");
    return done != 0;
  }
  /// Blocks until the operation has completed.
  void wait() {
    if (r_ == MPI_REQUEST_NULL) return;
    check_mpi(MPI_Wait(&r_, MPI_STATUS_IGNORE), "MPI_Wait");
  }

private:
  void finish_quietly() noexcept {
    if (r_ == MPI_REQUEST_NULL) return;
    if (std::uncaught_exceptions() == 0 && mpi_active()) MPI_Wait(&r_, MPI_STATUS_IGNORE);
    r_ = MPI_REQUEST_NULL;
  }
  MPI_Request r_ = MPI_REQUEST_NULL;
};

/// A duplicate of an MPI communicator with bitgrad's collectives; see the top of this header.
/// Move-only; frees its duplicate on destruction (if MPI is still active).
class communicator {
public:
  /// Duplicates `parent` (collective over `parent`). Throws mpi_error if MPI is not
  /// initialised or the duplication fails.
  explicit communicator(MPI_Comm parent = MPI_COMM_WORLD) {
    if (!mpi_active())
      throw mpi_error("dist::communicator: MPI is not initialised (create a dist::session "
                      "first, or call MPI_Init)");
    check_mpi(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup");
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  communicator(communicator&& other) noexcept
      : comm_(std::exchange(other.comm_, MPI_COMM_NULL)), rank_(other.rank_), size_(other.size_) {}
  communicator& operator=(communicator&& other) noexcept {
    if (this != &other) {
      release();
      comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
      rank_ = other.rank_;
      size_ = other.size_;
    }
    return *this;
  }
  communicator(const communicator&) = delete;
  communicator& operator=(const communicator&) = delete;
  ~communicator() { release(); }

  /// Another duplicate of this communicator (collective): a separate channel whose collectives
  /// never match this one's, for independent sequences of non-blocking operations.
  communicator duplicate() const { return communicator(comm_); }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  /// The MPI handle, for calls bitgrad does not wrap.
  MPI_Comm get() const noexcept { return comm_; }

  void barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

  /// Broadcasts `data` (same length on every rank) from `root`; T trivially copyable.
  template <class T>
  void broadcast(std::span<T> data, int root = 0) const {
    static_assert(std::is_trivially_copyable_v<T>, "broadcast: T must be trivially copyable");
    check_mpi(MPI_Bcast(data.data(), detail::mpi_count(data.size_bytes(), "broadcast"), MPI_BYTE,
                        root, comm_),
              "MPI_Bcast");
  }
  /// Returns root's `value` on every rank.
  template <class T>
  T broadcast_value(T value, int root = 0) const {
    broadcast(std::span<T>(&value, 1), root);
    return value;
  }
  /// Root's string on every rank (any length on the other ranks before the call).
  std::string broadcast_string(std::string text, int root = 0) const {
    const auto n = broadcast_value<std::uint64_t>(text.size(), root);
    text.resize(static_cast<std::size_t>(n));
    broadcast(std::span<char>(text.data(), text.size()), root);
    return text;
  }

  /// In place: data[i] = sum over ranks of data[i] (same length on every rank).
  template <class T>
  void all_reduce_sum(std::span<T> data) const {
    all_reduce(data, MPI_SUM, "MPI_Allreduce (sum)");
  }
  template <class T>
  void all_reduce_min(std::span<T> data) const {
    all_reduce(data, MPI_MIN, "MPI_Allreduce (min)");
  }
  template <class T>
  void all_reduce_max(std::span<T> data) const {
    all_reduce(data, MPI_MAX, "MPI_Allreduce (max)");
  }
  /// Starts the sum all-reduce of `data` in place (MPI_Iallreduce); `data` must stay alive and
  /// untouched until the request completes.
  template <class T>
  request start_all_reduce_sum(std::span<T> data) const {
    MPI_Request r = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data.data(),
                             detail::mpi_count(data.size(), "start_all_reduce_sum"), mpi_type<T>(),
                             MPI_SUM, comm_, &r),
              "MPI_Iallreduce");
    return request(r);
  }

  /// Every rank's `value`, indexed by rank.
  template <class T>
  std::vector<T> all_gather(const T& value) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: T must be trivially copyable");
    std::vector<T> out(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&value, static_cast<int>(sizeof(T)), MPI_BYTE, out.data(),
                            static_cast<int>(sizeof(T)), MPI_BYTE, comm_),
              "MPI_Allgather");
    return out;
  }
  /// Every rank's `values` (the same count on every rank), rank after rank.
  template <class T>
  std::vector<T> all_gather(std::span<const T> values) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: T must be trivially copyable");
    const int bytes = detail::mpi_count(values.size_bytes(), "all_gather");
    std::vector<T> out(values.size() * static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(values.data(), bytes, MPI_BYTE, out.data(), bytes, MPI_BYTE, comm_),
              "MPI_Allgather");
    return out;
  }
  /// Every rank's string (lengths may differ), indexed by rank.
  std::vector<std::string> all_gather_strings(const std::string& text) const {
    const std::vector<std::uint64_t> lengths = all_gather<std::uint64_t>(text.size());
    std::vector<int> counts(lengths.size()), displs(lengths.size());
    std::size_t total = 0;
    for (std::size_t r = 0; r < lengths.size(); ++r) {
      displs[r] = detail::mpi_count(total, "all_gather_strings");
      counts[r] = detail::mpi_count(static_cast<std::size_t>(lengths[r]), "all_gather_strings");
      total += static_cast<std::size_t>(lengths[r]);
    }
    std::string all(total, '\0');
    check_mpi(MPI_Allgatherv(text.data(), counts[static_cast<std::size_t>(rank_)], MPI_BYTE,
                             all.data(), counts.data(), displs.data(), MPI_BYTE, comm_),
              "MPI_Allgatherv");
    std::vector<std::string> out;
    for (std::size_t r = 0; r < lengths.size(); ++r)
      out.push_back(all.substr(static_cast<std::size_t>(displs[r]), lengths[r]));
    return out;
  }

private:
  template <class T>
  void all_reduce(std::span<T> data, MPI_Op op, const char* call) const {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data(), detail::mpi_count(data.size(), call),
                            mpi_type<T>(), op, comm_),
              call);
  }
  void release() noexcept {
    if (comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

} // namespace bitgrad::dist
