// Observers: what the trainer tells the world while it trains (Keras' callbacks, Lightning's
// hooks). The trainer calls every observer, in the order they were added, at these points:
//
//   on_out_dir     the run now owns its output folder (the previous run's files are gone, the
//                  folder exists); `history` is what the run has recorded so far (a resumed
//                  run's earlier epochs, or the epochs before its first file).
//   on_epoch_begin an epoch of `steps` steps starts.
//   on_step        a step finished (skipped ones included): running loss and accuracy so far.
//   on_epoch_end   an epoch finished: its record is the last entry of `history`.
//   on_stop        the run stops early (stop_after_*, SIGINT/SIGTERM), mid-epoch when step > 0.
//   on_run_end     the run finished: its summary and whole history.
//
// Events that may write a checkpoint carry `save_checkpoint(path)`: it writes the network, the
// optimizer, the loader and the trainer's position into `path` (train/checkpoint.hpp), so an
// observer decides when and where to checkpoint without knowing the network's type.
//
// The built-in observers below are the trainer's own: the progress line and epoch lines, the
// CSV log, the checkpoint and the report. A user adds their own with trainer::add_observer.
#pragma once

#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/report/csv.hpp>
#include <bitgrad/report/json.hpp>
#include <bitgrad/report/progress.hpp>
#include <bitgrad/report/records.hpp>
#include <bitgrad/report/report.hpp>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <ostream>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::train {

/// Writes a checkpoint of the run as it is now into the given path.
using checkpoint_writer = std::function<void(const std::filesystem::path&)>;

struct epoch_begin_event {
  std::string_view phase; ///< "pretrain", "search" or "finetune"
  std::size_t epoch = 0;  ///< 1-based, within the phase
  std::size_t epochs = 0; ///< epochs of the phase
  std::size_t steps = 0;  ///< steps of this epoch
};

struct step_event {
  std::size_t step = 0;   ///< steps of this epoch done (1-based)
  std::size_t images = 0; ///< images that trained in this epoch (skipped batches not counted)
  double loss = 0;        ///< running mean loss of the epoch
  double accuracy = 0;    ///< running training accuracy of the epoch
};

struct epoch_end_event {
  const std::vector<epoch_record>& history; ///< every epoch so far; back() is this one
  std::size_t epochs = 0;                   ///< epochs of its phase
  std::size_t skipped = 0;                  ///< batches of this epoch skipped as non-finite
  const checkpoint_writer& save_checkpoint;
};

struct stop_event {
  std::string_view phase;
  std::size_t epoch = 0;    ///< 1-based epoch within the phase where the run stops
  std::size_t step = 0;     ///< steps of that epoch done; 0 = stopped at the epoch's end
  bool interrupted = false; ///< SIGINT/SIGTERM (else a stop_after_* limit)
  const checkpoint_writer& save_checkpoint;
};

/// The trainer's hooks; every member does nothing unless overridden.
class observer {
public:
  virtual ~observer() = default;
  virtual void on_out_dir(const std::filesystem::path& /*dir*/,
                          const std::vector<epoch_record>& /*history*/) {}
  virtual void on_epoch_begin(const epoch_begin_event&) {}
  virtual void on_step(const step_event&) {}
  virtual void on_epoch_end(const epoch_end_event&) {}
  virtual void on_stop(const stop_event&) {}
  virtual void on_run_end(const run_summary&, const std::vector<epoch_record>& /*history*/) {}
};

/// The progress line of the running epoch (terminal only) and one line per finished epoch
/// (report/progress.hpp: format_epoch_line), on `out`.
class progress_observer : public observer {
public:
  progress_observer(std::ostream& out, bool terminal) : out_(out), bar_(out, terminal) {}

  void on_epoch_begin(const epoch_begin_event& e) override {
    bar_.begin_epoch(e.phase, e.epoch, e.epochs, e.steps);
  }
  void on_step(const step_event& e) override { bar_.update(e.step, e.images, e.loss, e.accuracy); }
  void on_epoch_end(const epoch_end_event& e) override {
    bar_.end_epoch();
    out_ << format_epoch_line(e.history.back(), e.epochs);
    if (e.skipped) out_ << "  (" << e.skipped << " non-finite batches skipped)";
    out_ << '\n' << std::flush;
  }
  void on_stop(const stop_event&) override { bar_.end_epoch(); }

private:
  std::ostream& out_;
  progress_bar bar_;
};

/// The CSV log (report/csv.hpp) `log.csv` in the run's folder: rewritten with the history when
/// the run takes the folder, then one row per epoch.
class csv_observer : public observer {
public:
  /// `costs`: the log with the cost columns (report/csv.hpp).
  explicit csv_observer(bool costs = false) : costs_(costs) {}
  void on_out_dir(const std::filesystem::path& dir,
                  const std::vector<epoch_record>& history) override {
    log_.emplace(dir / "log.csv", csv_open::truncate, costs_);
    for (const auto& e : history) log_->append(e);
  }
  void on_epoch_end(const epoch_end_event& e) override {
    if (log_) log_->append(e.history.back());
  }

private:
  std::optional<csv_log> log_;
  bool costs_ = false;
};

/// A checkpoint at every epoch's end and when the run stops early, at `path`.
class checkpoint_observer : public observer {
public:
  explicit checkpoint_observer(std::filesystem::path path) : path_(std::move(path)) {}
  void on_epoch_end(const epoch_end_event& e) override { e.save_checkpoint(path_); }
  void on_stop(const stop_event& e) override {
    if (e.step > 0) e.save_checkpoint(path_); // at an epoch's end, on_epoch_end wrote it
  }

private:
  std::filesystem::path path_;
};

/// summary.json (report/json.hpp) and report.html (report/report.hpp) in `dir` at the run's end.
class report_observer : public observer {
public:
  explicit report_observer(std::filesystem::path dir) : dir_(std::move(dir)) {}
  void on_run_end(const run_summary& summary, const std::vector<epoch_record>& history) override {
    write_file_atomically(dir_ / "summary.json", to_json(summary));
    write_report(dir_ / "report.html", history, summary);
  }

private:
  std::filesystem::path dir_;
};

} // namespace bitgrad::train
