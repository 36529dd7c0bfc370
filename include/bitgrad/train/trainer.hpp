// The trainer: learned mixed precision in three phases.
//
//   pretrain   the FP32 network (no_quant) learns the task; its test accuracy is the
//              reference. Skippable: 0 epochs, or weights loaded from elsewhere.
//   search     its weights are copied into the quantized twin (same layer names); weights and
//              bitwidths train jointly on  L = cross_entropy + P(size), where P is the size
//              penalty (quant/penalty.hpp) toward the target. After every optimizer step each
//              quantizer projects its parameters back into bounds.
//   freeze     bitwidths become integers (budget-aware by default: the model stays within the
//              target whenever the all-floor rounding does).
//   finetune   weights train at the frozen bitwidths.
//
// Activation quantizers (nn/activation_quant.hpp, issue #22) and hardware costs: a network
// with activation_quant layers learns their bitwidths and ranges in the search phase beside the
// weights' (train_step projects both) and they freeze with the weights at the end of search.
// Budgets, each optional and usable together: the size (above; size_budget = false turns it
// off), BOPs (target_bops) and peak activation memory (target_activation_kb), the last two per
// image over nn::model_costs_of(network, cost_input) (a flat sequential network). Each active
// budget adds its penalty to the search loss (penalty form and lambda as the size's, measured
// relative to its target: unit = the target), and freezing honours every active budget at once
// (quant/multi_budget.hpp) when the network has activation quantizers or a cost budget is set;
// otherwise it is the size-only freeze_to_budget of before.
//
// Every epoch appends an epoch_record (loss, train and test accuracy, average bits, size,
// compression, time) to the history, the CSV log and the progress output, and writes a
// checkpoint atomically; a run resumes from its checkpoint at the epoch where it stopped and
// ends bit-identical to an uninterrupted run with the same seed and thread count. (The
// checkpoint holds the batch norms' running statistics from format version 4 on; a run with
// batch norms resumed from an older checkpoint goes on from the network's initial statistics
// and says so.)
//
// Sizes: every size printed, logged or compared with the target is the model's stored bytes
// of train/model_info.hpp (model_size::bytes(): codes, per-group scale and bitwidth, float32
// biases and norm parameters). The target is in the same terms: target_bytes, or
// target_average_bits per weight for the quantized weights (codes and per-group overhead)
// plus the float32 biases and norm parameters, which bitwidths cannot shrink.
//
// The output folder (out_dir) holds one run: run_files below. A new run must not destroy the
// previous run's results before it has results of its own, so run() refuses a folder that
// holds any of them unless
//   resume      the folder's checkpoint.bin continues (the same run goes on), or
//   overwrite   the new run replaces the old one: the old run's files are removed only when
//               the new run writes its first file (its first checkpoint or log row). A new
//               run that fails before that (a divergent first step, a bad option) leaves the
//               old run as it was.
// With both set, resume wins when out_dir holds a checkpoint. A new run creates out_dir and
// its log only when it writes its first file as well, so a run that produced nothing leaves
// nothing behind.
//
// The networks are twins: check_twins (train/model_info.hpp) runs at construction, so a
// parameter that exists in one network only is named before pretraining starts.
//
// The parts (a trainer is a loop with hooks):
//   step       train/step.hpp: forward, loss, backward, optimizer step, projection; the same
//              function a hand-written loop calls (examples/quickstart.cpp).
//   parts      the loss, each phase's optimizer and its learning-rate schedule (default_parts:
//              softmax cross-entropy; Adam; cosine within each phase,
//              lr(t) = lr_0 * (1 + cos(pi * t / T)) / 2, t = step within the phase, T = steps in
//              the phase, optim/schedule.hpp). A user passes their own parts struct.
//   observers  train/observer.hpp: progress and epoch lines, the CSV log, the checkpoint and the
//              report are observers; add_observer adds a user's own.
//   data       any dataset of images; trainer_options::normalise is its per-channel mean and
//              standard deviation (the default: Fashion-MNIST's).
//   sync       set_gradient_sync (train/gradient_sync.hpp; dist::data_parallel over MPI): the
//              same run on several processes (ranks). Every rank checks at the start that the
//              settings and both datasets are the same on every rank, trains on its slice of
//              every global batch (batch_size images, the same sequence of batches as one
//              process: data/loader.hpp, sharding), and the gradients are averaged before the
//              size penalty and the optimizer, so every rank holds the same parameters (checked
//              at the start of every phase and at the end of the run). Evaluation is sharded as
//              well: each rank evaluates its slice of every test batch and the counts are
//              summed, so the accuracies are those of one process. Batch norm uses each
//              rank's slice's statistics unless trainer_options::sync_batch_norm (the global
//              batch's, nn::batch_norm::set_sync). Only rank 0 prints, writes
//              files and calls observers (built-in and added); a resumed run reads the
//              checkpoint on rank 0 and broadcasts it, so a checkpoint written with N ranks
//              resumes with any M (1 included).
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/model_costs.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/schedule.hpp>
#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/multi_budget.hpp>
#include <bitgrad/quant/penalty.hpp>
#include <bitgrad/quant/quantizer.hpp>
#include <bitgrad/report/progress.hpp>
#include <bitgrad/report/records.hpp>
#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/evaluate.hpp>
#include <bitgrad/train/gradient_sync.hpp>
#include <bitgrad/train/model_info.hpp>
#include <bitgrad/train/observer.hpp>
#include <bitgrad/train/search_schedule.hpp>
#include <bitgrad/train/sensitivity.hpp>
#include <bitgrad/train/step.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::train {

/// How Adam normalises the bitwidth gradients in the search phase.
///   per_group  each group's own second moment (plain Adam): every group steps ~bits_lr
///              whatever the size of its gradient.
///   per_layer  one second moment per layer (optim::adam::set_shared_second_moment): the groups
///              of a layer step in proportion to their gradients, so a group whose loss reacts
///              more to its bitwidth moves further than its neighbours.
enum class bits_normalisation { per_group, per_layer };

/// "group" or "layer" (the names the examples' --bits-moment options take).
inline const char* to_string(bits_normalisation b) {
  return b == bits_normalisation::per_layer ? "layer" : "group";
}

/// The bits_normalisation named "group" or "layer"; config_error otherwise.
inline bits_normalisation parse_bits_normalisation(std::string_view name) {
  if (name == "group") return bits_normalisation::per_group;
  if (name == "layer") return bits_normalisation::per_layer;
  throw config_error("bits_moment: expected \"group\" or \"layer\", got \"" + std::string(name) +
                     "\"");
}

/// The files a run writes into its out_dir (model.bgm is the examples' export of the frozen
/// model); what resume continues and overwrite replaces.
inline constexpr std::array<const char*, 5> run_files = {
    "log.csv", "summary.json", "checkpoint.bin", "report.html", "model.bgm"};

/// One phase's schedule.
struct phase_options {
  std::size_t epochs = 0;
  double lr = 1e-3;      ///< Adam learning rate of weights, biases and norm parameters
  double bits_lr = 0.0;  ///< learning rate of bitwidths (search phase)
  double scale_lr = 0.0; ///< learning rate of learned scales / ranges; 0 = same as lr
};

struct trainer_options {
  std::size_t batch_size = 64;
  phase_options pretrain{.epochs = 15, .lr = 2e-3};
  phase_options search{.epochs = 4, .lr = 5e-4, .bits_lr = 0.05};
  phase_options finetune{.epochs = 3, .lr = 2e-4};
  /// Size target as average stored bits per weight, overhead (scales, bitwidths) included:
  /// target_average_bits * weights for the quantized weights, plus the float32 biases and norm
  /// parameters. Ignored when target_bytes is set.
  double target_average_bits = 3.0;
  /// Size target in bytes: the model's stored bytes (train/model_info.hpp), biases included.
  std::optional<double> target_bytes{};
  /// false: no size penalty and no size budget at freezing (the cost budgets below only).
  bool size_budget = true;
  /// BOPs budget per image (sum over conv / linear layers of MACs x b_w x b_a,
  /// quant/costs.hpp); unset: none.
  std::optional<double> target_bops{};
  /// Peak activation memory budget per image in KB (10^3 bytes): the largest activation tensor
  /// an integer runtime keeps between layers, at its bitwidths; unset: none.
  std::optional<double> target_activation_kb{};
  /// The input (one image) the BOPs and activation memory are counted at.
  nn::model_input cost_input{};
  quant::penalty_form penalty = quant::penalty_form::hinge;
  double penalty_lambda = 5.0;
  /// The search's penalty schedule (train/search_schedule.hpp): the fraction of the search
  /// steps over which the size target falls linearly from the size the search starts at to the
  /// final target (0 = the final target from the first step), and the fraction over which the
  /// penalty weight grows linearly from 0 to penalty_lambda (0 = full weight from the first
  /// step). Freezing always uses the final target.
  double budget_anneal = 0;
  double penalty_warmup = 0;
  quant::rounding freeze_rounding = quant::rounding::budget_aware;
  /// per_layer since issue #11: the learned bits then follow the groups' sensitivity
  /// (docs/results.md, "Issue #11").
  bits_normalisation bits_moment = bits_normalisation::per_layer;
  std::uint64_t seed = 1;
  /// The inputs' per-channel mean and standard deviation: the loader feeds (x - mean) / stddev
  /// to the network in training, evaluation and export. The default is Fashion-MNIST's; set
  /// your dataset's own.
  loader_options normalise{.mean = {0.2860}, .stddev = {0.3530}};
  std::size_t max_steps_per_epoch = 0; ///< 0 = whole epochs (tests use a few steps)
  std::size_t stop_after_epochs = 0;   ///< stop (with a checkpoint) after this many epochs
  std::size_t stop_after_steps = 0;    ///< stop (with a checkpoint) after this many steps
  /// A step whose loss or gradient is not finite: false = stop with an error naming the step
  /// and the first parameter (the last checkpoint stays intact); true = skip the batch, count
  /// it, and report the count in the epoch line.
  bool skip_nonfinite = false;
  /// Per-group sensitivity diagnostics at the end of the run (train/sensitivity.hpp) on this
  /// many fixed batches of 32 test images; 0 = off.
  std::size_t sensitivity_batches = 0;
  std::filesystem::path out_dir{}; ///< empty: write no files
  /// Continue from out_dir/checkpoint.bin if present (a new run when the folder holds none).
  bool resume = false;
  /// Replace the run in out_dir (its run_files), once the new run writes its first file.
  /// Without resume or overwrite, run() refuses an out_dir that holds any of run_files.
  bool overwrite = false;
  /// Data-parallel (set_gradient_sync): every batch norm of the network normalises with the
  /// statistics of the global batch (nn::batch_norm::set_sync, like PyTorch's SyncBatchNorm)
  /// instead of its rank's slice. Off by default; no effect on one process.
  bool sync_batch_norm = false;
  std::ostream* log = &std::cout; ///< progress and per-epoch lines; null = silent
  bool terminal = stdout_is_terminal();
};

/// What a run produced.
struct run_result {
  run_summary summary;
  std::vector<epoch_record> history;
  bool finished = false;         ///< false when stopped early (stop_after_*, SIGINT, SIGTERM)
  std::size_t skipped_steps = 0; ///< batches skipped for non-finite values (skip_nonfinite)
};

/// The parts every phase trains with: the loss, a fresh optimizer per phase and the
/// learning-rate schedule over a phase's steps. A user's own parts struct has the same three
/// members (any train::classification_loss, any optimizer with step/set_lr/save/load as
/// optim::adam and optim::sgd have, any optim::lr_schedule).
template <class T>
struct default_parts {
  /// Softmax cross-entropy on the logits.
  nn::softmax_cross_entropy<T> loss() const { return nn::softmax_cross_entropy<T>(); }

  /// Adam at the phase's lr; bitwidths at bits_lr and scales at scale_lr when set (no weight
  /// decay); the bitwidths' second moment shared per layer when options.bits_moment says so.
  optim::adam<T> optimizer(const phase_options& po, const trainer_options& options) const {
    optim::adam<T> adam({.lr = po.lr});
    if (po.bits_lr > 0) adam.set_group(param_kind::bitwidth, {.lr = po.bits_lr, .weight_decay = 0});
    if (options.bits_moment == bits_normalisation::per_layer)
      adam.set_shared_second_moment(param_kind::bitwidth);
    if (po.scale_lr > 0) adam.set_group(param_kind::scale, {.lr = po.scale_lr, .weight_decay = 0});
    return adam;
  }

  /// Cosine from the phase's lr down to 0 over its steps.
  optim::cosine_schedule schedule(std::size_t total_steps) const {
    return {.total_steps = total_steps};
  }
};

/// Set by the SIGINT/SIGTERM handlers that install_interrupt_handlers() installs; the trainer
/// finishes its current step, writes a checkpoint and returns when it sees it.
inline std::atomic<bool>& interrupt_requested() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace detail {
inline void on_interrupt(int) {
  interrupt_requested().store(true);
}
} // namespace detail

/// Makes SIGINT and SIGTERM request a clean stop (checkpoint, then return) instead of killing
/// the process. A second signal while stopping has the default effect.
inline void install_interrupt_handlers() {
  interrupt_requested().store(false); // constructs the flag outside the handler
  std::signal(SIGINT, detail::on_interrupt);
  std::signal(SIGTERM, detail::on_interrupt);
}

namespace detail {

inline const char* phase_name(int phase) {
  static const char* names[] = {"pretrain", "search", "finetune"};
  return names[phase];
}

} // namespace detail

/// Runs the three phases on `fp32` (a no_quant network) and `quantized` (its twin with
/// learned bitwidths), with `train_set` for training and `test_set` for the test accuracy.
/// Parts: the loss, optimizer and schedule (default_parts above).
template <class FloatNet, class QuantNet,
          class Parts = default_parts<typename QuantNet::value_type>>
class trainer {
public:
  using T = typename QuantNet::value_type;
  static_assert(std::same_as<typename FloatNet::input_type, tensor4<T>> &&
                    std::same_as<typename QuantNet::input_type, tensor4<T>>,
                "train::trainer: both networks must take image batches (N, C, H, W) as the loader "
                "gives them; a network that starts with nn::linear needs nn::flatten in front "
                "(put nn::flatten before the first linear)");

  trainer(FloatNet& fp32, QuantNet& quantized, const dataset& train_set, const dataset& test_set,
          trainer_options options, Parts parts = {})
      : fp32_(fp32), quant_(quantized), train_(train_set), test_(test_set),
        opt_(std::move(options)), parts_(std::move(parts)) {
    if (opt_.batch_size == 0) throw config_error("trainer: batch size must be >= 1, got 0");
    if (train_.size() == 0) throw config_error("trainer: the training set is empty");
    if (test_.size() == 0) throw config_error("trainer: the test set is empty");
    if (!(opt_.target_average_bits > 0))
      throw config_error("trainer: target average bits must be > 0");
    search_schedule_().check();
    if (opt_.target_bytes && !(*opt_.target_bytes > 0))
      throw config_error("trainer: target bytes must be > 0, got " +
                         std::to_string(*opt_.target_bytes));
    try {
      check_twins(fp32_, quant_);
    } catch (const config_error& e) {
      throw config_error(std::string("trainer: ") + e.what());
    }
    const double smallest = smallest_size_bits(quant_); // every learnable group at ceil(b_min)
    for (const auto& [name, t] : {std::pair{"BOPs", opt_.target_bops},
                                  std::pair{"activation KB", opt_.target_activation_kb}})
      if (t && !(*t > 0))
        throw config_error(std::string("trainer: target ") + name + " must be > 0, got " +
                           std::to_string(*t));
    build_costs();
    if (opt_.size_budget && target_bits() < smallest)
      throw config_error("trainer: the size target (" + format_bytes(target_bits() / 8) +
                         ") is below the smallest model the bitwidth bounds allow (" +
                         format_bytes(smallest / 8) + " with every group at b_min)");
  }

  /// The quantized network, the training set and the options this trainer runs with
  /// (train::export_model(trainer, path) exports from them).
  QuantNet& quantized() { return quant_; }
  const dataset& train_set() const { return train_; }
  const trainer_options& options() const { return opt_; }

  /// Adds `o` after the built-in observers (progress, CSV log, checkpoint, report); it must
  /// outlive run().
  void add_observer(observer& o) { user_observers_.push_back(&o); }

  /// Runs data-parallel through `sync` (see the top; it must outlive run()). Every rank of the
  /// job calls run() with the same options and data.
  void set_gradient_sync(gradient_sync<T>& sync) { sync_ = &sync; }
  /// True on the process that prints and writes files: rank 0, or the only process.
  bool writes() const { return !sync_ || sync_->rank() == 0; }

  /// The size target in bits: the model's stored bits (biases included), as
  /// measure_size(net).total_bits() counts them.
  double target_bits() {
    if (opt_.target_bytes) return quant::target_bits_from_bytes(*opt_.target_bytes);
    return quant::target_bits_for_average(quantizers(), opt_.target_average_bits) +
           measure_size(quant_).float_bits();
  }

  /// The BOPs and peak activation memory of the quantized network (nn/model_costs.hpp); null
  /// when the network is not one model_costs_of can walk (then no cost budget may be set).
  const nn::model_costs* costs() const { return costs_.get(); }
  /// The active cost penalties (empty without target_bops / target_activation_kb).
  const quant::cost_penalties& cost_penalties() const { return cost_penalties_; }

  /// The part of target_bits() left for the quantized weights (codes and per-group overhead):
  /// the target of the size penalty and of freezing, which act on the bitwidths only.
  double weight_budget_bits() { return target_bits() - measure_size(quant_).float_bits(); }

  run_result run() {
    const auto start = std::chrono::steady_clock::now();
    run_result result;
    int phase = 0;
    std::size_t done_epochs = 0; // epochs finished in `phase`
    double fp32_accuracy = std::nan("");
    double seconds_before = 0;
    std::optional<checkpoint_data> resumed;
    const auto ckpt = checkpoint_path();

    // The built-in observers, in the order they have always acted: the log's row, the epoch
    // line, the checkpoint; the report at the end.
    builtin_observers_.clear();
    if (!opt_.out_dir.empty())
      builtin_observers_.push_back(std::make_unique<csv_observer>(reports_costs()));
    if (opt_.log)
      builtin_observers_.push_back(std::make_unique<progress_observer>(*opt_.log, opt_.terminal));
    if (!opt_.out_dir.empty()) {
      builtin_observers_.push_back(std::make_unique<checkpoint_observer>(ckpt));
      builtin_observers_.push_back(std::make_unique<report_observer>(opt_.out_dir));
    }
    claimed_ = false;
    if (sync_) check_ranks_agree();
    // The checkpoint to resume from, read on rank 0 (and broadcast: every rank loads it).
    std::string checkpoint_bytes;
    if (writes()) {
      std::string error;
      try {
        if (opt_.resume && !ckpt.empty() && std::filesystem::exists(ckpt)) {
          const std::vector<std::uint8_t> b = read_file_bytes(ckpt, std::uint64_t{1} << 36);
          checkpoint_bytes.assign(b.begin(), b.end());
          if (checkpoint_bytes.empty()) checkpoint_bytes = " "; // not "no checkpoint"
        } else {
          check_out_dir_free();
        }
      } catch (const std::exception& e) {
        if (!sync_) throw;
        error = e.what();
      }
      if (sync_) sync_->broadcast(error);
      if (!error.empty()) throw config_error(error);
    } else {
      std::string error;
      sync_->broadcast(error);
      if (!error.empty()) throw config_error("rank 0: " + error);
    }
    if (sync_) sync_->broadcast(checkpoint_bytes);
    const bool resuming = !checkpoint_bytes.empty();
    if (resuming) {
      resumed = resume_from(ckpt, checkpoint_bytes, phase, done_epochs, fp32_accuracy,
                            seconds_before, result.history);
      say("resumed from " + ckpt.string() + " at " + detail::phase_name(phase) + " epoch " +
          std::to_string(done_epochs));
      if (!resumed->batch_norm_statistics &&
          (phase == 0 ? has_batch_norms(fp32_) : has_batch_norms(quant_)))
        say("note: " + ckpt.string() +
            " is a checkpoint of bitgrad before version 4 of the format: it holds no batch "
            "norm running statistics, so the batch norms go on from the network's initial ones "
            "(mean 0, variance 1), not from where the interrupted run had them; its evaluations "
            "can differ from the uninterrupted run's until training has moved them (start the "
            "run over for the same results)");
      // The same run goes on: its log is rewritten from the checkpoint's history now.
      claim_out_dir(result.history, false);
    }
    epochs_this_run_ = 0;
    steps_this_run_ = 0;
    skipped_total_ = 0;
    auto elapsed = [&] {
      return seconds_before +
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };

    // ---- pretrain -------------------------------------------------------------------------
    if (phase == 0) {
      if (!run_phase(fp32_, 0, opt_.pretrain, done_epochs, resumed, nullptr, result.history,
                     fp32_accuracy, elapsed))
        return result;
      fp32_accuracy = test_evaluation(fp32_).accuracy;
      say("fp32 test accuracy " + percent(fp32_accuracy));
      copy_parameters(fp32_, quant_);
      rebind_quantizers(quant_);
      phase = 1;
      done_epochs = 0;
      resumed.reset();
    }
    // ---- search ---------------------------------------------------------------------------
    if (phase == 1) {
      quant::size_penalty penalty{
          .form = opt_.penalty, .lambda = opt_.penalty_lambda, .target_bits = weight_budget_bits()};
      // S0 of the penalty schedule: the weights' size as the search starts (a resumed search
      // takes it from its checkpoint, as the weights' size has moved since).
      if (resumed && resumed->meta.count("search_start_bits"))
        search_start_bits_ = meta_real(*resumed, "search_start_bits");
      else if (resumed && search_schedule_().active())
        throw config_error("trainer: the checkpoint " + ckpt.string() +
                           " has no search_start_bits (written before budget_anneal / "
                           "penalty_warmup existed): resume it without them, or retrain");
      else
        search_start_bits_ = quant::total_size_bits(quantizers());
      if (opt_.size_budget && opt_.budget_anneal > 0)
        say("search: size target annealed from " +
            format_bytes(std::max(search_start_bits_, penalty.target_bits) / 8) + " to " +
            format_bytes(penalty.target_bits / 8) + " (weights) over the first " +
            exact(100 * opt_.budget_anneal) + "% of the search steps");
      phase_costs_ = cost_penalties_.empty() ? nullptr : &cost_penalties_;
      const bool go =
          run_phase(quant_, 1, opt_.search, done_epochs, resumed,
                    opt_.size_budget ? &penalty : nullptr, result.history, fp32_accuracy, elapsed);
      phase_costs_ = nullptr;
      if (!go) return result;
      freeze();
      phase = 2;
      done_epochs = 0;
      resumed.reset();
    }
    // ---- finetune -------------------------------------------------------------------------
    if (!run_phase(quant_, 2, opt_.finetune, done_epochs, resumed, nullptr, result.history,
                   fp32_accuracy, elapsed))
      return result;

    result.finished = true;
    result.skipped_steps = skipped_total_;
    result.summary = summarise(fp32_accuracy, elapsed());
    if (opt_.sensitivity_batches > 0) {
      const auto fixed = fixed_batches<T>(test_, opt_.normalise, 32, opt_.sensitivity_batches);
      const auto sens = measure_sensitivity(quant_, fixed);
      fill_layer_summaries(result.summary.layers, sens);
      for (const auto& l : sens.layers)
        say("sensitivity " + l.name + ": bits spread " + std::to_string(l.bits_spread) +
            ", rank correlation bits vs sensitivity " + std::to_string(l.rank_correlation) +
            ", estimate vs exact " + std::to_string(l.estimate_correlation));
    }
    if (sync_) sync_->check_same_parameters(parameters_of(quant_), "the run");
    claim_out_dir(result.history, true);
    notify([&](observer& o) { o.on_run_end(result.summary, result.history); });
    return result;
  }

  /// Freezes the quantized network's bitwidths to integers as the options say.
  /// Prints "froze bitwidths within budget: <model size> of <target>" (both the model's
  /// stored bytes, biases included, as the epoch lines print them).
  void freeze() {
    if (has_activation_quantizers() || !cost_penalties_.empty()) {
      freeze_jointly();
      return;
    }
    if (opt_.freeze_rounding == quant::rounding::budget_aware) {
      const auto r = quant::freeze_to_budget(quantizers(), weight_budget_bits());
      say("froze bitwidths within budget: " + format_bytes(measure_size(quant_).bytes()) + " of " +
          format_bytes(target_bits() / 8) + (r.within_target ? "" : " (target unreachable)"));
    } else {
      quant_.visit_quantizers([&](std::string_view name, auto& q) {
        try {
          q.freeze(opt_.freeze_rounding);
        } catch (const config_error& e) {
          throw config_error("freeze: layer '" + std::string(name) + "': " + e.what());
        }
      });
      say("froze bitwidths: " + format_bytes(measure_size(quant_).bytes()) + " (target " +
          format_bytes(target_bits() / 8) + ")");
    }
  }

  /// The summary of the quantized network as it is now.
  run_summary summarise(double fp32_accuracy, double seconds) {
    run_summary s;
    s.model = model_name_;
    s.policy = policy_name();
    s.fp32_accuracy = fp32_accuracy;
    s.quant_accuracy = test_evaluation(quant_).accuracy;
    const model_size size = measure_size(quant_);
    s.average_bits = size.average_bits();
    s.size_bytes = size.bytes();
    s.compression = size.compression();
    s.seconds = seconds;
    s.layers = layer_summaries(quant_);
    nn::visit_activation_quantizers(quant_, [&](std::string_view name, const auto& q) {
      const auto ranges = q.group_ranges();
      s.activations.push_back({.name = std::string(name),
                               .channels = q.channels(),
                               .group_bits = q.group_bits(),
                               .group_ranges = {ranges.begin(), ranges.end()}});
    });
    s.settings = settings_;
    if (reports_costs()) {
      s.costs.push_back({.name = "size",
                         .unit = "bytes",
                         .value = size.bytes(),
                         .target = opt_.size_budget ? target_bits() / 8 : std::nan("")});
      s.costs.push_back({.name = "bops",
                         .unit = "BOPs",
                         .value = costs_->bops.value(),
                         .target = opt_.target_bops.value_or(std::nan(""))});
      s.costs.push_back({.name = "activation_memory",
                         .unit = "bytes",
                         .value = costs_->memory.value() / 8,
                         .target = opt_.target_activation_kb ? 1000.0 * *opt_.target_activation_kb
                                                             : std::nan("")});
      for (auto& c : s.costs) c.met = !(c.value > c.target);
    }
    return s;
  }

  /// Whether epochs, the summary and the log show BOPs and activation memory: the network has
  /// activation quantizers or a cost budget is set (and model_costs_of can walk it).
  bool reports_costs() {
    return costs_ && (has_activation_quantizers() || !cost_penalties_.empty());
  }

  void set_model_name(std::string name) { model_name_ = std::move(name); }
  void add_setting(std::string key, std::string value) {
    settings_.emplace_back(std::move(key), std::move(value));
  }

private:
  auto quantizers() {
    return [this](auto&& f) { quant_.visit_quantizers(f); };
  }
  auto activation_quantizers() {
    return [this](auto&& f) { nn::visit_activation_quantizers(quant_, f); };
  }
  bool has_activation_quantizers() {
    bool any = false;
    nn::visit_activation_quantizers(quant_, [&](std::string_view, const auto&) { any = true; });
    return any;
  }

  /// costs_ (when the network allows) and the penalties of the cost budgets set.
  void build_costs() {
    const bool wanted = opt_.target_bops || opt_.target_activation_kb;
    if constexpr (requires { nn::model_costs_of(quant_, opt_.cost_input); }) {
      try {
        costs_ = std::make_unique<nn::model_costs>(nn::model_costs_of(quant_, opt_.cost_input));
      } catch (const config_error& e) {
        if (wanted)
          throw config_error(std::string("trainer: a BOPs or activation memory target needs "
                                         "the network's costs: ") +
                             e.what());
        return;
      }
    } else if (wanted) {
      throw config_error("trainer: a BOPs or activation memory target needs a flat "
                         "nn::sequential network (nn::model_costs_of)");
    }
    auto penalty = [&](double target) {
      return quant::size_penalty{.form = opt_.penalty,
                                 .lambda = opt_.penalty_lambda,
                                 .target_bits = target,
                                 .unit_bits = target};
    };
    if (opt_.target_bops) cost_penalties_.add("bops", costs_->bops, penalty(*opt_.target_bops));
    if (opt_.target_activation_kb)
      cost_penalties_.add("activation_memory", costs_->memory,
                          penalty(8000.0 * *opt_.target_activation_kb));
  }

  /// Freezes weight and activation bitwidths together: against every active budget
  /// (quant/multi_budget.hpp) when rounding is budget_aware, else each with the rounding
  /// (activation bitwidths: nearest for budget_aware).
  void freeze_jointly() {
    if (opt_.freeze_rounding != quant::rounding::budget_aware) {
      auto each = [&](std::string_view name, auto& q) {
        try {
          q.freeze(opt_.freeze_rounding);
        } catch (const config_error& e) {
          throw config_error("freeze: layer '" + std::string(name) + "': " + e.what());
        }
      };
      quant_.visit_quantizers(each);
      nn::visit_activation_quantizers(quant_, each);
      say("froze bitwidths: " + format_bytes(measure_size(quant_).bytes()) + " (target " +
          format_bytes(target_bits() / 8) + ")" + cost_line());
      return;
    }
    quant::budgets b;
    if (opt_.size_budget) b.size_bits = weight_budget_bits();
    if (opt_.target_bops) {
      b.bops = &costs_->bops;
      b.bops_target = *opt_.target_bops;
    }
    if (opt_.target_activation_kb) {
      b.memory = &costs_->memory;
      b.memory_target_bits = 8000.0 * *opt_.target_activation_kb;
    }
    const auto r = quant::freeze_to_budgets(quantizers(), activation_quantizers(), b);
    std::string line =
        "froze bitwidths within budgets: " + format_bytes(measure_size(quant_).bytes());
    if (opt_.size_budget) line += " of " + format_bytes(target_bits() / 8);
    for (const auto& c : r.checks)
      if (!c.met) line += " (" + c.name + " target unreachable)";
    say(line + cost_line());
  }

  /// ", BOPs <value> of <target>, peak activations <KB> of <target>" for the costs there are.
  std::string cost_line() const {
    if (!costs_) return "";
    std::string s;
    char buf[96];
    std::snprintf(buf, sizeof buf, ", BOPs %.4g", costs_->bops.value());
    s += buf;
    if (opt_.target_bops) {
      std::snprintf(buf, sizeof buf, " of %.4g", *opt_.target_bops);
      s += buf;
    }
    s += ", peak activations " + format_bytes(costs_->memory.value() / 8);
    if (opt_.target_activation_kb) s += " of " + format_bytes(1000.0 * *opt_.target_activation_kb);
    return s;
  }

  std::string policy_name() {
    std::string name;
    quant_.visit_quantizers([&]<class Q>(std::string_view, const Q&) {
      if (!Q::is_identity && name.empty()) name = Q::policy_name;
    });
    return name.empty() ? "no_quant" : name;
  }

  static std::string percent(double f) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * f);
    return buf;
  }

  void say(const std::string& line) {
    if (opt_.log && writes()) *opt_.log << line << '\n' << std::flush;
  }

  /// Data-parallel: the same settings and data on every rank, a batch every rank has a share
  /// of. Every rank throws the same config_error otherwise.
  void check_ranks_agree() {
    if (opt_.batch_size < sync_->ranks())
      throw config_error("trainer: batch size " + std::to_string(opt_.batch_size) +
                         " is smaller than the rank count " + std::to_string(sync_->ranks()) +
                         ": every rank needs at least one image of every batch (the batch size "
                         "is the global batch, split across the ranks)");
    if (opt_.sync_batch_norm) {
      // A rank with no image of a batch could not join the synchronised statistics.
      const std::size_t tail = train_.size() % opt_.batch_size;
      const std::size_t batches = (train_.size() + opt_.batch_size - 1) / opt_.batch_size;
      const bool reached = opt_.max_steps_per_epoch == 0 || opt_.max_steps_per_epoch >= batches;
      if (tail > 0 && tail < sync_->ranks() && reached)
        throw config_error("trainer: sync_batch_norm: the last batch of every epoch has " +
                           std::to_string(tail) + " images, fewer than the " +
                           std::to_string(sync_->ranks()) +
                           " ranks; a rank without images cannot take part in the synchronised "
                           "statistics: choose a batch size that leaves none or at least one "
                           "image per rank in the last batch");
    }
    sync_->check_same_text("the trainer's settings", settings_text());
    sync_->check_same_dataset(train_, "the training set");
    sync_->check_same_dataset(test_, "the test set");
  }

  /// Every batch norm of `net` sums its statistics over the ranks (`on`), or not.
  template <class Net>
  void synchronise_batch_norm(Net& net, bool on) {
    std::function<void(std::span<double>)> sum;
    if (on) sum = [s = sync_](std::span<double> v) { s->sum(v); };
    auto set = [&](const std::string&, auto& leaf) {
      if constexpr (requires { leaf.set_sync(sum); }) leaf.set_sync(sum);
    };
    nn::visit_layers(net, set);
  }

  /// Every option that changes what a run computes, one "key=value" line each.
  std::string settings_text() const {
    std::ostringstream out;
    auto phase = [&](const char* name, const phase_options& p) {
      out << name << "=" << p.epochs << " epochs, lr " << exact(p.lr) << ", bits_lr "
          << exact(p.bits_lr) << ", scale_lr " << exact(p.scale_lr) << "\n";
    };
    out << "batch_size=" << opt_.batch_size << "\n";
    phase("pretrain", opt_.pretrain);
    phase("search", opt_.search);
    phase("finetune", opt_.finetune);
    out << "target_average_bits=" << exact(opt_.target_average_bits) << "\n"
        << "target_bytes=" << (opt_.target_bytes ? exact(*opt_.target_bytes) : "none") << "\n"
        << "size_budget=" << opt_.size_budget << "\n"
        << "target_bops=" << (opt_.target_bops ? exact(*opt_.target_bops) : "none") << "\n"
        << "target_activation_kb="
        << (opt_.target_activation_kb ? exact(*opt_.target_activation_kb) : "none") << "\n"
        << "cost_input=" << opt_.cost_input.channels << "x" << opt_.cost_input.height << "x"
        << opt_.cost_input.width << ", " << exact(opt_.cost_input.bits) << " bits, unquantized "
        << exact(opt_.cost_input.unquantized_bits) << "\n"
        << "penalty=" << static_cast<int>(opt_.penalty) << " lambda " << exact(opt_.penalty_lambda)
        << "\n"
        << "budget_anneal=" << exact(opt_.budget_anneal) << ", penalty_warmup "
        << exact(opt_.penalty_warmup) << "\n"
        << "freeze_rounding=" << static_cast<int>(opt_.freeze_rounding) << "\n"
        << "bits_moment=" << to_string(opt_.bits_moment) << "\n"
        << "seed=" << opt_.seed << "\n";
    out << "normalise=";
    for (double m : opt_.normalise.mean) out << exact(m) << " ";
    out << "/";
    for (double d : opt_.normalise.stddev) out << " " << exact(d);
    out << ", crop " << opt_.normalise.crop_padding << ", flip " << opt_.normalise.horizontal_flip
        << "\n"
        << "max_steps_per_epoch=" << opt_.max_steps_per_epoch << "\n"
        << "stop_after=" << opt_.stop_after_epochs << " epochs, " << opt_.stop_after_steps
        << " steps\n"
        << "skip_nonfinite=" << opt_.skip_nonfinite << "\n"
        << "sensitivity_batches=" << opt_.sensitivity_batches << "\n"
        << "sync_batch_norm=" << opt_.sync_batch_norm << "\n"
        << "resume=" << opt_.resume << ", overwrite " << opt_.overwrite << "\n"
        << "model=" << model_name_ << "\n";
    for (const auto& [key, value] : settings_) out << "setting " << key << "=" << value << "\n";
    return out.str();
  }

  /// Loss and accuracy of `net` on the test set. Data-parallel: each rank evaluates its slice
  /// of every test batch (data/loader.hpp, sharding) and the sums are summed over the ranks.
  template <class Net>
  evaluation test_evaluation(Net& net) {
    if (!sync_) return evaluate(net, test_, opt_.normalise);
    loader_options mine = opt_.normalise;
    mine.shard_count = sync_->ranks();
    mine.shard_index = sync_->rank();
    const evaluation e = evaluate(net, test_, mine);
    double sums[3] = {e.loss * static_cast<double>(e.images), static_cast<double>(e.correct),
                      static_cast<double>(e.images)};
    sync_->sum(sums);
    evaluation all;
    all.images = static_cast<std::size_t>(sums[2]);
    all.correct = static_cast<std::size_t>(sums[1]);
    if (all.images > 0) {
      all.loss = sums[0] / sums[2];
      all.accuracy = sums[1] / sums[2];
    }
    return all;
  }

  std::filesystem::path checkpoint_path() const {
    return opt_.out_dir.empty() ? std::filesystem::path{} : opt_.out_dir / "checkpoint.bin";
  }

  /// The run_files present in out_dir, comma-separated ("" when none).
  std::string present_run_files() const {
    std::string found;
    if (opt_.out_dir.empty()) return found;
    for (const char* f : run_files)
      if (std::filesystem::exists(opt_.out_dir / f))
        found += (found.empty() ? "" : ", ") + std::string(f);
    return found;
  }

  /// A new run (not resuming): refuses an out_dir that holds another run unless overwrite.
  void check_out_dir_free() const {
    if (opt_.overwrite) return;
    const std::string found = present_run_files();
    if (found.empty()) return;
    const std::string dir = opt_.out_dir.string();
    if (opt_.resume)
      throw config_error("trainer: " + dir + " holds a run's files (" + found +
                         ") but no checkpoint.bin to resume from; set trainer_options::overwrite "
                         "(--overwrite) to replace that run, or choose another folder");
    throw config_error("trainer: " + dir + " already holds a run (" + found +
                       "); set trainer_options::resume (--resume) to continue it from its "
                       "checkpoint, trainer_options::overwrite (--overwrite) to replace it, or "
                       "choose another folder");
  }

  /// Called before the run writes its first file into out_dir: removes the previous run's
  /// files (a new run, `replace`), creates the folder and the log with `history` in it.
  void claim_out_dir(const std::vector<epoch_record>& history, bool replace) {
    if (claimed_ || opt_.out_dir.empty() || !writes()) return;
    if (replace)
      for (const char* f : run_files) std::filesystem::remove(opt_.out_dir / f);
    std::filesystem::create_directories(opt_.out_dir);
    notify([&](observer& o) { o.on_out_dir(opt_.out_dir, history); });
    claimed_ = true;
  }

  checkpoint_data resume_from(const std::filesystem::path& path, const std::string& file,
                              int& phase, std::size_t& epochs, double& fp32_accuracy,
                              double& seconds, std::vector<epoch_record>& history) {
    // Peek at the phase with the FP32 network first; a search/finetune checkpoint belongs to
    // the quantized network.
    const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(file.data()),
                                              file == " " ? 0 : file.size());
    checkpoint_data data;
    try {
      data = parse_checkpoint(bytes, path.string(), fp32_);
    } catch (const format_error&) {
      data = parse_checkpoint(bytes, path.string(), quant_);
    }
    const std::string p = meta_field(data, "phase");
    phase = p == "pretrain" ? 0 : p == "search" ? 1 : p == "finetune" ? 2 : -1;
    if (phase < 0)
      throw format_error(path.string(), detail::checkpoint_metadata_offset,
                         "metadata field 'phase': expected pretrain, search or finetune, got " +
                             detail::quoted_value(p));
    if (phase > 0) {
      data = parse_checkpoint(bytes, path.string(), quant_);
      load_activation_states(data, path);
    }
    epochs = static_cast<std::size_t>(meta_unsigned(data, "epoch"));
    fp32_accuracy = meta_real(data, "fp32_accuracy");
    seconds = meta_real(data, "seconds");
    history = data.history;
    return data;
  }

  /// net has a batch norm (running statistics that the checkpoint keeps from version 4 on).
  template <class Net>
  static bool has_batch_norms(Net& net) {
    bool any = false;
    detail::visit_batch_norm_statistics(net, [&](const auto&, auto&, auto&) { any = true; });
    return any;
  }

  /// The activation quantizers' states (frozen bitwidths, calibrated) as metadata fields
  /// "act_quant_state.<name>": their save() bytes in hex. Their bits and ranges are parameters
  /// and travel with the others.
  void save_activation_states(checkpoint_data& data) {
    static const char* digits = "0123456789abcdef";
    nn::visit_activation_quantizers(quant_, [&](std::string_view name, const auto& q) {
      io::byte_writer w;
      q.save(w);
      std::string hex;
      for (unsigned char c : w.bytes()) {
        hex += digits[c >> 4];
        hex += digits[c & 15];
      }
      data.meta["act_quant_state." + std::string(name)] = hex;
    });
  }

  /// Restores what save_activation_states wrote (a checkpoint without the fields: nothing);
  /// format_error naming the file and the field when one is malformed.
  void load_activation_states(const checkpoint_data& data, const std::filesystem::path& path) {
    nn::visit_activation_quantizers(quant_, [&](std::string_view name, auto& q) {
      const std::string key = "act_quant_state." + std::string(name);
      const auto it = data.meta.find(key);
      if (it == data.meta.end()) return;
      const std::string& hex = it->second;
      auto nibble = [&](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        throw format_error(path.string(), detail::checkpoint_metadata_offset,
                           "metadata field '" + key + "': expected hex digits, got " +
                               detail::quoted_value(hex));
      };
      if (hex.size() % 2)
        throw format_error(path.string(), detail::checkpoint_metadata_offset,
                           "metadata field '" + key + "': odd number of hex digits");
      std::string bytes;
      for (std::size_t i = 0; i < hex.size(); i += 2)
        bytes += static_cast<char>(nibble(hex[i]) * 16 + nibble(hex[i + 1]));
      io::byte_reader r(std::string_view(bytes), path.string() + ": " + key);
      q.load(r, name);
    });
  }

  /// Progress inside an unfinished epoch, kept in checkpoints written mid-epoch.
  struct partial_epoch {
    std::size_t step = 0, images = 0, correct = 0, skipped = 0;
    double loss_sum = 0, seconds = 0;
  };

  static std::string exact(double v) {
    std::ostringstream out;
    out.precision(17);
    out << v;
    return out.str();
  }

  /// Runs the epochs after `done` of one phase with the parts' loss, a fresh optimizer and
  /// the schedule over the phase's steps; false when stopped early.
  template <class Net, class Elapsed>
  bool run_phase(Net& net, int phase, const phase_options& po, std::size_t done,
                 const std::optional<checkpoint_data>& resumed, const quant::size_penalty* penalty,
                 std::vector<epoch_record>& history, double fp32_accuracy, Elapsed&& elapsed) {
    if (po.epochs == 0 || done >= po.epochs) return true;
    // Nothing needs dL/d(input image): the first layer skips computing it.
    if constexpr (requires { net.template get<0>().set_input_grad(false); })
      net.template get<0>().set_input_grad(false);
    const char* name = detail::phase_name(phase);
    loader_options lo = opt_.normalise;
    lo.batch_size = opt_.batch_size;
    lo.shuffle = true;
    lo.seed = opt_.seed * 1000003u + static_cast<std::uint64_t>(phase);
    if (sync_) { // this rank's slice of every batch
      lo.shard_count = sync_->ranks();
      lo.shard_index = sync_->rank();
    }
    loader<T> batches(train_, lo);
    auto loss = parts_.loss();
    auto optimizer = parts_.optimizer(po, opt_);
    partial_epoch part;
    if (resumed) {
      batches.restore(resumed->saved_loader());
      io::byte_reader state = resumed->optimizer_reader();
      optimizer.load(state);
      if (resumed->meta.count("step")) part = read_partial_epoch(*resumed);
    }
    const std::size_t per_epoch =
        opt_.max_steps_per_epoch ? std::min(opt_.max_steps_per_epoch, batches.batches_per_epoch())
                                 : batches.batches_per_epoch();
    const auto schedule = parts_.schedule(per_epoch * po.epochs);
    if (sync_) sync_->begin_phase(parameters_of(net));
    // Synchronised batch norm for this phase's steps (off again when the phase returns).
    struct batch_norm_sync {
      trainer* self;
      Net* net;
      ~batch_norm_sync() {
        if (self) self->synchronise_batch_norm(*net, false);
      }
    } bn_sync{sync_ && opt_.sync_batch_norm ? this : nullptr, &net};
    if (bn_sync.self) synchronise_batch_norm(net, true);
    tensor4<T> x;
    std::vector<std::int32_t> y;

    // A checkpoint of this phase after `epochs_done` epochs and `p` of the next.
    auto checkpoint_at = [&](std::size_t epochs_done, const partial_epoch& p) -> checkpoint_writer {
      return [&, epochs_done, p](const std::filesystem::path& path) {
        claim_out_dir(history, true);
        checkpoint_data data;
        data.meta["phase"] = name;
        data.meta["epoch"] = std::to_string(epochs_done);
        data.meta["fp32_accuracy"] = exact(fp32_accuracy);
        if (phase == 1) data.meta["search_start_bits"] = exact(search_start_bits_);
        data.meta["seconds"] = exact(elapsed());
        data.history = history;
        if (p.step > 0) write_partial_epoch(data, p); // mid-epoch
        io::byte_writer state;
        optimizer.save(state);
        data.optimizer_state = state.take();
        data.loader = batches.state();
        if (static_cast<const void*>(&net) == static_cast<const void*>(&quant_))
          save_activation_states(data);
        save_checkpoint(path, net, data);
      };
    };
    auto stopping = [&] {
      if (opt_.stop_after_steps && steps_this_run_ >= opt_.stop_after_steps) return true;
      if (!sync_) return interrupt_requested().load();
      double any = interrupt_requested().load() ? 1 : 0; // a signal seen by any rank stops all
      sync_->sum(std::span<double>(&any, 1));
      if (any > 0) interrupt_requested().store(true);
      return any > 0;
    };
    auto stopped = [&](std::size_t epoch, std::size_t step, const checkpoint_writer& save) {
      const bool interrupted = interrupt_requested().load();
      notify([&](observer& o) {
        o.on_stop({.phase = name,
                   .epoch = epoch + 1,
                   .step = step,
                   .interrupted = interrupted,
                   .save_checkpoint = save});
      });
      say(std::string(interrupted ? "interrupted" : "stopped") + (step > 0 ? " at " : " after ") +
          name + " epoch " + std::to_string(epoch + 1) +
          (step > 0 ? " step " + std::to_string(step) : std::string()) +
          (opt_.out_dir.empty() ? std::string() : "; checkpoint written, continue with --resume"));
    };

    for (std::size_t epoch = done; epoch < po.epochs; ++epoch) {
      auto t0 = std::chrono::steady_clock::now();
      net.train(true);
      notify([&](observer& o) {
        o.on_epoch_begin(
            {.phase = name, .epoch = epoch + 1, .epochs = po.epochs, .steps = per_epoch});
      });
      while (part.step < per_epoch && batches.next(x, y)) {
        const std::size_t step = epoch * per_epoch + part.step;
        optimizer.set_lr(optim::scheduled_lr(schedule, po.lr, step));
        quant::size_penalty scheduled;
        const quant::size_penalty* step_penalty = penalty;
        if (penalty && search_schedule_().active()) {
          scheduled =
              search_schedule_().at(*penalty, search_start_bits_, step, per_epoch * po.epochs);
          step_penalty = &scheduled;
        }
        const auto r = train_step(net, loss, optimizer, x, y, step_penalty, phase_costs_, sync_);
        if (!r.bad.empty() && !opt_.skip_nonfinite)
          throw step_failure(phase, epoch, part.step, r.bad);
        if (r.bad.empty()) {
          part.loss_sum += static_cast<double>(r.loss) * static_cast<double>(r.images);
          part.correct += r.correct;
          part.images += r.images;
        } else {
          ++part.skipped;
          ++skipped_total_;
        }
        ++part.step;
        ++steps_this_run_;
        const double images = static_cast<double>(part.images);
        notify([&](observer& o) {
          o.on_step({.step = part.step,
                     .images = part.images,
                     .loss = part.images ? part.loss_sum / images : 0.0,
                     .accuracy = part.images ? static_cast<double>(part.correct) / images : 0.0});
        });
        if (stopping() && part.step < per_epoch) {
          part.seconds +=
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          claim_out_dir(history, true);
          stopped(epoch, part.step, checkpoint_at(epoch, part));
          return false;
        }
      }
      // Move the loader on to its next epoch: a full epoch has one `false` left to return, a
      // shortened one (max_steps_per_epoch) the rest of its batches as well.
      while (batches.next(x, y)) {
      }
      epoch_record rec = record_epoch(net, name, epoch, part, t0);
      claim_out_dir(history, true);
      history.push_back(rec);
      const std::size_t skipped = part.skipped;
      part = partial_epoch{};
      const checkpoint_writer save = checkpoint_at(epoch + 1, part);
      notify([&](observer& o) {
        o.on_epoch_end(
            {.history = history, .epochs = po.epochs, .skipped = skipped, .save_checkpoint = save});
      });
      ++epochs_this_run_;
      const bool last = phase == 2 && epoch + 1 == po.epochs;
      if (!last &&
          (stopping() || (opt_.stop_after_epochs && epochs_this_run_ >= opt_.stop_after_epochs))) {
        stopped(epoch, 0, save);
        return false;
      }
    }
    return true;
  }

  /// The record of a finished epoch: its training loss and accuracy from `part`, the test
  /// accuracy and size of `net` now, the time since `t0` plus the time before a resume.
  template <class Net>
  epoch_record record_epoch(Net& net, const char* phase, std::size_t epoch,
                            const partial_epoch& part, std::chrono::steady_clock::time_point t0) {
    epoch_record rec;
    rec.phase = phase;
    rec.epoch = epoch + 1;
    const double images = static_cast<double>(std::max<std::size_t>(part.images, 1));
    rec.loss = part.images ? part.loss_sum / images : std::nan("");
    rec.train_accuracy = part.images ? static_cast<double>(part.correct) / images : std::nan("");
    rec.test_accuracy = test_evaluation(net).accuracy;
    const model_size size = measure_size(net);
    rec.average_bits = size.average_bits();
    rec.size_bytes = size.bytes();
    rec.compression = size.compression();
    rec.seconds =
        part.seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (static_cast<const void*>(&net) == static_cast<const void*>(&quant_) && reports_costs()) {
      rec.bops = costs_->bops.value();
      rec.activation_bytes = costs_->memory.value() / 8;
    }
    return rec;
  }

  /// The error of a step whose loss or gradient is not finite (skip_nonfinite off).
  std::runtime_error step_failure(int phase, std::size_t epoch, std::size_t step,
                                  const std::string& what) const {
    // Before this run's first file, a checkpoint in out_dir is the previous run's.
    std::string files;
    if (claimed_ && std::filesystem::exists(checkpoint_path()))
      files = "; the last checkpoint (" + checkpoint_path().string() + ") is intact";
    else if (!claimed_ && !present_run_files().empty())
      files = "; the run already in " + opt_.out_dir.string() + " is untouched";
    return std::runtime_error(std::string(detail::phase_name(phase)) + " epoch " +
                              std::to_string(epoch + 1) + " step " + std::to_string(step + 1) +
                              ": " + what + files);
  }

  /// The partial epoch's fields of a mid-epoch checkpoint.
  static void write_partial_epoch(checkpoint_data& data, const partial_epoch& p) {
    data.meta["step"] = std::to_string(p.step);
    data.meta["images"] = std::to_string(p.images);
    data.meta["correct"] = std::to_string(p.correct);
    data.meta["skipped"] = std::to_string(p.skipped);
    data.meta["loss_sum"] = exact(p.loss_sum);
    data.meta["epoch_seconds"] = exact(p.seconds);
  }

  static partial_epoch read_partial_epoch(const checkpoint_data& data) {
    partial_epoch p;
    p.step = static_cast<std::size_t>(meta_unsigned(data, "step"));
    p.images = static_cast<std::size_t>(meta_unsigned(data, "images"));
    p.correct = static_cast<std::size_t>(meta_unsigned(data, "correct"));
    p.skipped = static_cast<std::size_t>(meta_unsigned(data, "skipped"));
    p.loss_sum = meta_real(data, "loss_sum");
    p.seconds = meta_real(data, "epoch_seconds");
    return p;
  }

  /// Calls f on every observer: the built-in ones, then the user's.
  template <class F>
  void notify(F&& f) {
    if (!writes()) return; // data-parallel: rank 0's observers only
    for (auto& o : builtin_observers_) f(*o);
    for (observer* o : user_observers_) f(*o);
  }

  FloatNet& fp32_;
  QuantNet& quant_;
  const dataset& train_;
  const dataset& test_;
  trainer_options opt_;
  Parts parts_;
  std::vector<std::unique_ptr<observer>> builtin_observers_;
  std::vector<observer*> user_observers_;
  gradient_sync<T>* sync_ = nullptr; ///< data-parallel (set_gradient_sync); null: one process
  bool claimed_ = false; ///< out_dir belongs to this run (old run's files removed, log open)
  std::size_t epochs_this_run_ = 0;
  std::size_t steps_this_run_ = 0;
  std::size_t skipped_total_ = 0;
  std::string model_name_ = "model";
  std::vector<std::pair<std::string, std::string>> settings_;
  std::unique_ptr<nn::model_costs> costs_; ///< over quant_'s quantizers (see costs())
  quant::cost_penalties cost_penalties_;   ///< the cost budgets' penalties, over *costs_
  const quant::cost_penalties* phase_costs_ = nullptr; ///< in the search phase only
  double search_start_bits_ = 0;                       ///< S0 of the search's penalty schedule

  search_schedule search_schedule_() const {
    return {.budget_anneal = opt_.budget_anneal, .penalty_warmup = opt_.penalty_warmup};
  }
};

} // namespace bitgrad::train
