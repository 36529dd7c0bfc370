// Training checkpoints: everything needed to continue a run exactly where it stopped.
//
// File layout, version 4 (io/bytes.hpp: little-endian; integers unsigned unless noted; "string"
// = u64 length + bytes):
//   offset 0   magic "BGCKPT\r\n" (8 bytes)
//          8   u32 format version (4)
//         12   u32 bytes per parameter value (4: float, 8: double)
//         16   the run's state (checkpoint_data::save):
//                u32 metadata count, then per entry (keys sorted, unique): string key,
//                    string value ("phase", "epoch", "fp32_accuracy", ...)
//                u32 history count, then per finished epoch (epoch_record): string phase,
//                    u64 epoch, f64 loss, train_accuracy, test_accuracy, average_bits,
//                    size_bytes, compression, seconds
//                string optimizer state (an optimizer's save(), optim/state.hpp)
//                u8 loader state present (0 / 1), then loader_state::save (data/loader.hpp)
//              u32     parameter count, then per parameter:
//                        string name, u8 kind (param_kind), u64 count, count values
//              u32     quantizer count, then per quantizer:
//                        string name, the quantizer's state (q.save(), see
//                        quant/group_quantizer.hpp: u8 frozen, u32 groups, groups x i32
//                        frozen bitwidths; then the policy's own state: noise_bits adds
//                        u64 noise step, the others nothing)
//              u32     batch norm count, then per batch norm (nn/batch_norm.hpp; the order of
//                      nn::visit_layers): string layer name ("layer1.0.bn1"), u64 channels C,
//                      C values running mean, C values running variance (the buffers eval
//                      normalises with; they are not parameters, so the optimizer never sees them)
//   end - 4    u32 CRC-32 (zlib) of every byte before it
// Version 3 (bitgrad up to 8c078e5) is still read: version 4 without the batch norms' running
// statistics. The network keeps the statistics it has (a fresh one: mean 0, variance 1), and
// checkpoint_data::batch_norm_statistics is false so that the trainer can say so.
// Version 2 (bitgrad up to 90aa01b) is still read: version 3's layout, but a quantizer's state is
// the core's bytes only; noise_bits' noise step was the metadata field
// "noise_step.<quantizer name>" (a decimal u64), which the reader turns into the state's u64
// and then drops from the metadata. A quantizer without that field keeps the policy state it
// has (noise_bits: the step it is at).
// Version 1 (bitgrad up to fdc34a8) is still read: after the value size it holds the metadata
// as one string of "key=value" lines (the history in the key "history": ';'-separated rows of
// 9 ','-separated values), then the parameters and quantizers as above, then the optimizer
// state as a string and the loader state as a string of loader_state's text form. It is read
// into the same checkpoint_data; its quantizer states and noise_step fields are read as in
// version 2. Other versions are rejected.
//
// Parameters and quantizers are stored in the network's visitation order and must match the
// network on load name by name and size by size: a checkpoint of another architecture is
// rejected with the first parameter that differs. So are the batch norms' statistics: by layer
// name and channel count ("checkpoint of another architecture: batch norm 3 is 'bn1' (8
// channels), the network expects 'bn1' (16 channels)"); their values must be finite and the
// variances >= 0. step_bits checkpoints of bitgrad before
// 658db2e (#18 R1; versions 1 and 2) are refused, saying so: their parameters were "step" d
// and "qmax" q_max; they are now "bits" b (kind bitwidth) and "step" d, with q_max =
// d (2^(b-1) - 1). The values convert (b = 1 + log2(q_max / d + 1)) but the optimizer's moments
// of q_max do not become moments of b, so such a run could not go on as it would have: it is
// retrained, or resumed with the older bitgrad. Parameter values must be finite, bitwidth
// parameters inside [1, 16], scale parameters > 0, and frozen group counts those of the
// network's quantizers.
//
// Metadata values are text; meta_field / meta_unsigned / meta_real read one field and throw
// format_error naming the file, the field, what was expected and what was found
// ("checkpoint.bin: at offset 16: metadata field 'epoch': expected an unsigned integer, got
// 'abc'"; 16 is where the metadata starts). Numbers are parsed whole (std::from_chars): no
// sign on unsigned fields, no leading or trailing characters; reals may be nan or inf.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/quant/group_quantizer.hpp>
#include <bitgrad/report/records.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::train {

namespace detail {

inline constexpr char checkpoint_magic[8] = {'B', 'G', 'C', 'K', 'P', 'T', '\r', '\n'};
/// The version written; versions 1 to 3 are read too.
inline constexpr std::uint32_t checkpoint_version = 4;
/// The first version that holds the batch norms' running statistics.
inline constexpr std::uint32_t batch_norm_statistics_version = 4;
/// The metadata key prefix of noise_bits' noise step in versions 1 and 2.
inline constexpr std::string_view legacy_noise_step_key = "noise_step.";
/// Offset of the metadata in the file (named by metadata errors).
inline constexpr std::uint64_t checkpoint_metadata_offset = 16;
// What the reader accepts (a corrupt length fails here instead of allocating):
inline constexpr std::uint64_t max_meta_text = std::uint64_t{1} << 20; ///< a metadata value
inline constexpr std::uint64_t max_meta_name = 4096;        ///< a key, a name, a history phase
inline constexpr std::uint32_t max_meta_entries = 1u << 16; ///< metadata entries
inline constexpr std::uint32_t max_history = 1u << 20;      ///< history records

/// `text` as a whole unsigned decimal integer, or nullopt.
inline std::optional<std::uint64_t> parse_unsigned(std::string_view text) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return v;
}

/// `text` as a whole real number (nan and inf included), or nullopt.
inline std::optional<double> parse_real(std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return v;
}

/// "'abc'" for messages, cut to 40 characters.
inline std::string quoted_value(std::string_view text) {
  return "'" + std::string(text.substr(0, 40)) + (text.size() > 40 ? "...'" : "'");
}

/// One finished epoch in a version 2 or 3 checkpoint: string phase, u64 epoch, then the seven
/// reals of epoch_record in declaration order.
inline void write_epoch_record(io::byte_writer& w, const epoch_record& e) {
  w.put_string(e.phase);
  w.put(static_cast<std::uint64_t>(e.epoch));
  for (double v : {e.loss, e.train_accuracy, e.test_accuracy, e.average_bits, e.size_bytes,
                   e.compression, e.seconds})
    w.put(v);
}

inline epoch_record read_epoch_record(io::byte_reader& r) {
  epoch_record e;
  e.phase = r.get_string("history phase", max_meta_name);
  e.epoch = static_cast<std::size_t>(r.get<std::uint64_t>("history epoch"));
  for (double* v : {&e.loss, &e.train_accuracy, &e.test_accuracy, &e.average_bits, &e.size_bytes,
                    &e.compression, &e.seconds})
    *v = r.get<double>("history values");
  return e;
}

/// The history of a version 1 checkpoint: rows "phase,epoch,loss,train_accuracy,
/// test_accuracy,average_bits,size_bytes,compression,seconds;" in the metadata field
/// 'history'. format_error naming `file`, the row and the column when a row is malformed.
inline std::vector<epoch_record> decode_history(const std::string& text, const std::string& file) {
  static const char* columns[] = {"phase",          "epoch",         "loss",
                                  "train_accuracy", "test_accuracy", "average_bits",
                                  "size_bytes",     "compression",   "seconds"};
  std::vector<epoch_record> h;
  std::istringstream in(text);
  std::size_t row_index = 0;
  for (std::string row; std::getline(in, row, ';');) {
    ++row_index;
    auto fail = [&](const std::string& what) {
      return format_error(file, checkpoint_metadata_offset,
                          "metadata field 'history': row " + std::to_string(row_index) + ": " +
                              what);
    };
    std::istringstream fields(row);
    std::string cell;
    std::vector<std::string> cells;
    while (std::getline(fields, cell, ',')) cells.push_back(cell);
    if (cells.size() != 9)
      throw fail("expected 9 comma-separated values, got " + std::to_string(cells.size()) + " in " +
                 quoted_value(row));
    epoch_record e;
    e.phase = cells[0];
    const auto epoch = parse_unsigned(cells[1]);
    if (!epoch) throw fail("epoch: expected an unsigned integer, got " + quoted_value(cells[1]));
    e.epoch = static_cast<std::size_t>(*epoch);
    double* values[] = {&e.loss,       &e.train_accuracy, &e.test_accuracy, &e.average_bits,
                        &e.size_bytes, &e.compression,    &e.seconds};
    for (int i = 0; i < 7; ++i) {
      const auto v = parse_real(cells[2 + i]);
      if (!v)
        throw fail(std::string(columns[2 + i]) + ": expected a number, got " +
                   quoted_value(cells[2 + i]));
      *values[i] = *v;
    }
    h.push_back(e);
  }
  return h;
}

} // namespace detail

/// What a checkpoint holds besides the network: the run's state. It writes and reads itself
/// (the run's-state block of the version 3 layout at the top of this header).
struct checkpoint_data {
  std::map<std::string, std::string> meta; ///< phase, epoch, ... as text
  std::vector<epoch_record> history;       ///< the run's finished epochs
  std::string optimizer_state;             ///< an optimizer's save() bytes
  std::optional<loader_state> loader;      ///< where the data loader is; none: not saved
  std::string file; ///< the file it was read from (named in messages); empty before saving
  std::uint64_t optimizer_state_offset = 0; ///< where optimizer_state starts in `file`
  /// The file held the batch norms' running statistics (version 4 and later, also when the
  /// network has none) and they were loaded; false for an older file, whose network kept its
  /// own statistics.
  bool batch_norm_statistics = false;

  void save(io::byte_writer& w) const {
    w.put(static_cast<std::uint32_t>(meta.size()));
    for (const auto& [key, value] : meta) {
      w.put_string(key);
      w.put_string(value);
    }
    w.put(static_cast<std::uint32_t>(history.size()));
    for (const epoch_record& e : history) detail::write_epoch_record(w, e);
    w.put_string(optimizer_state);
    w.put(loader.has_value());
    if (loader) loader->save(w);
  }

  /// Reads what save() wrote; format_error naming the reader's source, the offset and the
  /// field (a duplicate metadata key, a length past its limit, ...). *this is unchanged then.
  void load(io::byte_reader& r) {
    checkpoint_data d;
    d.file = r.source();
    const std::uint64_t count_at = r.offset();
    const auto entries = r.get<std::uint32_t>("metadata count");
    if (entries > detail::max_meta_entries)
      r.fail_at(count_at, "metadata count " + std::to_string(entries) + " exceeds " +
                              std::to_string(detail::max_meta_entries));
    for (std::uint32_t i = 0; i < entries; ++i) {
      const std::uint64_t at = r.offset();
      std::string key = r.get_string("metadata key", detail::max_meta_name);
      std::string value = r.get_string("metadata value", detail::max_meta_text);
      if (!d.meta.emplace(key, std::move(value)).second)
        r.fail_at(at, "metadata key " + detail::quoted_value(key) + " appears twice");
    }
    const std::uint64_t history_at = r.offset();
    const auto records = r.get<std::uint32_t>("history count");
    if (records > detail::max_history)
      r.fail_at(history_at, "history of " + std::to_string(records) + " epochs exceeds " +
                                std::to_string(detail::max_history));
    for (std::uint32_t i = 0; i < records; ++i) d.history.push_back(detail::read_epoch_record(r));
    d.optimizer_state_offset = r.offset() + 8; // after the string's length
    d.optimizer_state = r.get_string("optimizer state");
    if (r.get<bool>("loader state flag")) {
      loader_state s;
      s.load(r);
      d.loader = std::move(s);
    }
    *this = std::move(d);
  }

  /// A reader of optimizer_state whose messages name the checkpoint file and the offsets in it
  /// (pass it to the optimizer's load()). Valid while *this is.
  io::byte_reader optimizer_reader() const {
    return io::byte_reader(optimizer_state, file.empty() ? "optimizer state" : file,
                           optimizer_state_offset);
  }

  /// The loader state; format_error naming the file when the checkpoint holds none.
  const loader_state& saved_loader() const {
    if (!loader)
      throw format_error(file, detail::checkpoint_metadata_offset,
                         "the checkpoint holds no loader state");
    return *loader;
  }
};

/// The metadata field `key`; format_error naming the file and the field when it is missing.
inline const std::string& meta_field(const checkpoint_data& data, const std::string& key) {
  const auto it = data.meta.find(key);
  if (it == data.meta.end())
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "' is missing");
  return it->second;
}

/// The metadata field `key` as an unsigned integer; format_error naming the file, the field and
/// the text found otherwise.
inline std::uint64_t meta_unsigned(const checkpoint_data& data, const std::string& key) {
  const std::string& text = meta_field(data, key);
  const auto v = detail::parse_unsigned(text);
  if (!v)
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "': expected an unsigned integer, got " +
                           detail::quoted_value(text));
  return *v;
}

/// The metadata field `key` as a real number (nan and inf accepted); format_error naming the
/// file, the field and the text found otherwise.
inline double meta_real(const checkpoint_data& data, const std::string& key) {
  const std::string& text = meta_field(data, key);
  const auto v = detail::parse_real(text);
  if (!v)
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "': expected a number, got " +
                           detail::quoted_value(text));
  return *v;
}

namespace detail {

/// Reads the state q.save() wrote (version 3: quant/group_quantizer.hpp gives the bytes) and
/// checks it against q without changing q: a copy of q loads it. Returns what loads
/// that state into q, which parse_checkpoint calls once the whole file is validated (after
/// the parameters are copied in). `name` names the quantizer in messages.
template <class Q>
std::function<void()> read_quantizer_state(io::byte_reader& r, Q& q, const std::string& name) {
  const std::uint64_t start = r.offset();
  Q probe = q;
  probe.load(r, name);
  io::byte_writer state; // the state as read (save and load round-trip)
  probe.save(state);
  return [&q, name, source = r.source(), start, bytes = state.take()] {
    io::byte_reader again(bytes, source, start);
    q.load(again, name);
  };
}

/// f(full_name, running_mean, running_var) for every batch norm of net (leaves with
/// running_mean() and running_var(), nn/batch_norm.hpp), in the order of nn::visit_layers.
template <class Net, class F>
void visit_batch_norm_statistics(Net& net, F&& f) {
  auto leaf = [&](const std::string& name, auto& l) {
    if constexpr (requires {
                    l.running_mean();
                    l.running_var();
                  })
      f(name, l.running_mean(), l.running_var());
  };
  nn::visit_layers(net, leaf);
}

/// Reads the batch norms' statistics of a version 4 file for net and checks them (names,
/// channel counts, finite values, variances >= 0) without changing net; returns what copies
/// them into net.
template <class Net>
std::function<void()> read_batch_norm_statistics(io::byte_reader& r, Net& net) {
  using T = typename Net::value_type;
  struct target {
    std::string name;
    T* mean;
    T* var;
    std::size_t channels;
  };
  std::vector<target> targets;
  visit_batch_norm_statistics(net, [&](const std::string& name, auto& mean, auto& var) {
    targets.push_back({name, mean.data(), var.data(), mean.size()});
  });
  const std::uint64_t count_at = r.offset();
  const auto count = r.get<std::uint32_t>("batch norm count");
  if (count != targets.size())
    r.fail_at(count_at, "checkpoint of another architecture: " + std::to_string(count) +
                            " batch norms, the network has " + std::to_string(targets.size()));
  std::vector<std::vector<T>> values(count); // per batch norm: C means, then C variances
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t at = r.offset();
    const std::string name = r.get_string("batch norm name", max_meta_name);
    const auto channels = r.get<std::uint64_t>("batch norm channels");
    if (name != targets[i].name || channels != targets[i].channels)
      r.fail_at(at, "checkpoint of another architecture: batch norm " + std::to_string(i) +
                        " is '" + name + "' (" + std::to_string(channels) +
                        " channels), the network expects '" + targets[i].name + "' (" +
                        std::to_string(targets[i].channels) + " channels)");
    r.need_values(2 * channels, sizeof(T), "batch norm statistics");
    const std::uint64_t first = r.offset();
    values[i].resize(2 * static_cast<std::size_t>(channels));
    r.get_array(values[i].data(), values[i].size(), "batch norm statistics");
    for (std::size_t j = 0; j < values[i].size(); ++j) {
      const T v = values[i][j];
      const bool is_var = j >= channels;
      const char* bad = !std::isfinite(v)        ? ", not finite"
                        : is_var && !(v >= T(0)) ? ", not a variance >= 0"
                                                 : nullptr;
      if (bad != nullptr)
        r.fail_at(first + j * sizeof(T),
                  "batch norm '" + name + "' running " + (is_var ? "variance " : "mean ") +
                      std::to_string(is_var ? j - channels : j) + " is " + std::to_string(v) + bad);
    }
  }
  return [targets = std::move(targets), values = std::move(values)] {
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const std::size_t c = targets[i].channels;
      std::copy(values[i].begin(), values[i].begin() + std::ptrdiff_t(c), targets[i].mean);
      std::copy(values[i].begin() + std::ptrdiff_t(c), values[i].end(), targets[i].var);
    }
  };
}

/// What a parameter name mismatch means when it is not another architecture: the step_bits
/// parameters of bitgrad before 658db2e ("<layer>.step" where the network now has
/// "<layer>.bits"). Empty otherwise.
inline std::string parameter_mismatch_reason(std::uint32_t version, std::string_view found,
                                             std::string_view expected) {
  auto layer_of = [](std::string_view name, std::string_view leaf) -> std::string_view {
    if (name.size() <= leaf.size() + 1 || !name.ends_with(leaf) ||
        name[name.size() - leaf.size() - 1] != '.')
      return {};
    return name.substr(0, name.size() - leaf.size() - 1);
  };
  const std::string_view layer = layer_of(found, "step");
  if (version >= 3 || layer.empty() || layer != layer_of(expected, "bits")) return {};
  return "a step_bits checkpoint written before bitgrad 658db2e (checkpoint version " +
         std::to_string(version) + ", parameters step and qmax; step_bits now learns bits and " +
         "step): it cannot be resumed by this version: retrain, or resume it with the older "
         "bitgrad";
}

/// Reads a version 1 or 2 quantizer state (the core's bytes only) as read_quantizer_state reads
/// a version 3 one: the policy's own state after the core's is the u64 of the metadata field
/// "noise_step.<name>" when `meta` has it, else the policy state q has now (what q.save()
/// writes after the core's bytes). format_error when that field is not a u64 or q has no noise
/// step to take it.
template <class Q>
std::function<void()> read_legacy_quantizer_state(io::byte_reader& r, Q& q, const std::string& name,
                                                  const checkpoint_data& data) {
  const std::uint64_t start = r.offset();
  const std::vector<int> bits = quant::detail::load_frozen_state(r, q.groups(), name);
  io::byte_writer record;
  quant::detail::save_frozen_state(record, bits);
  const std::string key = std::string(legacy_noise_step_key) + name;
  const bool has_step = data.meta.count(key) != 0;
  if (has_step) {
    record.put(meta_unsigned(data, key));
  } else {
    io::byte_writer now; // q's state now: the core's bytes (u8, u32 n, n x i32), then its own
    q.save(now);
    io::byte_reader core(now.bytes(), "quantizer state");
    (void)core.get<std::uint8_t>("frozen flag");
    const std::size_t core_bytes = 5 + 4 * std::size_t{core.get<std::uint32_t>("group count")};
    record.put_bytes(now.bytes().data() + core_bytes, now.bytes().size() - core_bytes);
  }
  io::byte_reader upgraded(record.bytes(), r.source(), start);
  auto apply = read_quantizer_state(upgraded, q, name);
  if (!upgraded.at_end())
    throw format_error(data.file, checkpoint_metadata_offset,
                       "metadata field '" + key + "': quantizer '" + name + "' (" + Q::policy_name +
                           ") has no noise step");
  return apply;
}

/// Reads the parameters and the quantizers' states for net and checks them against it (names,
/// kinds, sizes, value ranges) without changing net; returns what copies them into net.
/// `version` is the file's; `data` its metadata, read before (versions 1 and 2 keep noise
/// steps there).
template <class Net>
std::function<void()> read_network(io::byte_reader& r, Net& net, std::uint32_t version,
                                   const checkpoint_data& data) {
  using T = typename Net::value_type;
  std::vector<param_ref<T>> params;
  net.visit_parameters([&](param_ref<T>& p) { params.push_back(p); });
  const auto count = r.get<std::uint32_t>("parameter count");
  if (count != params.size())
    r.fail("checkpoint of another architecture: " + std::to_string(count) +
           " parameters, the network has " + std::to_string(params.size()));
  std::vector<std::vector<T>> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t at = r.offset();
    const std::string name = r.get_string("parameter name", max_meta_name);
    const auto kind = r.get<std::uint8_t>("parameter kind");
    const auto size = r.get<std::uint64_t>("parameter size");
    if (const std::string why = parameter_mismatch_reason(version, name, params[i].name);
        !why.empty())
      r.fail_at(at, why + " (parameter " + std::to_string(i) + " is '" + name +
                        "', the network expects '" + params[i].name + "')");
    if (name != params[i].name || size != params[i].size ||
        kind != static_cast<std::uint8_t>(params[i].kind))
      r.fail_at(at, "checkpoint of another architecture: parameter " + std::to_string(i) + " is '" +
                        name + "' (" + std::to_string(size) + " values), the network expects '" +
                        params[i].name + "' (" + std::to_string(params[i].size) + " values)");
    r.need_values(size, sizeof(T), "parameter values");
    const std::uint64_t first = r.offset();
    values[i].resize(static_cast<std::size_t>(size));
    r.get_array(values[i].data(), values[i].size(), "parameter values");
    // A run never saves non-finite values (the trainer stops on a non-finite gradient), and
    // quantizers project their parameters after every step: bitwidths stay inside [1, 16]
    // (they become integer grids), noise_bits' logits inside +-bitwidth_logit_limit, and scales
    // stay positive (weights are divided by them).
    const bool is_bits = kind == static_cast<std::uint8_t>(param_kind::bitwidth);
    const bool is_scale = kind == static_cast<std::uint8_t>(param_kind::scale);
    const bool is_logit = is_bits && is_bitwidth_logit(name);
    for (std::size_t j = 0; j < size; ++j) {
      const T v = values[i][j];
      const char* bad =
          !std::isfinite(v) ? ", not finite"
          : is_bits && !bitwidth_value_in_range(name, static_cast<double>(v))
              ? (is_logit ? ", not a logit in [-10, 10]" : ", not a bitwidth in [1, 16]")
          : is_scale && !(v > T(0)) ? ", not a positive scale"
                                    : nullptr;
      if (bad != nullptr)
        r.fail_at(first + j * sizeof(T), "parameter '" + name + "' value " + std::to_string(j) +
                                             " is " + std::to_string(v) + bad);
    }
  }

  std::size_t quantizers = 0;
  net.visit_quantizers([&](std::string_view, const auto&) { ++quantizers; });
  const auto qcount = r.get<std::uint32_t>("quantizer count");
  if (qcount != quantizers)
    r.fail("checkpoint of another architecture: " + std::to_string(qcount) +
           " quantizers, the network has " + std::to_string(quantizers));
  std::vector<std::function<void()>> apply_quantizers;
  net.visit_quantizers([&](std::string_view expected, auto& q) {
    const std::string name = r.get_string("quantizer name", max_meta_name);
    if (name != expected)
      r.fail("checkpoint of another architecture: quantizer '" + name + "', expected '" +
             std::string(expected) + "'");
    apply_quantizers.push_back(version >= 3 ? read_quantizer_state(r, q, name)
                                            : read_legacy_quantizer_state(r, q, name, data));
  });
  return [params = std::move(params), values = std::move(values),
          apply_quantizers = std::move(apply_quantizers)] {
    for (std::size_t i = 0; i < params.size(); ++i)
      std::copy(values[i].begin(), values[i].end(), params[i].value);
    for (const auto& apply : apply_quantizers) apply();
  };
}

/// The metadata string of a version 1 checkpoint ("key=value" lines) into data.meta, its
/// 'history' field into data.history.
inline void read_v1_metadata(io::byte_reader& r, checkpoint_data& data) {
  std::istringstream lines(r.get_string("metadata"));
  for (std::string line; std::getline(lines, line);) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) r.fail("metadata line without '=': " + line);
    data.meta[line.substr(0, eq)] = line.substr(eq + 1);
  }
  if (const auto it = data.meta.find("history"); it != data.meta.end()) {
    data.history = decode_history(it->second, data.file);
    data.meta.erase(it);
  }
}

/// The optimizer and loader states that end a version 1 checkpoint (the loader's in its text
/// form; empty: none).
inline void read_v1_states(io::byte_reader& r, checkpoint_data& data) {
  data.optimizer_state_offset = r.offset() + 8;
  data.optimizer_state = r.get_string("optimizer state");
  const std::uint64_t loader_at = r.offset() + 8;
  const std::string text = r.get_string("loader state");
  if (!text.empty()) data.loader = parse_loader_state(text, data.file, loader_at);
}

} // namespace detail

/// Writes net's parameters, its quantizers' states, its batch norms' running statistics and
/// `data` to `path` atomically (version 4).
template <class Net>
void save_checkpoint(const std::filesystem::path& path, Net& net, const checkpoint_data& data) {
  using T = typename Net::value_type;
  io::byte_writer w;
  w.put_bytes(detail::checkpoint_magic, sizeof detail::checkpoint_magic);
  w.put(detail::checkpoint_version);
  w.put(static_cast<std::uint32_t>(sizeof(T)));
  data.save(w);

  std::vector<param_ref<T>> params;
  net.visit_parameters([&](param_ref<T>& p) { params.push_back(p); });
  w.put(static_cast<std::uint32_t>(params.size()));
  for (const auto& p : params) {
    w.put_string(p.name);
    w.put(static_cast<std::uint8_t>(p.kind));
    w.put(static_cast<std::uint64_t>(p.size));
    w.put_array(std::span<const T>(p.value, p.size));
  }

  std::uint32_t quantizers = 0;
  net.visit_quantizers([&](std::string_view, const auto&) { ++quantizers; });
  w.put(quantizers);
  net.visit_quantizers([&](std::string_view name, const auto& q) {
    w.put_string(name);
    q.save(w);
  });

  std::uint32_t batch_norms = 0;
  detail::visit_batch_norm_statistics(net, [&](const auto&, auto&, auto&) { ++batch_norms; });
  w.put(batch_norms);
  detail::visit_batch_norm_statistics(
      net, [&](const std::string& name, const auto& mean, const auto& var) {
        w.put_string(name);
        w.put(static_cast<std::uint64_t>(mean.size()));
        w.put_array(std::span<const T>(mean.data(), mean.size()));
        w.put_array(std::span<const T>(var.data(), var.size()));
      });
  w.put(io::crc32(w.bytes().data(), w.size()));
  write_file_atomically(path, std::string_view(w.bytes()));
}

/// Parses the checkpoint `bytes` (the whole file, held in memory; version 1 to 4) into net and
/// returns the rest; `file` names it in error messages. The in-memory entry of load_checkpoint
/// (and the fuzzing entry): any input either loads or throws format_error / config_error.
/// Throws format_error (file, offset, reason) for a malformed file or another architecture;
/// `net` is only modified once the whole file has been validated.
template <class Net>
checkpoint_data parse_checkpoint(std::span<const std::uint8_t> bytes, const std::string& file,
                                 Net& net) {
  using T = typename Net::value_type;
  if (bytes.size() < sizeof detail::checkpoint_magic + 12)
    throw format_error(file, 0,
                       "too short for a checkpoint (" + std::to_string(bytes.size()) + " bytes)");
  const std::size_t body = bytes.size() - 4;
  const auto stored_crc =
      io::byte_reader(bytes.subspan(body), file, body).get<std::uint32_t>("CRC");
  io::byte_reader r(bytes.first(body), file);
  char magic[8];
  r.get_bytes(magic, 8, "magic");
  if (std::memcmp(magic, detail::checkpoint_magic, 8) != 0)
    throw format_error(file, 0, "not a bitgrad checkpoint (bad magic)");
  if (io::crc32(bytes.data(), body) != stored_crc)
    throw format_error(file, body, "checksum mismatch: the file is corrupted");
  const auto version = r.get<std::uint32_t>("version");
  if (version < 1 || version > detail::checkpoint_version)
    r.fail("unsupported checkpoint version " + std::to_string(version) +
           " (this build reads 1 to " + std::to_string(detail::checkpoint_version) + ")");
  const auto value_size = r.get<std::uint32_t>("value size");
  if (value_size != sizeof(T))
    r.fail("parameters stored with " + std::to_string(value_size) +
           "-byte values, the network uses " + std::to_string(sizeof(T)));
  checkpoint_data data;
  data.file = file;
  std::function<void()> apply;
  if (version == 1) {
    detail::read_v1_metadata(r, data);
    apply = detail::read_network(r, net, version, data);
    detail::read_v1_states(r, data);
    if (!r.at_end()) r.fail("unexpected bytes after the loader state");
  } else {
    data.load(r);
    apply = detail::read_network(r, net, version, data);
    if (version >= detail::batch_norm_statistics_version) {
      auto statistics = detail::read_batch_norm_statistics(r, net);
      apply = [apply = std::move(apply), statistics = std::move(statistics)] {
        apply();
        statistics();
      };
      data.batch_norm_statistics = true;
      if (!r.at_end()) r.fail("unexpected bytes after the batch norm statistics");
    } else if (!r.at_end()) {
      r.fail("unexpected bytes after the quantizers");
    }
  }
  // Validated: now modify the network. The noise steps of versions 1 and 2 are in it now.
  std::erase_if(data.meta, [](const auto& entry) {
    return entry.first.starts_with(detail::legacy_noise_step_key);
  });
  apply();
  return data;
}

/// The format version of the checkpoint file `path` (the u32 after its magic), or nullopt when
/// it cannot be read or is not a checkpoint. Reads 12 bytes; nothing is validated beyond the
/// magic (load_checkpoint does that).
inline std::optional<std::uint32_t> checkpoint_file_version(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char head[12];
  if (!in.read(head, sizeof head) || std::memcmp(head, detail::checkpoint_magic, 8) != 0)
    return std::nullopt;
  return io::byte_reader(std::string_view(head + 8, 4), path.string(), 8)
      .get<std::uint32_t>("version");
}

/// Reads `path` into net (parameters, frozen bitwidths, batch norm statistics) and returns the
/// rest; see
/// parse_checkpoint.
template <class Net>
checkpoint_data load_checkpoint(const std::filesystem::path& path, Net& net) {
  const std::vector<std::uint8_t> bytes = read_file_bytes(path, std::uint64_t{1} << 36);
  return parse_checkpoint(bytes, path.string(), net);
}

} // namespace bitgrad::train
