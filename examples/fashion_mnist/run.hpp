// fashion_mnist's settings (main.cpp fills them from the command line) and run_model<Quant>, the
// whole run for one quantizer policy, compiled for the four policies in run.cpp (lenet5,
// vgg-small) and, for frac_bits and fixed_bits, in run_resnet20.cpp (resnet20, the slowest to
// compile: its own translation unit, compiled beside run.cpp; issue #24): main.cpp, which only
// reads the command line, instantiates no network. (One translation unit per policy
// was tried: each repeats the FP32 twins and the trainer's common code, 54 s of CPU each against
// 94 s for all four in one; issue #18.) The trainer itself, the largest part, is compiled once
// for this example and the Pareto study in the library bitgrad_runs (common/train_run.hpp);
// only the --act-bits networks' trainer, which the study does not use, is compiled here.
#pragma once

#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/noise_bits.hpp>
#include <bitgrad/quant/step_bits.hpp>
#include <bitgrad/train/gradient_sync.hpp>
#include <bitgrad/train/trainer.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <type_traits>

namespace fashion_mnist {

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string model = "lenet5";
  std::string policy = "frac_bits";
  std::string group = "1";
  /// fixed_bits' uniform grid (--grid): "symmetric" or "full".
  std::string grid = "symmetric";
  /// fixed_bits' initial step (--step-init): "lsq" (2 mean|w| / sqrt(Qp)) or "mse".
  std::string step_init = "lsq";
  double b_min = 2, b_max = 8;
  /// The learned policies' initial bitwidth (--b-init); unset: b_max - 0.5.
  std::optional<double> b_init;
  std::optional<int> edge_bits;          ///< pin the edge layers at this many bits
  std::optional<std::string> edge_group; ///< the edge layers' group size (default: group)
  std::size_t train_limit = 0;
  std::size_t threads = 0;
  std::string init; ///< FP32 weights (.npz) to start from instead of pretraining
  /// Activation quantizers after every ReLU (frac_bits), their bitwidths starting here and
  /// learned in [b_min, b_max] like the weights'; unset: none (issue #22).
  std::optional<double> act_bits;
  bitgrad::train::trainer_options trainer;
  /// Data-parallel under mpirun (launch_mpi.cpp); null: one process. Rank 0 prints and writes.
  bitgrad::train::gradient_sync<float>* sync = nullptr;
};

/// Train --model with the policy Quant as `cfg` says, print the table, export model.bgm; the
/// exit code (130 after an interrupt).
template <template <class> class Quant>
int run_model(const settings& cfg);

extern template int run_model<bitgrad::quant::frac_bits>(const settings&);
extern template int run_model<bitgrad::quant::noise_bits>(const settings&);
extern template int run_model<bitgrad::quant::step_bits>(const settings&);
extern template int run_model<bitgrad::quant::fixed_bits>(const settings&);

/// Whether --model resnet20 is built with the policy Quant: frac_bits and fixed_bits only
/// (run_resnet20.cpp says why).
template <template <class> class Quant>
inline constexpr bool resnet20_policy =
    std::is_same_v<Quant<float>, bitgrad::quant::frac_bits<float>> ||
    std::is_same_v<Quant<float>, bitgrad::quant::fixed_bits<float>>;

/// run_model for --model resnet20 (run_resnet20.cpp): compiled for the resnet20_policy ones.
template <template <class> class Quant>
int run_resnet20(const settings& cfg);

extern template int run_resnet20<bitgrad::quant::frac_bits>(const settings&);
extern template int run_resnet20<bitgrad::quant::fixed_bits>(const settings&);

/// run_model with the policy cfg.policy names; exceptions reported. In launch_mpi.cpp (the
/// build has bitgrad::mpi: data-parallel when started by mpirun / srun) or launch_local.cpp.
int launch(settings& cfg);

/// Whether this process checks the run folder (--resume's checkpoint) before launch: true for a
/// one-process run; false under an MPI launcher, where only rank 0 reads and writes the folder
/// (other hosts need not see it) and launch checks it on rank 0 once MPI is up.
bool checks_run_folder();

/// run_model<the policy of cfg.policy>(cfg).
int run_policy(const settings& cfg);

} // namespace fashion_mnist
