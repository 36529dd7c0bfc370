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
// Every epoch appends an epoch_record (loss, train and test accuracy, average bits, size,
// compression, time) to the history, the CSV log and the progress output, and writes a
// checkpoint atomically; a run resumes from its checkpoint at the epoch where it stopped and
// ends bit-identical to an uninterrupted run with the same seed and thread count.
//
// The learning rate follows a cosine schedule within each phase:
//   lr(t) = lr_0 * (1 + cos(pi * t / T)) / 2,  t = step within the phase, T = steps in the phase.
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/clip.hpp>
#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/penalty.hpp>
#include <bitgrad/quant/quantizer.hpp>
#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/csv.hpp>
#include <bitgrad/train/evaluate.hpp>
#include <bitgrad/train/json.hpp>
#include <bitgrad/train/model_info.hpp>
#include <bitgrad/train/progress.hpp>
#include <bitgrad/train/records.hpp>
#include <bitgrad/train/report.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <iostream>
#include <numbers>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace bitgrad::train {

/// One phase's schedule.
struct phase_options {
  std::size_t epochs = 0;
  double lr = 1e-3;      ///< Adam learning rate of weights, biases and norm parameters
  double bits_lr = 0.0;  ///< learning rate of bitwidths (search phase)
  double scale_lr = 0.0; ///< learning rate of learned scales / ranges; 0 = same as lr
};

struct trainer_options {
  std::size_t batch_size = 64;
  phase_options pretrain{.epochs = 3, .lr = 2e-3};
  phase_options search{.epochs = 3, .lr = 5e-4, .bits_lr = 0.05};
  phase_options finetune{.epochs = 2, .lr = 2e-4};
  /// Size target as average stored bits per weight, overhead (scales, bitwidths) included:
  /// target_bits = target_average_bits * weights. Ignored when target_bytes is set.
  double target_average_bits = 3.0;
  std::optional<double> target_bytes; ///< size target of the quantized weights in bytes
  quant::penalty_form penalty = quant::penalty_form::hinge;
  double penalty_lambda = 5.0;
  quant::rounding freeze_rounding = quant::rounding::budget_aware;
  std::uint64_t seed = 1;
  loader_options normalise{.mean = {0.2860}, .stddev = {0.3530}}; ///< Fashion-MNIST statistics
  std::size_t max_steps_per_epoch = 0; ///< 0 = whole epochs (tests use a few steps)
  std::size_t stop_after_epochs = 0;   ///< stop (with a checkpoint) after this many epochs
  std::filesystem::path out_dir;       ///< empty: write no files
  bool resume = false;                 ///< continue from out_dir/checkpoint.bin if present
  std::ostream* log = &std::cout;      ///< progress and per-epoch lines; null = silent
  bool terminal = stdout_is_terminal();
};

/// What a run produced.
struct run_result {
  run_summary summary;
  std::vector<epoch_record> history;
  bool finished = false; ///< false when stopped early (stop_after_epochs)
};

namespace detail {

inline const char* phase_name(int phase) {
  static const char* names[] = {"pretrain", "search", "finetune"};
  return names[phase];
}

inline std::string encode_history(const std::vector<epoch_record>& h) {
  std::ostringstream out;
  out.precision(17);
  for (const auto& e : h)
    out << e.phase << ',' << e.epoch << ',' << e.loss << ',' << e.train_accuracy << ','
        << e.test_accuracy << ',' << e.average_bits << ',' << e.size_bytes << ','
        << e.compression << ',' << e.seconds << ';';
  return out.str();
}

inline std::vector<epoch_record> decode_history(const std::string& text) {
  std::vector<epoch_record> h;
  std::istringstream in(text);
  for (std::string row; std::getline(in, row, ';');) {
    std::istringstream fields(row);
    std::string cell;
    std::vector<std::string> cells;
    while (std::getline(fields, cell, ',')) cells.push_back(cell);
    if (cells.size() != 9) throw config_error("checkpoint history: malformed row '" + row + "'");
    epoch_record e;
    e.phase = cells[0];
    e.epoch = std::stoul(cells[1]);
    double* values[] = {&e.loss,       &e.train_accuracy, &e.test_accuracy,
                        &e.average_bits, &e.size_bytes,   &e.compression, &e.seconds};
    for (int i = 0; i < 7; ++i) *values[i] = std::strtod(cells[2 + i].c_str(), nullptr);
    h.push_back(e);
  }
  return h;
}

} // namespace detail

/// Runs the three phases on `fp32` (a no_quant network) and `quantized` (its twin with
/// learned bitwidths), with `train_set` for training and `test_set` for the test accuracy.
template <class FloatNet, class QuantNet>
class trainer {
public:
  using T = typename QuantNet::value_type;

  trainer(FloatNet& fp32, QuantNet& quantized, const dataset& train_set, const dataset& test_set,
          trainer_options options)
      : fp32_(fp32), quant_(quantized), train_(train_set), test_(test_set),
        opt_(std::move(options)) {
    if (opt_.batch_size == 0) throw config_error("trainer: batch size must be >= 1, got 0");
    if (train_.size() == 0) throw config_error("trainer: the training set is empty");
    if (test_.size() == 0) throw config_error("trainer: the test set is empty");
    if (!(opt_.target_average_bits > 0))
      throw config_error("trainer: target average bits must be > 0");
  }

  /// The size target of the quantized weights, in bits.
  double target_bits() {
    if (opt_.target_bytes) return quant::target_bits_from_bytes(*opt_.target_bytes);
    return quant::target_bits_for_average(quantizers(), opt_.target_average_bits);
  }

  run_result run() {
    const auto start = std::chrono::steady_clock::now();
    run_result result;
    int phase = 0;
    std::size_t done_epochs = 0; // epochs finished in `phase`
    double fp32_accuracy = std::nan("");
    double seconds_before = 0;
    std::optional<checkpoint_data> resumed;
    const auto ckpt = checkpoint_path();

    if (opt_.resume && !ckpt.empty() && std::filesystem::exists(ckpt)) {
      resumed = resume_from(ckpt, phase, done_epochs, fp32_accuracy, seconds_before,
                            result.history);
      say("resumed from " + ckpt.string() + " at " + detail::phase_name(phase) + " epoch " +
          std::to_string(done_epochs));
    }
    if (!opt_.out_dir.empty()) std::filesystem::create_directories(opt_.out_dir);
    csv_.reset();
    if (!opt_.out_dir.empty()) {
      csv_.emplace(opt_.out_dir / "log.csv");
      for (const auto& e : result.history) csv_->append(e);
    }
    epochs_this_run_ = 0;
    auto elapsed = [&] {
      return seconds_before +
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };

    // ---- pretrain -------------------------------------------------------------------------
    if (phase == 0) {
      if (!run_phase(fp32_, 0, opt_.pretrain, done_epochs, resumed, nullptr, result.history,
                     fp32_accuracy, elapsed))
        return result;
      fp32_accuracy = evaluate(fp32_, test_, opt_.normalise).accuracy;
      say("fp32 test accuracy " + percent(fp32_accuracy));
      copy_parameters(fp32_, quant_);
      rebind_quantizers(quant_);
      phase = 1;
      done_epochs = 0;
      resumed.reset();
    }
    // ---- search ---------------------------------------------------------------------------
    if (phase == 1) {
      quant::size_penalty penalty{.form = opt_.penalty,
                                  .lambda = opt_.penalty_lambda,
                                  .target_bits = target_bits()};
      if (!run_phase(quant_, 1, opt_.search, done_epochs, resumed, &penalty, result.history,
                     fp32_accuracy, elapsed))
        return result;
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
    result.summary = summarise(fp32_accuracy, elapsed());
    if (!opt_.out_dir.empty()) {
      write_file_atomically(opt_.out_dir / "summary.json", to_json(result.summary) + "\n");
      write_report(opt_.out_dir / "report.html", result.history, result.summary);
    }
    return result;
  }

  /// Freezes the quantized network's bitwidths to integers as the options say.
  void freeze() {
    if (opt_.freeze_rounding == quant::rounding::budget_aware) {
      const auto r = quant::freeze_to_budget(quantizers(), target_bits());
      say("froze bitwidths within budget: " + format_bytes(r.size_bits / 8) + " of " +
          format_bytes(r.target_bits / 8) + (r.within_target ? "" : " (target unreachable)"));
    } else {
      quant_.visit_quantizers([&](std::string_view, auto& q) { q.freeze(opt_.freeze_rounding); });
    }
  }

  /// The summary of the quantized network as it is now.
  run_summary summarise(double fp32_accuracy, double seconds) {
    run_summary s;
    s.model = model_name_;
    s.policy = policy_name();
    s.fp32_accuracy = fp32_accuracy;
    s.quant_accuracy = evaluate(quant_, test_, opt_.normalise).accuracy;
    const model_size size = measure_size(quant_);
    s.average_bits = size.average_bits();
    s.size_bytes = size.bytes();
    s.compression = size.compression();
    s.seconds = seconds;
    s.layers = layer_summaries(quant_);
    s.settings = settings_;
    return s;
  }

  void set_model_name(std::string name) { model_name_ = std::move(name); }
  void add_setting(std::string key, std::string value) {
    settings_.emplace_back(std::move(key), std::move(value));
  }

private:
  auto quantizers() {
    return [this](auto&& f) { quant_.visit_quantizers(f); };
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
    if (opt_.log) *opt_.log << line << '\n' << std::flush;
  }

  std::filesystem::path checkpoint_path() const {
    return opt_.out_dir.empty() ? std::filesystem::path{} : opt_.out_dir / "checkpoint.bin";
  }

  checkpoint_data resume_from(const std::filesystem::path& path, int& phase, std::size_t& epochs,
                              double& fp32_accuracy, double& seconds,
                              std::vector<epoch_record>& history) {
    // Peek at the phase with the FP32 network first; a search/finetune checkpoint belongs to
    // the quantized network.
    checkpoint_data data;
    try {
      data = load_checkpoint(path, fp32_);
    } catch (const format_error&) {
      data = load_checkpoint(path, quant_);
    }
    const std::string p = data.meta.at("phase");
    phase = p == "pretrain" ? 0 : p == "search" ? 1 : p == "finetune" ? 2 : -1;
    if (phase < 0) throw format_error(path.string(), 0, "unknown phase '" + p + "'");
    if (phase > 0) data = load_checkpoint(path, quant_);
    epochs = std::stoul(data.meta.at("epoch"));
    fp32_accuracy = std::strtod(data.meta.at("fp32_accuracy").c_str(), nullptr);
    seconds = std::strtod(data.meta.at("seconds").c_str(), nullptr);
    history = detail::decode_history(data.meta.at("history"));
    return data;
  }

  /// Runs epochs [done, opts.epochs) of one phase; false when stopped early.
  template <class Net, class Elapsed>
  bool run_phase(Net& net, int phase, const phase_options& po, std::size_t done,
                 const std::optional<checkpoint_data>& resumed, const quant::size_penalty* penalty,
                 std::vector<epoch_record>& history, double fp32_accuracy, Elapsed&& elapsed) {
    if (po.epochs == 0 || done >= po.epochs) return true;
    loader_options lo = opt_.normalise;
    lo.batch_size = opt_.batch_size;
    lo.shuffle = true;
    lo.seed = opt_.seed * 1000003u + static_cast<std::uint64_t>(phase);
    loader<T> batches(train_, lo);
    optim::adam<T> adam({.lr = po.lr});
    if (po.bits_lr > 0) adam.set_group(param_kind::bitwidth, {.lr = po.bits_lr, .weight_decay = 0});
    if (po.scale_lr > 0) adam.set_group(param_kind::scale, {.lr = po.scale_lr, .weight_decay = 0});
    if (resumed) {
      batches.restore(parse_loader_state(resumed->loader_state));
      std::istringstream state(resumed->optimizer_state);
      adam.load(state);
    }
    const std::size_t per_epoch = opt_.max_steps_per_epoch
                                      ? std::min(opt_.max_steps_per_epoch, batches.batches_per_epoch())
                                      : batches.batches_per_epoch();
    const std::size_t total_steps = per_epoch * po.epochs;
    auto params = [&](auto&& f) { net.visit_parameters(f); };
    auto quants = [&](auto&& f) { net.visit_quantizers(f); };
    nn::softmax_cross_entropy<T> loss;
    progress_bar bar(opt_.log ? *opt_.log : std::cout, opt_.log && opt_.terminal);
    tensor4<T> x;
    std::vector<std::int32_t> y;

    for (std::size_t epoch = done; epoch < po.epochs; ++epoch) {
      const auto t0 = std::chrono::steady_clock::now();
      net.train(true);
      bar.begin_epoch(detail::phase_name(phase), epoch + 1, po.epochs, per_epoch);
      double loss_sum = 0;
      std::size_t correct = 0, images = 0, step = 0;
      while (step < per_epoch && batches.next(x, y)) {
        const std::size_t global = epoch * per_epoch + step;
        adam.set_lr(po.lr * 0.5 *
                    (1.0 + std::cos(std::numbers::pi * static_cast<double>(global) /
                                    static_cast<double>(total_steps))));
        net.zero_grad();
        const auto& logits = net.forward(x);
        const T l = loss.forward(logits, y);
        correct += nn::count_correct(logits, y);
        net.backward(loss.backward());
        if (penalty) quant::apply_size_penalty(quants, *penalty);
        if (!std::isfinite(static_cast<double>(l)))
          throw std::runtime_error(std::string(detail::phase_name(phase)) + " epoch " +
                                   std::to_string(epoch + 1) + " step " + std::to_string(step) +
                                   ": the loss is not finite");
        const std::string bad = optim::grad_is_finite<T>(params);
        if (!bad.empty())
          throw std::runtime_error(std::string(detail::phase_name(phase)) + " epoch " +
                                   std::to_string(epoch + 1) + " step " + std::to_string(step) +
                                   ": the gradient of " + bad + " is not finite");
        adam.step(params);
        net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
        loss_sum += static_cast<double>(l) * static_cast<double>(y.size());
        images += y.size();
        ++step;
        bar.update(step, images, loss_sum / static_cast<double>(images),
                   static_cast<double>(correct) / static_cast<double>(images));
      }
      if (step == per_epoch && opt_.max_steps_per_epoch) {
        // A shortened epoch: move the loader to the next epoch as a full one would.
        while (batches.next(x, y)) {
        }
      }
      bar.end_epoch();
      epoch_record rec;
      rec.phase = detail::phase_name(phase);
      rec.epoch = epoch + 1;
      rec.loss = loss_sum / static_cast<double>(images);
      rec.train_accuracy = static_cast<double>(correct) / static_cast<double>(images);
      rec.test_accuracy = evaluate(net, test_, opt_.normalise).accuracy;
      const model_size size = measure_size(net);
      rec.average_bits = size.average_bits();
      rec.size_bytes = size.bytes();
      rec.compression = size.compression();
      rec.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      history.push_back(rec);
      if (csv_) csv_->append(rec);
      if (opt_.log) *opt_.log << format_epoch_line(rec, po.epochs) << '\n' << std::flush;

      if (!opt_.out_dir.empty()) {
        checkpoint_data data;
        data.meta["phase"] = detail::phase_name(phase);
        data.meta["epoch"] = std::to_string(epoch + 1);
        std::ostringstream num;
        num.precision(17);
        num << fp32_accuracy;
        data.meta["fp32_accuracy"] = num.str();
        num.str("");
        num << elapsed();
        data.meta["seconds"] = num.str();
        data.meta["history"] = detail::encode_history(history);
        std::ostringstream state;
        adam.save(state);
        data.optimizer_state = state.str();
        data.loader_state = to_string(batches.state());
        save_checkpoint(checkpoint_path(), net, data);
      }
      ++epochs_this_run_;
      if (opt_.stop_after_epochs && epochs_this_run_ >= opt_.stop_after_epochs &&
          !(phase == 2 && epoch + 1 == po.epochs)) {
        say("stopped after " + std::to_string(epochs_this_run_) + " epochs; resume with --resume");
        return false;
      }
    }
    return true;
  }

  FloatNet& fp32_;
  QuantNet& quant_;
  const dataset& train_;
  const dataset& test_;
  trainer_options opt_;
  std::optional<csv_log> csv_;
  std::size_t epochs_this_run_ = 0;
  std::string model_name_ = "model";
  std::vector<std::pair<std::string, std::string>> settings_;
};

} // namespace bitgrad::train
