// What a training run records: one epoch_record per epoch, one layer_summary per quantized
// layer and one run_summary at the end. Plain data, no behaviour: the trainer fills them, the
// writers (json.hpp, csv.hpp, report.hpp, progress.hpp) turn them into text.
//
// Words used here:
//   phase     the stage of training an epoch belongs to ("pretrain", "search", "finetune").
//   epoch     1-based index of the epoch inside its phase.
//   accuracy  a fraction in [0, 1] (never a percentage); NaN when it was not measured.
//   bits      the learned bitwidth of a channel group; average_bits is weighted by parameters.
//   size      the model's stored bytes as train/model_info.hpp defines them (codes, per-group
//             scale and bitwidth, float32 biases and norm parameters; a layer's: its weights and
//             its bias); compression = fp32 bytes / size_bytes.
//
// format_bytes() is here too: the one spelling of a size shared by the progress lines and the
// report.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad {

/// One finished epoch of one phase.
struct epoch_record {
  std::string phase;
  std::size_t epoch = 0;
  double loss = std::numeric_limits<double>::quiet_NaN();
  double train_accuracy = std::numeric_limits<double>::quiet_NaN();
  double test_accuracy = std::numeric_limits<double>::quiet_NaN();
  double average_bits = std::numeric_limits<double>::quiet_NaN();
  double size_bytes = std::numeric_limits<double>::quiet_NaN();
  double compression = std::numeric_limits<double>::quiet_NaN();
  double seconds = std::numeric_limits<double>::quiet_NaN();
  /// Hardware costs per image (issue #22): BOPs and peak activation bytes; NaN when the run
  /// does not report costs (a network without activation quantizers and no cost budget).
  double bops = std::numeric_limits<double>::quiet_NaN();
  double activation_bytes = std::numeric_limits<double>::quiet_NaN();
};

/// One cost of the final model against its budget (issue #22).
struct cost_summary {
  std::string name; ///< size, bops, activation_memory
  std::string unit; ///< bytes, BOPs (per image)
  double value = std::numeric_limits<double>::quiet_NaN();
  double target = std::numeric_limits<double>::quiet_NaN(); ///< NaN: no budget
  bool met = true;                                          ///< value <= target (no budget: true)
};

/// The learned bitwidths of one quantized layer at the end of a run.
struct layer_summary {
  std::string name;
  std::string policy;
  std::size_t params = 0;
  std::size_t groups = 0;
  double bits_min = std::numeric_limits<double>::quiet_NaN();
  double bits_mean = std::numeric_limits<double>::quiet_NaN();
  double bits_max = std::numeric_limits<double>::quiet_NaN();
  double bytes = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> group_bits; ///< one entry per channel group
  // Optional diagnostics; empty / NaN when the run did not compute them.
  std::vector<double> group_sensitivity;                         ///< one entry per channel group
  double bits_spread = std::numeric_limits<double>::quiet_NaN(); ///< bits_max - bits_min
  double rank_correlation = std::numeric_limits<double>::quiet_NaN(); ///< bits vs sensitivity
};

/// One activation quantizer at the end of a run (issue #22): its bitwidths and learned ranges
/// per channel group.
struct activation_summary {
  std::string name;
  std::size_t channels = 0;
  std::vector<double> group_bits;   ///< one entry per channel group (integers once frozen)
  std::vector<double> group_ranges; ///< the largest level a_g of each group's grid
};

/// The outcome of a whole run.
struct run_summary {
  std::string model;
  std::string policy;
  double fp32_accuracy = std::numeric_limits<double>::quiet_NaN();
  double quant_accuracy = std::numeric_limits<double>::quiet_NaN();
  double average_bits = std::numeric_limits<double>::quiet_NaN();
  double size_bytes = std::numeric_limits<double>::quiet_NaN();
  double compression = std::numeric_limits<double>::quiet_NaN();
  double seconds = std::numeric_limits<double>::quiet_NaN();
  std::vector<layer_summary> layers;
  /// The activation quantizers in network order; empty when the network has none.
  std::vector<activation_summary> activations;
  /// Each cost against its budget; empty when the run does not report costs (as above).
  std::vector<cost_summary> costs;
  std::vector<std::pair<std::string, std::string>> settings; ///< (name, value), in order
};

/// A size in decimal units: "512 B", "12.3 KB" (10^3), "4.56 MB" (10^6), "1.23 GB"; "n/a"
/// when not finite.
inline std::string format_bytes(double bytes) {
  if (!std::isfinite(bytes)) return "n/a";
  char buffer[48];
  double a = std::abs(bytes);
  if (a < 999.5)
    std::snprintf(buffer, sizeof buffer, "%.0f B", bytes);
  else if (a < 999.95e3)
    std::snprintf(buffer, sizeof buffer, "%.1f KB", bytes / 1e3);
  else if (a < 999.995e6)
    std::snprintf(buffer, sizeof buffer, "%.2f MB", bytes / 1e6);
  else
    std::snprintf(buffer, sizeof buffer, "%.2f GB", bytes / 1e9);
  return buffer;
}

} // namespace bitgrad
