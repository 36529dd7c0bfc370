// Training records as text: the run summary's JSON, the CSV epoch log, the SVG charts,
// the HTML report and the progress lines. Output is parsed back (nlohmann/json, a CSV
// splitter, an XML tag-stack checker) and compared with exact values.
#include <bitgrad/report/csv.hpp>
#include <bitgrad/report/format.hpp>
#include <bitgrad/report/json.hpp>
#include <bitgrad/report/progress.hpp>
#include <bitgrad/report/records.hpp>
#include <bitgrad/report/report.hpp>
#include <bitgrad/report/svg.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace test_report {

namespace {

const double nan_value = std::numeric_limits<double>::quiet_NaN();

// ---- an XML well-formedness check: balanced tags, properly quoted attributes ------------
// Returns "" when well formed, else a description of the first problem.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  std::size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    std::size_t end = s.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, end - i - 1);
    // A '>' inside a quoted attribute would end the tag early: count quotes.
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return "odd quotes in <" + tag + ">";
    if (tag.find('<') != std::string::npos) return "'<' inside tag <" + tag + ">";
    i = end + 1;
    if (tag.starts_with("?") || tag.starts_with("!")) continue; // declaration, doctype
    if (tag.starts_with("/")) {
      std::string name = tag.substr(1);
      if (stack.empty()) return "closing </" + name + "> without opening";
      if (stack.back() != name) return "</" + name + "> closes <" + stack.back() + ">";
      stack.pop_back();
      continue;
    }
    if (tag.ends_with("/")) continue; // self-closing
    std::string name = tag.substr(0, tag.find_first_of(" \n\t"));
    stack.push_back(name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  // Text must not hold a bare '&' that is not an entity.
  for (std::size_t a = s.find('&'); a != std::string::npos; a = s.find('&', a + 1)) {
    std::size_t semi = s.find(';', a);
    if (semi == std::string::npos || semi - a > 8) return "bare '&' at " + std::to_string(a);
  }
  return "";
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t i = haystack.find(needle); i != std::string::npos;
       i = haystack.find(needle, i + needle.size()))
    ++n;
  return n;
}

// HTML void elements are not self-closed in the report; make them so for the XML checker.
// (Copied into a new string: GCC 12 at -O3 warns falsely about std::string::insert here.)
std::string close_void_elements(const std::string& html) {
  std::string out;
  std::size_t done = 0;
  for (std::size_t i = html.find("<meta "); i != std::string::npos;
       i = html.find("<meta ", i + 1)) {
    const std::size_t end = html.find('>', i);
    out.append(html, done, end - done);
    if (html[end - 1] != '/') out += '/';
    done = end;
  }
  out.append(html, done, std::string::npos);
  return out;
}

bitgrad::run_summary sample_summary() {
  bitgrad::run_summary run;
  run.model = "lenet5";
  run.policy = "frac_bits";
  run.fp32_accuracy = 0.9912;
  run.quant_accuracy = 0.9875;
  run.average_bits = 3.125;
  run.size_bytes = 12345;
  run.compression = 10.25;
  run.seconds = 61.5;
  bitgrad::layer_summary conv;
  conv.name = "conv1";
  conv.policy = "frac_bits";
  conv.params = 150;
  conv.groups = 3;
  conv.bits_min = 2;
  conv.bits_mean = 3.5;
  conv.bits_max = 4.75;
  conv.bytes = 66;
  conv.group_bits = {2, 3.75, 4.75};
  conv.group_sensitivity = {0.1, 0.5, 0.9};
  conv.bits_spread = 2.75;
  conv.rank_correlation = 1.0;
  bitgrad::layer_summary fc;
  fc.name = "fc<out>";
  fc.policy = "fixed_bits";
  fc.params = 840;
  fc.groups = 5;
  fc.bits_min = 8;
  fc.bits_mean = 8;
  fc.bits_max = 8;
  fc.bytes = 850;
  fc.group_bits = {8, 8, 8, 8, 8};
  run.layers = {conv, fc};
  run.settings = {{"epochs", "10"}, {"lr", "0.001"}, {"note", "say \"hi\" & go"}};
  return run;
}

std::vector<bitgrad::epoch_record> sample_epochs() {
  std::vector<bitgrad::epoch_record> epochs;
  double bits = 8;
  for (std::size_t i = 0; i < 5; ++i) {
    bitgrad::epoch_record e;
    e.phase = i < 2 ? "pretrain" : "search";
    e.epoch = i < 2 ? i + 1 : i - 1;
    e.loss = 1.0 / double(i + 1);
    e.train_accuracy = 0.8 + 0.03 * double(i);
    e.test_accuracy = i == 0 ? nan_value : 0.79 + 0.03 * double(i);
    e.average_bits = bits;
    e.size_bytes = 40000 * bits / 32;
    e.compression = 32 / bits;
    e.seconds = 10.5 + double(i);
    epochs.push_back(e);
    if (i >= 2) bits -= 1.5;
  }
  return epochs;
}

std::filesystem::path temp_dir() {
  auto dir = std::filesystem::temp_directory_path() /
             ("bitgrad_test_report_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

} // namespace

// ---- JSON --------------------------------------------------------------------------------

TEST_CASE("json_number: integers as integers, shortest round-trip reals, null when not finite") {
  CHECK(bitgrad::json_number(3).dump() == "3");
  CHECK(bitgrad::json_number(12345).dump() == "12345");
  CHECK(bitgrad::json_number(0.1).dump() == "0.1");
  CHECK(bitgrad::json_number(-2.5).dump() == "-2.5");
  CHECK(bitgrad::json_number(1e-7).dump() == "1e-07");
  CHECK(bitgrad::json_number(1e300).dump() == "1e+300"); // above 2^53: stays a double
  CHECK(bitgrad::json_number(nan_value).dump() == "null");
  CHECK(bitgrad::json_number(std::numeric_limits<double>::infinity()).dump() == "null");
  CHECK(bitgrad::json_number(-std::numeric_limits<double>::infinity()).dump() == "null");
  double third = 1.0 / 3.0;
  CHECK(std::stod(bitgrad::json_number(third).dump()) == third);
}

TEST_CASE("json_text indents containers and keeps arrays of numbers on one line") {
  bitgrad::json v = bitgrad::json::object();
  v["a"] = 1;
  v["b"] = {2.5, nullptr};
  v["c"] = bitgrad::json::object();
  v["d"] = {"x", true, nullptr};
  v["e"] = bitgrad::json::array();
  CHECK(bitgrad::json_text(v) == "{\n"
                                 "  \"a\": 1,\n"
                                 "  \"b\": [2.5, null],\n"
                                 "  \"c\": {},\n"
                                 "  \"d\": [\n"
                                 "    \"x\",\n"
                                 "    true,\n"
                                 "    null\n"
                                 "  ],\n"
                                 "  \"e\": []\n"
                                 "}");
  CHECK(bitgrad::json_text(bitgrad::json(7)) == "7");
}

TEST_CASE("summary strings are escaped as RFC 8259 requires and read back unchanged") {
  bitgrad::run_summary run = sample_summary();
  static constexpr char raw[] = "a\"b\\c l1\nl2\r\t\b\f \x01\x1f nul\0x caf\xc3\xa9 </script>";
  const std::string odd(raw, sizeof raw - 1);
  run.settings = {{odd, odd}};
  run.layers[0].name = odd;
  const std::string text = bitgrad::to_json(run);
  CHECK(text.find("a\\\"b\\\\c l1\\nl2\\r\\t\\b\\f \\u0001\\u001f nul\\u0000x caf\xc3\xa9 "
                  "</script>") != std::string::npos);
  const auto doc = bitgrad::json::parse(text);
  CHECK(doc["settings"][odd] == odd);
  CHECK(doc["layers"][0]["name"] == odd);
  // Bytes that are not UTF-8 become U+FFFD instead of making the file unreadable.
  run.layers[0].name = "bad\xff";
  CHECK(bitgrad::json::parse(bitgrad::to_json(run))["layers"][0]["name"] == "bad\xef\xbf\xbd");
}

TEST_CASE("to_json(run_summary) reads back with every value") {
  bitgrad::run_summary run = sample_summary();
  run.layers[1].rank_correlation = nan_value;
  std::string text = bitgrad::to_json(run);
  const bitgrad::json doc = bitgrad::json::parse(text);
  REQUIRE(doc.is_object());
  CHECK(doc["model"] == "lenet5");
  CHECK(doc["policy"] == "frac_bits");
  CHECK(doc["fp32_accuracy"] == 0.9912);
  CHECK(doc["quant_accuracy"] == 0.9875);
  CHECK(doc["average_bits"] == 3.125);
  CHECK(doc["size_bytes"] == 12345);
  CHECK(doc["compression"] == 10.25);
  CHECK(doc["seconds"] == 61.5);
  const bitgrad::json& settings = doc["settings"];
  REQUIRE(settings.size() == 3);
  CHECK(settings.begin().key() == "epochs");
  CHECK(settings["lr"] == "0.001");
  CHECK(settings["note"] == "say \"hi\" & go");
  const bitgrad::json& layers = doc["layers"];
  REQUIRE(layers.size() == 2);
  const bitgrad::json& conv = layers[0];
  CHECK(conv["name"] == "conv1");
  CHECK(conv["policy"] == "frac_bits");
  CHECK(conv["params"] == 150);
  CHECK(conv["groups"] == 3);
  CHECK(conv["bits_min"] == 2);
  CHECK(conv["bits_mean"] == 3.5);
  CHECK(conv["bits_max"] == 4.75);
  CHECK(conv["bytes"] == 66);
  REQUIRE(conv["group_bits"].size() == 3);
  CHECK(conv["group_bits"][1] == 3.75);
  CHECK(conv["group_sensitivity"][2] == 0.9);
  CHECK(conv["bits_spread"] == 2.75);
  CHECK(conv["rank_correlation"] == 1);
  const bitgrad::json& fc = layers[1];
  CHECK(fc["name"] == "fc<out>");
  CHECK(fc["rank_correlation"].is_null());
  CHECK(fc["bits_spread"].is_null());
  CHECK(fc["group_sensitivity"].empty());
  CHECK(text.find("\"group_bits\": [2, 3.75, 4.75]") != std::string::npos);
  CHECK(text.find("\"size_bytes\": 12345,") != std::string::npos); // not 12345.0
  CHECK(text.find("NaN") == std::string::npos);
  CHECK(text.find("nan") == std::string::npos);
}

TEST_CASE("to_json(run_summary) lists the activation quantizers only when there are some") {
  bitgrad::run_summary run = sample_summary();
  CHECK(bitgrad::json::parse(bitgrad::to_json(run)).count("activations") == 0);
  run.activations.push_back(
      {.name = "relu1_quant", .channels = 6, .group_bits = {4, 3}, .group_ranges = {2.5, 0.75}});
  const bitgrad::json doc = bitgrad::json::parse(bitgrad::to_json(run));
  REQUIRE(doc["activations"].size() == 1);
  const bitgrad::json& a = doc["activations"][0];
  CHECK(a["name"] == "relu1_quant");
  CHECK(a["channels"] == 6);
  CHECK(a["group_bits"] == bitgrad::json::array({4, 3}));
  CHECK(a["group_ranges"] == bitgrad::json::array({2.5, 0.75}));
  const std::string html = bitgrad::render_report({}, run);
  CHECK(html.find("<h2>Activations</h2>") != std::string::npos);
  CHECK(html.find("<tr><td>relu1_quant</td><td class=\"num\">6</td><td class=\"num\">2</td>"
                  "<td class=\"num\">4.00 3.00</td><td class=\"num\">2.500 0.750</td></tr>") !=
        std::string::npos);
  CHECK(xml_problem(close_void_elements(html)) == "");
  run.activations.clear();
  CHECK(bitgrad::render_report({}, run).find("Activations") == std::string::npos);
}

TEST_CASE("to_json(run, epochs) adds the epoch log with nulls for unmeasured values") {
  auto epochs = sample_epochs();
  const bitgrad::json doc = bitgrad::json::parse(bitgrad::to_json(sample_summary(), epochs));
  const bitgrad::json& log = doc["epochs"];
  REQUIRE(log.size() == epochs.size());
  CHECK(log[0]["phase"] == "pretrain");
  CHECK(log[0]["test_accuracy"].is_null());
  CHECK(log[3]["phase"] == "search");
  CHECK(log[3]["epoch"] == 2);
  CHECK(log[3]["loss"] == 0.25);
  CHECK(log[4]["average_bits"] == 5);
  CHECK(doc.contains("layers"));
}

// ---- CSV ---------------------------------------------------------------------------------

TEST_CASE("to_csv writes the header and one row per epoch, empty fields for NaN") {
  auto epochs = sample_epochs();
  epochs[1].phase = "warm,up \"1\"";
  auto lines = split_lines(bitgrad::to_csv(epochs));
  REQUIRE(lines.size() == 6);
  CHECK(
      lines[0] ==
      "phase,epoch,loss,train_accuracy,test_accuracy,average_bits,size_bytes,compression,seconds");
  CHECK(lines[1] == "pretrain,1,1,0.8,,8,10000,4,10.5");
  CHECK(lines[2] ==
        "\"warm,up \"\"1\"\"\",2,0.5,0.8300000000000001,0.8200000000000001,8,10000,4,11.5");
  CHECK(lines[5] == "search,3,0.2,0.92,0.91,5,6250,6.4,14.5");
}

TEST_CASE("csv_log flushes every row, and appends only under the same header") {
  auto dir = temp_dir();
  auto path = dir / "epochs.csv";
  auto epochs = sample_epochs();
  {
    bitgrad::csv_log log(path);
    log.append(epochs[0]);
    // Flushed: visible to a reader while the log is still open.
    auto lines = split_lines(read_text(path));
    REQUIRE(lines.size() == 2);
    CHECK(lines[0] == bitgrad::csv_header);
    CHECK(lines[1] == bitgrad::csv_row(epochs[0]));
    log.append(epochs[1]);
    CHECK(split_lines(read_text(path)).size() == 3);
  }
  {
    bitgrad::csv_log resumed(path, bitgrad::csv_open::append);
    resumed.append(epochs[2]);
  }
  auto lines = split_lines(read_text(path));
  REQUIRE(lines.size() == 4);
  CHECK(lines[3] == bitgrad::csv_row(epochs[2]));
  CHECK(read_text(path) == bitgrad::to_csv({epochs[0], epochs[1], epochs[2]}));

  { bitgrad::csv_log fresh(path); } // truncate: header only
  CHECK(read_text(path) == std::string(bitgrad::csv_header) + "\n");

  auto other = dir / "other.csv";
  std::ofstream(other) << "a,b,c\n1,2,3\n";
  CHECK_THROWS_AS(bitgrad::csv_log(other, bitgrad::csv_open::append), bitgrad::io_error);
  CHECK(read_text(other) == "a,b,c\n1,2,3\n"); // untouched
  CHECK_THROWS_AS(bitgrad::csv_log(dir / "missing_dir" / "x.csv"), bitgrad::io_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("csv_parse reads back what csv_field and csv_number wrote, quotes and breaks too") {
  const std::vector<std::vector<std::string>> table = {
      {"name", "value", "note"},
      {"plain", bitgrad::csv_number(0.1), ""},
      {"a,b", bitgrad::csv_number(nan_value), "say \"hi\""},
      {"two\nlines", "3", "\"\""},
      {""}};
  std::string text;
  for (const auto& row : table) {
    for (std::size_t i = 0; i < row.size(); ++i)
      text += (i ? "," : "") + bitgrad::csv_field(row[i]);
    text += '\n';
  }
  CHECK(text.find("\"a,b\"") != std::string::npos); // the writer did quote
  CHECK(bitgrad::csv_parse(text) == table);
  // CRLF line ends, no final line break, an empty line in between.
  CHECK(bitgrad::csv_parse("a,b\r\n\r\n1,\"2\r\n3\"") ==
        std::vector<std::vector<std::string>>{{"a", "b"}, {""}, {"1", "2\r\n3"}});
  CHECK(bitgrad::csv_parse("").empty());
  // The epoch log reads back: header and rows, NaN as an empty field.
  auto epochs = sample_epochs();
  epochs[1].phase = "warm,up \"1\"";
  const auto rows = bitgrad::csv_parse(bitgrad::to_csv(epochs));
  REQUIRE(rows.size() == epochs.size() + 1);
  CHECK(rows[2][0] == "warm,up \"1\"");
  CHECK(rows[1][4] == "");
  CHECK(std::stod(rows[2][3]) == epochs[1].train_accuracy);
  // A quote left open names the source and the offset of the quote.
  try {
    (void)bitgrad::csv_parse("a,b\n1,\"2,3\n", "results.csv");
    FAIL("no exception for an open quote");
  } catch (const bitgrad::io_error& e) {
    CHECK(std::string(e.what()) ==
          "results.csv: the quoted field opened at offset 6 is not closed");
  }
}

TEST_CASE("read_csv reads a file, and names a file it cannot open") {
  auto dir = temp_dir();
  std::ofstream(dir / "t.csv", std::ios::binary) << "k,arm\n2,\"uniform/channel\"\n";
  CHECK(bitgrad::read_csv(dir / "t.csv") ==
        std::vector<std::vector<std::string>>{{"k", "arm"}, {"2", "uniform/channel"}});
  try {
    (void)bitgrad::read_csv(dir / "missing.csv");
    FAIL("no exception for a missing file");
  } catch (const bitgrad::io_error& e) {
    CHECK(std::string(e.what()).find("missing.csv: cannot open") != std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

// ---- SVG ---------------------------------------------------------------------------------

TEST_CASE("nice_ticks and tick labels") {
  auto t = bitgrad::nice_ticks(0.13, 0.87, 6);
  CHECK(t.step == doctest::Approx(0.2));
  CHECK(t.lo == doctest::Approx(0.0));
  CHECK(t.hi == doctest::Approx(1.0));
  REQUIRE(t.ticks.size() == 6);
  CHECK(t.ticks[3] == doctest::Approx(0.6));
  auto u = bitgrad::nice_ticks(3, 3, 6); // degenerate range is widened
  CHECK(u.lo < 3);
  CHECK(u.hi > 3);
  auto v = bitgrad::nice_ticks(-7, 93, 5);
  CHECK(v.step == 20);
  CHECK(v.lo == -20);
  CHECK(v.hi == 100);
  CHECK(bitgrad::tick_label(0.6000000001, 0.2) == "0.6");
  CHECK(bitgrad::tick_label(0.75, 0.25) == "0.75");
  CHECK(bitgrad::tick_label(14, 2) == "14");
  CHECK(bitgrad::tick_label(400000, 200000) == "400k");
  CHECK(bitgrad::tick_label(3e6, 1e6) == "3M");
  CHECK(bitgrad::tick_label(-1e-17, 0.5) == "0.0");
}

TEST_CASE("xml_escape replaces markup characters") {
  CHECK(bitgrad::xml_escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&#39;");
}

TEST_CASE("svg_line_chart: well formed, escaped, with legend, markers and broken lines") {
  bitgrad::series a{"train <acc>", {1, 2, 3, 4}, {0.5, 0.6, nan_value, 0.8}, "", false};
  bitgrad::series b{"test & more", {1, 2, 3, 4}, {0.4, 0.55, 0.65, 0.7}, "#ff0000", true};
  bitgrad::chart_options o;
  o.markers = {{3, "search"}};
  std::string svg = bitgrad::svg_line_chart("Accuracy <%>", "epoch", "acc", {a, b}, o);
  CHECK(xml_problem(svg) == "");
  CHECK(svg.starts_with("<svg "));
  CHECK(svg.find("train &lt;acc&gt;") != std::string::npos);
  CHECK(svg.find("test &amp; more") != std::string::npos);
  CHECK(svg.find("Accuracy &lt;%&gt;") != std::string::npos);
  CHECK(svg.find("<acc>") == std::string::npos);
  CHECK(svg.find(">search</text>") != std::string::npos);
  // a is split by its NaN into a 2-point line and a lone point: one polyline; b: one dashed.
  CHECK(count(svg, "<polyline") == 2);
  CHECK(count(svg, "stroke-dasharray=\"6 4\"") == 1);
  CHECK(count(svg, "<circle") == 7); // 3 finite points of a + 4 of b
  CHECK(svg.find("stroke=\"#ff0000\"") != std::string::npos);
  CHECK(svg.find("http") == std::string::npos);
  std::string doc = bitgrad::svg_document(svg);
  CHECK(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="));
  CHECK(xml_problem(doc) == "");
}

TEST_CASE("svg_line_chart without data draws a frame and 'no data'") {
  std::string svg = bitgrad::svg_line_chart("Empty", "x", "y", {});
  CHECK(xml_problem(svg) == "");
  CHECK(svg.find(">no data</text>") != std::string::npos);
  std::string nan_only = bitgrad::svg_line_chart(
      "NaN", "x", "y", {bitgrad::series{"s", {1, 2}, {nan_value, nan_value}, "", false}});
  CHECK(nan_only.find(">no data</text>") != std::string::npos);
  CHECK(nan_only.find("<polyline") == std::string::npos);
}

TEST_CASE("svg_scatter_chart: error bars, tooltips, reference line and log axis") {
  bitgrad::point_series dfq{.name = "learned",
                            .x = {1000, 5000, 20000},
                            .y = {0.95, 0.97, 0.985},
                            .y_err = {0.004, 0, 0.002}};
  bitgrad::point_series fixed{.name = "fixed 4 bits", .x = {8000}, .y = {0.96}, .color = "#00aa00"};
  bitgrad::chart_options o;
  o.log_x = true;
  o.reference = bitgrad::reference_line{0.99, "FP32", "#333333"};
  std::string svg =
      bitgrad::svg_scatter_chart("Pareto", "size (bytes)", "accuracy", {dfq, fixed}, o);
  CHECK(xml_problem(svg) == "");
  CHECK(count(svg, "<circle") == 4 + 2); // points + legend dots
  CHECK(count(svg, "class=\"error-bar\"") == 2);
  CHECK(svg.find(">FP32</text>") != std::string::npos);
  CHECK(svg.find("<title>learned: (1000, 0.95 +- 0.004)</title>") != std::string::npos);
  CHECK(svg.find("<title>fixed 4 bits: (8000, 0.96)</title>") != std::string::npos);
  CHECK(svg.find(">learned</text>") != std::string::npos);
  // log axis: decade ticks 1000 .. 100000 are labelled.
  CHECK(svg.find(">1000</text>") != std::string::npos);
  CHECK(svg.find(">100k</text>") != std::string::npos);
}

TEST_CASE("svg_scatter_chart: min/max bars, connected series and marker shapes") {
  // Accuracy over three sizes, drawn out of x order: the line must follow increasing x.
  bitgrad::point_series mixed{.name = "mixed",
                              .x = {3000, 1000, 2000},
                              .y = {0.9, 0.8, 0.85},
                              .y_err = {0.5, 0.5, 0.5}, // unused: y_low / y_high are given
                              .color = "#0000ff",
                              .y_low = {0.88, 0.78, 0.84},
                              .y_high = {0.91, 0.83, 0.85},
                              .connect = true,
                              .dashed = true,
                              .shape = bitgrad::marker_shape::diamond};
  bitgrad::point_series uniform{.name = "uniform",
                                .x = {1000, 2000, 3000},
                                .y = {0.7, 0.8, 0.86},
                                .color = "#000000",
                                .connect = true,
                                .shape = bitgrad::marker_shape::square};
  // One point: no line.
  bitgrad::point_series lone{
      .name = "lone", .x = {2500}, .y = {0.75}, .color = "#00aa00", .connect = true};
  bitgrad::chart_options o;
  o.width = 600;
  o.height = 300;
  o.y_min = 0.6;
  o.y_max = 1.0;
  o.reference = bitgrad::reference_line{0.95, "FP32 95%", "#333333"};
  std::string svg =
      bitgrad::svg_scatter_chart("Pareto", "size (bytes)", "accuracy", {mixed, uniform, lone}, o);
  CHECK(xml_problem(svg) == "");
  // Markers: 3 diamonds + 1 legend diamond, 3 squares + 1 legend square, 1 + 1 circles.
  CHECK(count(svg, "<polygon") == 4);
  CHECK(count(svg, "<rect class=\"marker\"") == 4);
  CHECK(count(svg, "<circle") == 2);
  // Connecting lines: mixed (dashed) and uniform; lone has a single point.
  CHECK(count(svg, "<polyline class=\"connect\"") == 2);
  CHECK(count(svg, "stroke-dasharray=\"6 4\"") == 1);
  // Frame: x from 1000 to 3000 over [64, 440] px; y from 0.6 to 1.0 over [34, 254] px.
  // mixed in x order: (1000, 0.8) (2000, 0.85) (3000, 0.9).
  CHECK(svg.find("points=\"64,144 252,116.5 440,89\"") != std::string::npos);
  CHECK(svg.find("points=\"64,199 252,144 440,111\"") != std::string::npos);
  // Min/max bars on every point of mixed (none has low == high == y), none on uniform.
  CHECK(count(svg, "class=\"error-bar\"") == 3);
  CHECK(svg.find("<title>mixed: (1000, 0.8 in [0.78, 0.83])</title>") != std::string::npos);
  CHECK(svg.find("<title>uniform: (2000, 0.8)</title>") != std::string::npos);
  // The bar of (3000, 0.9): from 0.88 (y 100) to 0.91 (y 83.5) at x 440.
  CHECK(svg.find("x1=\"440\" y1=\"83.5\" x2=\"440\" y2=\"100\"") != std::string::npos);
  CHECK(svg.find(">FP32 95%</text>") != std::string::npos);
  // Legend: connected series show a line behind their marker.
  CHECK(svg.find(">mixed</text>") != std::string::npos);
  CHECK(svg.find(">lone</text>") != std::string::npos);
}

TEST_CASE("svg_heatmap: one rect per cell with its tooltip, rows of different lengths") {
  std::vector<bitgrad::heatmap_row> rows = {
      {"conv1", {2, 3.4249, 4}}, {"fc<2>", {8, nan_value}}, {"empty", {}}};
  std::string svg = bitgrad::svg_heatmap("Bits", rows, 2, 8);
  CHECK(xml_problem(svg) == "");
  CHECK(count(svg, "<rect class=\"cell\"") == 5);
  CHECK(svg.find("<title>conv1 group 1: 3.42 bits</title>") != std::string::npos);
  CHECK(svg.find("<title>fc&lt;2&gt; group 0: 8.00 bits</title>") != std::string::npos);
  CHECK(svg.find("<title>fc&lt;2&gt; group 1: n/a</title>") != std::string::npos);
  CHECK(count(svg, "<rect class=\"legend\"") == 32);
  // Colours: lo is the dark end, hi the yellow end, NaN grey.
  CHECK(bitgrad::heat_color(2, 2, 8) == "#440154");
  CHECK(bitgrad::heat_color(8, 2, 8) == "#fde725");
  CHECK(bitgrad::heat_color(100, 2, 8) == "#fde725");
  CHECK(bitgrad::heat_color(nan_value, 2, 8) == "#cccccc");
  CHECK(svg.find("fill=\"#440154\"><title>conv1 group 0:") != std::string::npos);
  CHECK_THROWS_AS(bitgrad::svg_heatmap("Bits", rows, 3, 3), bitgrad::config_error);
}

// ---- the HTML report ---------------------------------------------------------------------

TEST_CASE("render_report is one self-contained page with the tables and charts") {
  auto run = sample_summary();
  auto epochs = sample_epochs();
  std::string html = bitgrad::render_report(epochs, run);
  CHECK(html.starts_with("<!DOCTYPE html>"));
  CHECK(html.find("http://") == std::string::npos);
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(xml_problem(close_void_elements(html)) == "");
  // Header numbers.
  CHECK(html.find("<h1>lenet5</h1>") != std::string::npos);
  CHECK(html.find(">99.12%<") != std::string::npos);
  CHECK(html.find(">98.75%<") != std::string::npos);
  CHECK(html.find(">-0.37 pt<") != std::string::npos);
  CHECK(html.find(">12.3 KB<") != std::string::npos);
  CHECK(html.find(">x10.2<") != std::string::npos); // 10.25 rounds to even in printf
  // Three training charts, phase markers, the heat map with all 8 cells.
  CHECK(count(html, "<svg ") == 4);
  CHECK(count(html, ">pretrain</text>") == 3);
  CHECK(count(html, ">search</text>") == 3);
  CHECK(count(html, "<rect class=\"cell\"") == 8);
  CHECK(html.find("<title>conv1 group 2: 4.75 bits</title>") != std::string::npos);
  // Per-layer table rows, with the diagnostics columns since conv1 has them.
  CHECK(html.find("<tr><td>conv1</td><td>frac_bits</td><td class=\"num\">150</td>"
                  "<td class=\"num\">3</td><td class=\"num\">2.00</td><td class=\"num\">3.50</td>"
                  "<td class=\"num\">4.75</td><td class=\"num\">66 B</td>"
                  "<td class=\"num\">2.75</td><td class=\"num\">1.000</td></tr>") !=
        std::string::npos);
  CHECK(html.find("<tr><td>fc&lt;out&gt;</td><td>fixed_bits</td><td class=\"num\">840</td>") !=
        std::string::npos);
  CHECK(html.find("<th>sensitivity rank corr.</th>") != std::string::npos);
  // Settings, escaped.
  CHECK(html.find("<tr><td>note</td><td>say &quot;hi&quot; &amp; go</td></tr>") !=
        std::string::npos);
  CHECK(html.find("<tr><td>lr</td><td>0.001</td></tr>") != std::string::npos);
  // Epoch log: the unmeasured test accuracy shows as n/a.
  CHECK(html.find("<tr><td>pretrain</td><td class=\"num\">1</td><td class=\"num\">1.0000</td>"
                  "<td class=\"num\">80.00%</td><td class=\"num\">n/a</td>") != std::string::npos);
}

TEST_CASE("render_report without diagnostics or epochs drops those parts") {
  auto run = sample_summary();
  for (auto& l : run.layers) l.bits_spread = l.rank_correlation = nan_value;
  run.layers[0].group_bits.clear();
  std::string html = bitgrad::render_report({}, run);
  CHECK(html.find("sensitivity") == std::string::npos);
  CHECK(count(html, "<rect class=\"cell\"") == 5); // only fc<out> has bits
  CHECK(count(html, ">no data</text>") == 3);
  CHECK(html.find("<h2>Epochs</h2>") == std::string::npos);
  CHECK(xml_problem(close_void_elements(html)) == "");
}

TEST_CASE("write_report replaces the file atomically and leaves no temporary") {
  auto dir = temp_dir();
  auto path = dir / "report.html";
  std::ofstream(path) << "old";
  auto run = sample_summary();
  auto epochs = sample_epochs();
  bitgrad::write_report(path, epochs, run);
  CHECK(read_text(path) == bitgrad::render_report(epochs, run));
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++files;
  CHECK(files == 1);
  CHECK_THROWS_AS(bitgrad::write_report(dir / "no_such_dir" / "r.html", epochs, run),
                  bitgrad::io_error);
  std::filesystem::remove_all(dir);
}

// ---- progress ----------------------------------------------------------------------------

TEST_CASE("format_epoch_line spells an epoch exactly") {
  bitgrad::epoch_record e;
  e.phase = "search";
  e.epoch = 3;
  e.loss = 0.41234;
  e.train_accuracy = 0.85214;
  e.test_accuracy = 0.849;
  e.average_bits = 3.1234;
  e.size_bytes = 12345;
  e.compression = 10.3;
  e.seconds = 12.44;
  CHECK(bitgrad::format_epoch_line(e, 10) ==
        "search  epoch  3/10  loss 0.4123  train 85.21%  test 84.90%  bits 3.12  size 12.3 KB"
        "  x10.3  12.4 s");
  e.test_accuracy = nan_value;
  e.epoch = 12;
  e.size_bytes = 2.5e6;
  CHECK(bitgrad::format_epoch_line(e, 120) ==
        "search  epoch  12/120  loss 0.4123  train 85.21%  test n/a  bits 3.12  size 2.50 MB"
        "  x10.3  12.4 s");
  CHECK(bitgrad::format_epoch_line(e).starts_with("search  epoch 12  loss"));
}

TEST_CASE("format_bytes and format_duration") {
  CHECK(bitgrad::format_bytes(512) == "512 B");
  CHECK(bitgrad::format_bytes(999.4) == "999 B");
  CHECK(bitgrad::format_bytes(999.6) == "1.0 KB");
  CHECK(bitgrad::format_bytes(12345) == "12.3 KB");
  CHECK(bitgrad::format_bytes(3.2e9) == "3.20 GB");
  CHECK(bitgrad::format_bytes(nan_value) == "n/a");
  CHECK(bitgrad::format_duration(65) == "1:05");
  CHECK(bitgrad::format_duration(3725) == "1:02:05");
  CHECK(bitgrad::format_duration(nan_value) == "--:--");
}

TEST_CASE("format_fixed: fixed decimals, n/a when not finite, never truncated") {
  CHECK(bitgrad::format_fixed(3.14159, 2) == "3.14");
  CHECK(bitgrad::format_fixed(-0.05, 1) == "-0.1");
  CHECK(bitgrad::format_fixed(2410.4, 0) == "2410");
  CHECK(bitgrad::format_fixed(nan_value, 2) == "n/a");
  CHECK(bitgrad::format_fixed(-std::numeric_limits<double>::infinity(), 2) == "n/a");
  // 1e300 has 301 digits before the point: longer than any fixed buffer the copies used.
  const std::string big = bitgrad::format_fixed(1e300, 2);
  CHECK(big.size() == 304);
  CHECK(big.starts_with("1000000000"));
  CHECK(big.ends_with(".00"));
}

TEST_CASE("format_progress_line draws the bar in proportion") {
  CHECK(
      bitgrad::format_progress_line("search", 3, 10, 120, 480, 0.41234, 0.85214, 2410.4, 7.2, 20) ==
      "search  epoch  3/10  batch 120/480 [#####...............]  loss 0.4123  acc 85.21%"
      "  2410 img/s  ETA 0:07");
  CHECK(bitgrad::format_progress_line("s", 1, 1, 0, 0, nan_value, nan_value, nan_value, nan_value,
                                      4) ==
        "s  epoch 1/1  batch 0 [....]  loss n/a  acc n/a  - img/s  ETA --:--");
}

namespace {
struct fake_clock {
  std::shared_ptr<bitgrad::progress_bar::clock::time_point> t =
      std::make_shared<bitgrad::progress_bar::clock::time_point>();
  void advance_ms(int ms) { *t += std::chrono::milliseconds(ms); }
  bitgrad::progress_bar::now_function fn() const {
    return [t = t] { return *t; };
  }
};
} // namespace

TEST_CASE("progress_bar prints nothing per batch when not a terminal") {
  std::ostringstream out;
  fake_clock clock;
  bitgrad::progress_bar bar(out, false, clock.fn());
  CHECK_FALSE(bar.terminal());
  bar.begin_epoch("search", 1, 2, 3);
  for (std::size_t j = 1; j <= 3; ++j) {
    clock.advance_ms(500);
    bar.update(j, j * 64, 0.5, 0.9);
  }
  bar.end_epoch();
  CHECK(out.str().empty());
  CHECK(bar.redraws() == 0);
}

TEST_CASE("progress_bar redraws in place at most every 100 ms, and always on the last batch") {
  std::ostringstream out;
  fake_clock clock;
  bitgrad::progress_bar bar(out, true, clock.fn());
  bar.begin_epoch("search", 3, 10, 4);
  clock.advance_ms(1000);
  bar.update(1, 100, 0.5, 0.8); // first: drawn
  CHECK(bar.redraws() == 1);
  std::string first = out.str();
  CHECK(first == "\r" + bitgrad::format_progress_line("search", 3, 10, 1, 4, 0.5, 0.8, 100, 3));
  clock.advance_ms(50);
  bar.update(2, 200, 0.4, 0.85); // too soon: skipped
  CHECK(bar.redraws() == 1);
  CHECK(out.str() == first);
  clock.advance_ms(60);
  bar.update(3, 300, 0.3, 0.9); // 110 ms after the last draw
  CHECK(bar.redraws() == 2);
  clock.advance_ms(1);
  bar.update(4, 400, 0.25, 0.95); // last batch: drawn although only 1 ms passed
  CHECK(bar.redraws() == 3);
  std::string all = out.str();
  CHECK(count(all, "\r") == 3);
  CHECK(all.find("\n") == std::string::npos);
  CHECK(all.ends_with("batch 4/4 [####################]  loss 0.2500  acc 95.00%  360 img/s"
                      "  ETA 0:00"));
  std::size_t before = all.size();
  bar.end_epoch(); // erases the line: '\r', spaces, '\r'
  std::string erase = out.str().substr(before);
  CHECK(erase.front() == '\r');
  CHECK(erase.back() == '\r');
  CHECK(erase.find_first_not_of(" \r") == std::string::npos);
  CHECK(erase.size() > 40);
}

} // namespace test_report
