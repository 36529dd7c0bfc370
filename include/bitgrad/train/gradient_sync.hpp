// How a training step shares its work with other processes (data-parallel training): the
// trainer's and train_step's hook, MPI-free. The trainer and train_step take a gradient_sync
// pointer; none (nullptr) is one process, and every call below is skipped. The MPI
// implementation is dist::data_parallel (include/bitgrad/dist/data_parallel.hpp, component
// bitgrad::mpi); a test can implement this interface without MPI.
//
// Words: the job runs `ranks()` copies of the same program (replicas), each holding the whole
// network; replica `rank()` trains on its slice of every global batch (data/loader.hpp:
// shard_slice). Rank 0 writes every file and prints.
//
// What the trainer and train_step call, and when (every call is collective: every rank makes
// it, in the same order):
//   check_same_text(what, text)    at the start of run(): the settings (every option that
//                                  changes the result) must be the same on every rank
//   check_same_dataset(data, what) the training and test sets must be the same on every rank
//   begin_phase(params)            a phase starts training these parameters (the FP32 network's
//                                  or the quantized one's): the ranks' parameter lists and
//                                  values must agree (checked), the reduction is set up
//   sum(values)                    values := their sum over the ranks (a step's loss, correct
//                                  and image counts; evaluation counts)
//   begin_step(weight)             before backward: this rank's share w_r = n_r / b of the
//                                  global batch of b images (n_r its own; 0 for an empty slice)
//   gradient_ready(p)              during backward (overlap()): p's gradient is final
//   finish_step()                  after backward: every gradient := sum_r w_r g_r, the
//                                  gradient of the mean loss over the global batch
//   check_same_parameters(params, when)  the parameters are bit-identical on every rank
//   broadcast(bytes)               rank 0's bytes to every rank (a checkpoint to resume from)
#pragma once

#include <bitgrad/core/parameter.hpp>

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace bitgrad {
struct dataset; // data/dataset.hpp; only an implementation of check_same_dataset reads it
}

namespace bitgrad::train {

/// The interface of the top of this header. T: the parameters' element type.
template <class T>
class gradient_sync {
public:
  /// A parameter visitor with its type erased: calls its argument on every parameter.
  using parameters = std::function<void(const std::function<void(param_ref<T>&)>&)>;

  virtual ~gradient_sync() = default;
  virtual std::size_t rank() const = 0;
  virtual std::size_t ranks() const = 0;
  /// True: train_step reports each layer's parameters to gradient_ready as backward finishes
  /// them (the reduction may start during backward); false: all at finish_step().
  virtual bool overlap() const = 0;

  virtual void check_same_text(std::string_view what, const std::string& text) = 0;
  virtual void check_same_dataset(const dataset& data, std::string_view what) = 0;
  virtual void check_same_parameters(const parameters& params, std::string_view when) = 0;
  virtual void broadcast(std::string& bytes) = 0;
  virtual void sum(std::span<double> values) = 0;

  virtual void begin_phase(const parameters& params) = 0;
  virtual void begin_step(double weight) = 0;
  virtual void gradient_ready(param_ref<T>& p) = 0;
  virtual void finish_step() = 0;
};

/// `net`'s parameters as gradient_sync<T>::parameters.
template <class Net>
typename gradient_sync<typename Net::value_type>::parameters parameters_of(Net& net) {
  using T = typename Net::value_type;
  return [&net](const std::function<void(param_ref<T>&)>& f) { net.visit_parameters(f); };
}

} // namespace bitgrad::train
