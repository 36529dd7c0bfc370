// Converts a bitgrad model file (.bgm) to ONNX (docs/onnx.md).
//
//   bgm_to_onnx runs/demo/model.bgm -o model.onnx                  (float32, opset 13)
//   bgm_to_onnx runs/demo/model.bgm -o model-qdq.onnx --form qdq   (int8 QDQ, opset 13)
//   bgm_to_onnx runs/demo/model.bgm -o model-int4.onnx --form qdq-int4   (opset 21)
//
// Prints the sizes of both files. Writes atomically: on any error no output file is left.
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/onnx/export.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  CLI::App app{"Convert a bitgrad model file (.bgm) to ONNX"};
  std::string in, out, form = "float32", name = "bitgrad";
  app.add_option("model", in, "model file (.bgm)")->required();
  app.add_option("-o,--out", out, "ONNX file to write")->required();
  app.add_option("--form", form,
                 "float32 (decoded weights, opset 13), qdq (int8 QuantizeLinear / "
                 "DequantizeLinear, opset 13) or qdq-int4 (int4 weights where every group has "
                 "<= 4 bits, opset 21)")
      ->check(CLI::IsMember({"float32", "qdq", "qdq-int4"}))
      ->capture_default_str();
  app.add_option("--graph-name", name, "the ONNX graph's name")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const bitgrad::format::model_file m = bitgrad::format::read_model_file(in);
    const std::size_t bytes = bitgrad::onnx::write_onnx_file(
        out, m, {.form = bitgrad::onnx::parse_form(form), .graph_name = name});
    std::printf("%s: %ju bytes -> %s: %zu bytes (%s, opset %lld)\n", in.c_str(),
                static_cast<std::uintmax_t>(std::filesystem::file_size(in)), out.c_str(), bytes,
                form.c_str(),
                static_cast<long long>(bitgrad::onnx::opset_of(bitgrad::onnx::parse_form(form))));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bgm_to_onnx: %s\n", e.what());
    return 1;
  }
}
