// Averaging gradients across ranks in buckets, started while the backward pass still runs.
//
// Data-parallel step on rank r of p (n_r images of a global batch of b; weight w_r = n_r / b):
//   net.zero_grad(); forward; loss (mean over the n_r images); backward   -> g_r
//   reducer.begin_step(params, w_r) ... hook calls during backward ... reducer.finish()
//   afterwards, on every rank:  grad = sum_r w_r * g_r   (= the gradient of the mean loss over
//   the global batch, as one process computes it, up to the order of the additions)
//
// Buckets: the parameter tensors, in REVERSE visitation order (the order backward finishes
// them: the last layer's gradients are final first), are cut into buckets of about
// bucket_bytes (a bucket closes once it holds at least bucket_bytes; a tensor is never split).
// Each bucket is one contiguous buffer: its gradients are copied in scaled by w_r, reduced in
// one collective, and copied back. Buckets start strictly in bucket order (every rank issues
// the same collectives in the same order, as MPI requires), bucket k as soon as buckets
// 0..k have all their gradients final (overlap on, through the hook of dist/backward_hook.hpp);
// finish() starts what is left and waits. Each hook call also tests the requests in flight:
// MPI libraries progress non-blocking collectives mostly inside MPI calls.
//
// Reduction order (reducer_options::order):
//   fixed (default)  deterministic for any rank count and any MPI library: each bucket is cut
//                    into p chunks ([c n / p, (c+1) n / p)); MPI_Ialltoallv sends chunk c of
//                    every rank to rank c, which adds the p contributions in rank order,
//                        s = (((w_0 g_0 + w_1 g_1) + w_2 g_2) + ... )     (in T arithmetic)
//                    and MPI_Iallgatherv hands the summed chunks to every rank. Every rank
//                    gets bit-identical gradients, the same in every run with the same rank
//                    count, and equal to that serial sum (what the tests check). Traffic per
//                    rank: 2 (p-1)/p x bucket bytes, as a ring all-reduce.
//   mpi              MPI_Iallreduce (MPI_SUM): the library chooses the algorithm and the order
//                    of the additions. With 2 ranks the sum of two values is commutative, so
//                    the result equals the fixed order bit for bit; for more ranks MPI does not
//                    promise a fixed order (Open MPI's choice depends on message size and rank
//                    count), so results may differ in the last bits from run to run or between
//                    libraries: compare within a tolerance.
// The sum is formed from the scaled contributions w_r g_r (scale, then add). With p a power of
// two and equal slices (w_r = 1/p, exact in binary) that equals "sum, then multiply by 1/p".
//
// Rules for the caller (the trainer's step):
//   - begin_step before backward, finish after it, on every rank, every step (collective;
//     a rank with an empty slice calls both with weight 0 and reports nothing);
//   - a reported gradient must not change until finish() returns;
//   - what is the same on every rank (size penalty, weight decay, clipping, the optimizer)
//     goes after finish(), on the averaged gradients.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/communicator.hpp>

#include <chrono>
#include <cstddef>
#include <mpi.h>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace bitgrad::dist {

enum class reduction_order {
  fixed, ///< rank-order sum of MPI_Ialltoallv'd chunks, then MPI_Iallgatherv (deterministic)
  mpi    ///< MPI_Iallreduce (the library's order)
};

struct reducer_options {
  std::size_t bucket_bytes = std::size_t{1} << 20; ///< close a bucket at >= this many bytes
  reduction_order order = reduction_order::fixed;
  bool overlap = true; ///< false: hook calls only record; every bucket starts in finish()
};

/// Averages parameter gradients across the ranks of a communicator; see the top of this header.
/// T: the parameter element type (float or double).
template <class T>
class gradient_reducer {
public:
  /// Where a bucket's tensors are: entries [first, first + count) of the reverse visitation
  /// order, `elements` scalars in all.
  struct bucket_info {
    std::size_t first = 0, count = 0, elements = 0;
  };

  /// Builds the buckets from `params` (a parameter visitor: [&](auto&& f) {
  /// net.visit_parameters(f); }). Collective. Throws config_error on every rank if the ranks'
  /// parameter lists (names, sizes, kinds) differ, naming the first difference.
  template <class Params>
  gradient_reducer(const communicator& comm, Params&& params, reducer_options options = {})
      : comm_(comm.duplicate()), gather_comm_(comm.duplicate()), options_(options) {
    std::string layout;
    params([&](param_ref<T>& p) {
      entries_.push_back({p.name, p.size, p.kind, p.value, p.grad, 0, 0});
      layout += p.name + " " + std::to_string(p.size) + " " + to_string(p.kind) + "\n";
    });
    check_same_text(comm_, "the parameter lists", layout);
    std::vector<entry> reversed(entries_.rbegin(), entries_.rend());
    entries_ = std::move(reversed);
    build_buckets();
    ready_.assign(entries_.size(), 0);
    index_pointers();
  }

  gradient_reducer(const gradient_reducer&) = delete;
  gradient_reducer& operator=(const gradient_reducer&) = delete;

  /// Starts a step: refreshes the gradient pointers from `params` (the same tensors as at
  /// construction, checked) and sets this rank's weight w_r (n_r / b; 0 for an empty slice).
  template <class Params>
  void begin_step(Params&& params, double weight) {
    if (in_step_)
      throw config_error("gradient_reducer::begin_step: the previous step's finish() "
                         "was not called");
    std::size_t i = entries_.size();
    params([&](param_ref<T>& p) {
      if (i == 0 || entries_[i - 1].name != p.name || entries_[i - 1].size != p.size)
        throw config_error("gradient_reducer::begin_step: the parameter list changed since "
                           "construction (at " +
                           p.name + ")");
      --i;
      entries_[i].value = p.value;
      entries_[i].grad = p.grad;
    });
    if (i != 0)
      throw config_error("gradient_reducer::begin_step: the parameter list changed since "
                         "construction (fewer tensors)");
    index_pointers();
    weight_ = static_cast<T>(weight);
    ready_.assign(entries_.size(), 0);
    for (bucket& b : buckets_) b.waiting = b.info.count;
    next_start_ = next_gather_ = started_early_ = 0;
    in_step_ = true;
  }

  /// The hook (dist/backward_hook.hpp): p's gradient is final for this step.
  void gradient_ready(const param_ref<T>& p) {
    if (!in_step_) throw config_error("gradient_reducer: gradient_ready outside a step");
    const auto it = by_grad_.find(p.grad);
    if (it == by_grad_.end())
      throw config_error("gradient_reducer: gradient_ready for '" + p.name +
                         "', which is not one of the reducer's parameters");
    const std::size_t i = it->second;
    if (ready_[i])
      throw config_error("gradient_reducer: '" + p.name + "' was reported twice in one step");
    ready_[i] = 1;
    --buckets_[entries_[i].bucket].waiting;
    if (!options_.overlap) return;
    const std::size_t before = next_start_;
    start_complete_buckets();
    started_early_ += next_start_ - before;
    progress();
  }

  /// A hook object for backward_with_hook / the container: calls gradient_ready.
  auto hook() {
    return [this](param_ref<T>& p) { gradient_ready(p); };
  }

  /// Starts the buckets not started yet (their gradients are taken as final), waits for all,
  /// and writes sum_r w_r g_r into every gradient. Collective.
  void finish() {
    if (!in_step_) throw config_error("gradient_reducer::finish without begin_step");
    const auto t0 = std::chrono::steady_clock::now();
    for (bucket& b : buckets_) b.waiting = 0;
    start_complete_buckets();
    if (options_.order == reduction_order::fixed) {
      for (std::size_t k = next_gather_; k < buckets_.size(); ++k) {
        buckets_[k].req.wait();
        sum_and_start_gather(k);
      }
      next_gather_ = buckets_.size();
    }
    for (bucket& b : buckets_) b.req.wait();
    for (const entry& e : entries_) {
      const T* src = buckets_[e.bucket].data.data() + e.offset;
      for (std::size_t i = 0; i < e.size; ++i) e.grad[i] = src[i];
    }
    in_step_ = false;
    finish_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  const std::vector<bucket_info>& buckets() const {
    infos_.clear();
    for (const bucket& b : buckets_) infos_.push_back(b.info);
    return infos_;
  }
  /// Parameter names in reverse visitation order (bucket_info::first indexes this).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const entry& e : entries_) out.push_back(e.name);
    return out;
  }
  /// Scalars all-reduced per step, and their bytes (the payload; the traffic of a ring or of
  /// the fixed order is 2 (p-1)/p times the bytes per rank).
  std::size_t elements() const {
    std::size_t n = 0;
    for (const entry& e : entries_) n += e.size;
    return n;
  }
  std::size_t bytes_per_step() const { return elements() * sizeof(T); }
  /// Buckets started from hook calls (before finish()) in the last step.
  std::size_t started_early() const noexcept { return started_early_; }
  /// Seconds the last finish() took (starting the rest, waiting, copying back).
  double finish_seconds() const noexcept { return finish_seconds_; }
  const reducer_options& options() const noexcept { return options_; }

private:
  struct entry {
    std::string name;
    std::size_t size;
    param_kind kind;
    T* value;
    T* grad;
    std::size_t bucket; // index into buckets_
    std::size_t offset; // in the bucket's buffer
  };
  struct bucket {
    bucket_info info;
    std::size_t waiting = 0; // tensors not reported yet this step
    std::vector<T> data;     // info.elements: scaled gradients in, sums out
    std::vector<T> gathered; // fixed order: p contributions to this rank's chunk
    std::vector<int> chunk_counts, chunk_displs; // chunk c: [displs[c], displs[c] + counts[c])
    std::vector<int> recv_counts, recv_displs;   // rank s's contribution in `gathered`
    request req; // the collective in flight (fixed order: the exchange, then the gather)
  };

  void build_buckets() {
    const std::size_t p = static_cast<std::size_t>(comm_.size());
    std::size_t bytes = 0;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (buckets_.empty() || bytes >= options_.bucket_bytes) {
        buckets_.emplace_back();
        buckets_.back().info.first = i;
        bytes = 0;
      }
      bucket& b = buckets_.back();
      entries_[i].bucket = buckets_.size() - 1;
      entries_[i].offset = b.info.elements;
      ++b.info.count;
      b.info.elements += entries_[i].size;
      bytes += entries_[i].size * sizeof(T);
    }
    const std::size_t me = static_cast<std::size_t>(comm_.rank());
    for (bucket& b : buckets_) {
      const std::size_t n = b.info.elements;
      detail::mpi_count(n, "gradient_reducer bucket");
      b.data.resize(n);
      b.chunk_counts.resize(p);
      b.chunk_displs.resize(p);
      for (std::size_t c = 0; c < p; ++c) {
        b.chunk_displs[c] = static_cast<int>(c * n / p);
        b.chunk_counts[c] = static_cast<int>((c + 1) * n / p - c * n / p);
      }
      const std::size_t mine = static_cast<std::size_t>(b.chunk_counts[me]);
      b.gathered.resize(p * mine);
      b.recv_counts.assign(p, static_cast<int>(mine));
      b.recv_displs.resize(p);
      for (std::size_t s = 0; s < p; ++s) b.recv_displs[s] = static_cast<int>(s * mine);
    }
  }

  void index_pointers() {
    by_grad_.clear();
    for (std::size_t i = 0; i < entries_.size(); ++i) by_grad_[entries_[i].grad] = i;
  }

  /// Starts, in bucket order, every bucket whose tensors have all been reported.
  void start_complete_buckets() {
    while (next_start_ < buckets_.size() && buckets_[next_start_].waiting == 0)
      start(next_start_++);
  }

  void start(std::size_t k) {
    bucket& b = buckets_[k];
    for (std::size_t i = b.info.first; i < b.info.first + b.info.count; ++i) {
      const entry& e = entries_[i];
      T* dst = b.data.data() + e.offset;
      for (std::size_t j = 0; j < e.size; ++j) dst[j] = weight_ * e.grad[j];
    }
    if (comm_.size() == 1) return; // the sum over one rank is its own contribution
    if (options_.order == reduction_order::mpi) {
      b.req = comm_.start_all_reduce_sum(std::span<T>(b.data));
    } else {
      MPI_Request r = MPI_REQUEST_NULL;
      check_mpi(MPI_Ialltoallv(b.data.data(), b.chunk_counts.data(), b.chunk_displs.data(),
                               mpi_type<T>(), b.gathered.data(), b.recv_counts.data(),
                               b.recv_displs.data(), mpi_type<T>(), comm_.get(), &r),
                "MPI_Ialltoallv");
      b.req = request(r);
    }
  }

  /// Fixed order: adds the p contributions to this rank's chunk in rank order, then starts
  /// handing the summed chunks to every rank.
  void sum_and_start_gather(std::size_t k) {
    bucket& b = buckets_[k];
    if (comm_.size() == 1) return;
    const std::size_t p = static_cast<std::size_t>(comm_.size());
    const std::size_t me = static_cast<std::size_t>(comm_.rank());
    const std::size_t len = static_cast<std::size_t>(b.chunk_counts[me]);
    T* out = b.data.data() + b.chunk_displs[me];
    const T* in = b.gathered.data();
    for (std::size_t i = 0; i < len; ++i) {
      T s = in[i];
      for (std::size_t r = 1; r < p; ++r) s += in[r * len + i];
      out[i] = s;
    }
    MPI_Request r = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, b.data.data(),
                              b.chunk_counts.data(), b.chunk_displs.data(), mpi_type<T>(),
                              gather_comm_.get(), &r),
              "MPI_Iallgatherv");
    b.req = request(r);
  }

  /// Tests the requests in flight (MPI progresses mostly inside calls) and, in the fixed
  /// order, starts the gathers whose exchange completed, in bucket order.
  void progress() {
    if (comm_.size() == 1) return;
    if (options_.order == reduction_order::fixed) {
      while (next_gather_ < next_start_ && buckets_[next_gather_].req.test()) {
        sum_and_start_gather(next_gather_);
        ++next_gather_;
      }
    }
    for (std::size_t k = 0; k < next_start_; ++k)
      if (buckets_[k].req.pending()) buckets_[k].req.test();
  }

  communicator comm_;        // the exchanges (fixed) or the all-reduces (mpi), in bucket order
  communicator gather_comm_; // the gathers (fixed), in bucket order
  reducer_options options_;
  std::vector<entry> entries_; // reverse visitation order
  std::vector<bucket> buckets_;
  mutable std::vector<bucket_info> infos_;
  std::unordered_map<const T*, std::size_t> by_grad_;
  std::vector<char> ready_;
  T weight_ = T(1);
  bool in_step_ = false;
  std::size_t next_start_ = 0, next_gather_ = 0, started_early_ = 0;
  double finish_seconds_ = 0;
};

} // namespace bitgrad::dist
