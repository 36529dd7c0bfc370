// The trainer's data-parallel driver over MPI: train::gradient_sync (train/gradient_sync.hpp)
// implemented with this component's communicator, agreement checks and gradient_reducer.
//
//   int main(int argc, char** argv) {
//     bitgrad::dist::session mpi(argc, argv);
//     return bitgrad::dist::run_or_abort([&] {
//       bitgrad::dist::data_parallel<float> dp;            // MPI_COMM_WORLD
//       bitgrad::train::trainer t(fp32, quantized, train_set, test_set, options);
//       t.set_gradient_sync(dp);                           // before run()
//       t.run();                                           // rank 0 writes every file
//       return 0;
//     });
//   }
//
// Each phase gets a fresh gradient_reducer over that phase's network (the FP32 one in
// pretraining, the quantized one after): built at begin_phase, which also checks that the
// ranks' parameters are bit-identical then (the same seed builds the same network; a resumed
// run loads the same checkpoint). Reduction order: reducer_options::order, fixed by default
// (bit-identical to one process's sum of the ranks' contributions, see gradient_reducer.hpp).
// Overlap (starting buckets during backward): off by default, since on the 2-core machine
// this was measured on, the reduction competes with the backward pass for the same cores and
// overlap did not pay (docs/distributed.md, `make bench-mpi`); turn it on with
// reducer_options::overlap where ranks have cores or a network of their own.
#pragma once

#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/communicator.hpp>
#include <bitgrad/dist/gradient_reducer.hpp>
#include <bitgrad/train/gradient_sync.hpp>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace bitgrad::dist {

/// The trainer's train::gradient_sync over MPI; see the top of this header.
template <class T>
class data_parallel final : public train::gradient_sync<T> {
public:
  using parameters = typename train::gradient_sync<T>::parameters;

  /// Duplicates `comm` (collective). options: the reducer's (bucket size, order, overlap).
  explicit data_parallel(const communicator& comm = communicator(),
                         reducer_options options = {.overlap = false})
      : comm_(comm.duplicate()), options_(options) {}

  std::size_t rank() const override { return static_cast<std::size_t>(comm_.rank()); }
  std::size_t ranks() const override { return static_cast<std::size_t>(comm_.size()); }
  bool overlap() const override { return options_.overlap; }

  void check_same_text(std::string_view what, const std::string& text) override {
    dist::check_same_text(comm_, what, text);
  }
  void check_same_dataset(const dataset& data, std::string_view what) override {
    dist::check_same_dataset(comm_, data, what);
  }
  void check_same_parameters(const parameters& params, std::string_view when) override {
    dist::check_same_parameters<T>(comm_, params, when);
  }
  void broadcast(std::string& bytes) override { bytes = comm_.broadcast_string(bytes, 0); }
  void sum(std::span<double> values) override { comm_.all_reduce_sum(values); }

  void begin_phase(const parameters& params) override {
    reducer_.reset();
    params_ = params;
    dist::check_same_parameters<T>(comm_, params_, "the start of a phase");
    reducer_ = std::make_unique<gradient_reducer<T>>(comm_, params_, options_);
  }
  void begin_step(double weight) override { reducer().begin_step(params_, weight); }
  void gradient_ready(param_ref<T>& p) override { reducer().gradient_ready(p); }
  void finish_step() override { reducer().finish(); }

  /// The reducer of the running phase (its buckets, bytes per step, last finish time).
  const gradient_reducer<T>& current_reducer() const { return reducer(); }

private:
  gradient_reducer<T>& reducer() const {
    if (!reducer_) throw config_error("data_parallel: a step before begin_phase");
    return *reducer_;
  }

  communicator comm_;
  reducer_options options_;
  parameters params_;
  std::unique_ptr<gradient_reducer<T>> reducer_;
};

} // namespace bitgrad::dist
