// Epoch records as CSV: one header row, then one row per epoch_record.
//
// Columns: phase,epoch,loss,train_accuracy,test_accuracy,average_bits,size_bytes,compression,
// seconds; with costs (a run that reports them, issue #22) two more: bops,activation_bytes
// (per image). Numbers are written in the shortest form that reads back to the same double;
// NaN and infinities are written as an empty field (read back as missing by spreadsheets and
// pandas). A text field holding a comma, quote or line break is quoted per RFC 4180.
// csv_parse / read_csv read such tables back (any header, the fields as text).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/report/records.hpp>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace bitgrad {

/// The header row of the epoch log, without the line break.
inline constexpr std::string_view csv_header =
    "phase,epoch,loss,train_accuracy,test_accuracy,average_bits,size_bytes,compression,seconds";

/// The header row of an epoch log with costs.
inline constexpr std::string_view csv_header_costs =
    "phase,epoch,loss,train_accuracy,test_accuracy,average_bits,size_bytes,compression,seconds,"
    "bops,activation_bytes";

/// One CSV field: quoted (with quotes doubled) when it holds ',', '"', '\n' or '\r'.
inline std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\n\r") == std::string_view::npos) return std::string(text);
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

/// A number as a CSV field: the shortest text that reads back to the same double ("0.1",
/// "3", "1e-07"), empty when not finite.
inline std::string csv_number(double x) {
  if (!std::isfinite(x)) return "";
  char buffer[32];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, x);
  if (ec != std::errc{}) throw std::logic_error("csv_number: to_chars failed");
  return std::string(buffer, end);
}

/// A CSV text as rows of fields, the inverse of csv_field: a field in quotes may hold ',', line
/// breaks and "" (one quote); rows end at "\n" or "\r\n" outside quotes. A line with nothing
/// on it is a row of one empty field; the last row needs no line break. A quote left open at
/// the end throws io_error naming `source` (a file name in messages) and the quote's offset.
inline std::vector<std::vector<std::string>> csv_parse(std::string_view text,
                                                       std::string_view source = "csv") {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row(1);
  bool quoted = false, open_row = false;
  std::size_t quote_at = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    open_row = true;
    if (quoted) {
      if (c != '"') {
        row.back() += c;
      } else if (i + 1 < text.size() && text[i + 1] == '"') {
        row.back() += '"';
        ++i;
      } else {
        quoted = false;
      }
    } else if (c == '"') {
      quoted = true;
      quote_at = i;
    } else if (c == ',') {
      row.emplace_back();
    } else if (c == '\n' || (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n')) {
      i += c == '\r';
      rows.push_back(std::move(row));
      row.assign(1, std::string());
      open_row = false;
    } else {
      row.back() += c;
    }
  }
  if (quoted)
    throw io_error(std::string(source) + ": the quoted field opened at offset " +
                   std::to_string(quote_at) + " is not closed");
  if (open_row) rows.push_back(std::move(row));
  return rows;
}

/// A CSV file read with csv_parse; io_error when it cannot be read.
inline std::vector<std::vector<std::string>> read_csv(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(path.string() + ": cannot open the CSV file");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw io_error(path.string() + ": reading the CSV file failed");
  return csv_parse(text, path.string());
}

/// One epoch_record as a CSV row, without the line break; `costs`: with bops and
/// activation_bytes.
inline std::string csv_row(const epoch_record& e, bool costs = false) {
  std::string row = csv_field(e.phase);
  row += ',' + std::to_string(e.epoch);
  for (double x : {e.loss, e.train_accuracy, e.test_accuracy, e.average_bits, e.size_bytes,
                   e.compression, e.seconds})
    row += ',' + csv_number(x);
  if (costs) row += ',' + csv_number(e.bops) + ',' + csv_number(e.activation_bytes);
  return row;
}

/// The whole table: header row and one row per record, each line ending in '\n'.
inline std::string to_csv(const std::vector<epoch_record>& epochs) {
  std::string out(csv_header);
  out += '\n';
  for (const auto& e : epochs) out += csv_row(e) + '\n';
  return out;
}

/// How csv_log opens its file.
enum class csv_open {
  truncate, ///< start a new log (header written now)
  append    ///< continue an existing log (resumed run); header written only if the file is empty
};

/// An epoch log on disk. Every append() writes one row and flushes, so a run that is killed
/// keeps every finished epoch.
class csv_log {
public:
  /// Opens `path`. With csv_open::append an existing non-empty file must start with the same
  /// header row, otherwise io_error (appending to some other table would corrupt it).
  /// `costs`: the log with the cost columns (csv_header_costs).
  explicit csv_log(const std::filesystem::path& path, csv_open mode = csv_open::truncate,
                   bool costs = false)
      : path_(path), costs_(costs) {
    const std::string_view header = costs ? csv_header_costs : csv_header;
    bool write_header = true;
    if (mode == csv_open::append) {
      std::ifstream existing(path, std::ios::binary);
      std::string first;
      if (existing && std::getline(existing, first)) {
        if (!first.empty() && first.back() == '\r') first.pop_back();
        if (first != header)
          throw io_error(path.string() + ": cannot append: first line is '" + first +
                         "', expected the epoch log header '" + std::string(header) + "'");
        write_header = false;
      }
    }
    auto flags = std::ios::binary | (mode == csv_open::append ? std::ios::app : std::ios::trunc);
    out_.open(path, flags);
    if (!out_) throw io_error(path.string() + ": cannot open the epoch log for writing");
    if (write_header) write_line(header);
  }

  /// Writes one row and flushes it to the operating system.
  void append(const epoch_record& e) { write_line(csv_row(e, costs_)); }

  const std::filesystem::path& path() const noexcept { return path_; }

private:
  void write_line(std::string_view line) {
    out_ << line << '\n';
    out_.flush();
    if (!out_) throw io_error(path_.string() + ": writing the epoch log failed");
  }

  std::filesystem::path path_;
  std::ofstream out_;
  bool costs_ = false;
};

} // namespace bitgrad
