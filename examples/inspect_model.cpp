// Prints the per-layer table of a bitgrad model file: operation, output shape, weight shape,
// groups, bits histogram and bytes.
//
//   inspect_model runs/fashion_mnist/model.bgm [--npz weights.npz]
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/train/npz_export.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

namespace {

std::string extents(const bitgrad::format::tensor_data& t) {
  std::string s;
  for (auto e : t.extents) s += (s.empty() ? "" : "x") + std::to_string(e);
  return s;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print the layers of a bitgrad model file"};
  std::string path, npz;
  app.add_option("model", path, "model file (.bgm)")->required();
  app.add_option("--npz", npz, "also write the dequantized weights, bitwidths and scales as .npz");
  CLI11_PARSE(app, argc, argv);
  try {
    namespace fmt = bitgrad::format;
    const fmt::model_file m = fmt::read_model_file(path);
    const auto file_bytes = std::filesystem::file_size(path);
    std::printf("%s: %ju bytes, input %s, %zu operations, %zu tensors\n", path.c_str(),
                static_cast<std::uintmax_t>(file_bytes), m.input.str().c_str(), m.ops.size(),
                m.tensors.size());
    std::printf("\n%-4s %-16s %-15s %-14s %-10s %6s %-28s %9s %8s\n", "#", "name", "kind", "output",
                "weight", "groups", "bits histogram (bits:groups)", "avg bits", "bytes");
    double total = 0;
    std::size_t weights = 0;
    double code_bits = 0;
    for (std::size_t i = 0; i < m.ops.size(); ++i) {
      const fmt::operation& op = m.ops[i];
      std::string wshape = "-", hist = "-", groups = "-", avg = "-";
      double bytes = 0;
      if (op.weight != fmt::no_index) {
        const fmt::tensor_data& t = m.tensors[op.weight];
        wshape = extents(t);
        if (t.kind == fmt::tensor_kind::quantized) {
          std::map<int, std::size_t> h;
          for (auto b : t.bits) ++h[b];
          hist.clear();
          for (auto [b, n] : h)
            hist += (hist.empty() ? "" : " ") + std::to_string(b) + ":" + std::to_string(n);
          groups = std::to_string(t.bits.size());
          bytes = static_cast<double>(t.packed.size()) + 5.0 * static_cast<double>(t.bits.size());
          code_bits += static_cast<double>(t.code_bits());
          char a[16];
          std::snprintf(a, sizeof a, "%.2f",
                        static_cast<double>(t.code_bits()) /
                            static_cast<double>(t.element_count()));
          avg = a;
        } else {
          hist = "float32";
          bytes = 4.0 * static_cast<double>(t.element_count());
          code_bits += 32.0 * static_cast<double>(t.element_count());
          avg = "32";
        }
        weights += t.element_count();
        for (auto idx : {op.bias, op.channel_scale})
          if (idx != fmt::no_index)
            bytes += 4.0 * static_cast<double>(m.tensors[idx].element_count());
      }
      total += bytes;
      std::printf("%-4zu %-16s %-15s %-14s %-10s %6s %-28s %9s %8.0f\n", i, op.name.c_str(),
                  fmt::to_string(op.kind), op.output.str().c_str(), wshape.c_str(), groups.c_str(),
                  hist.c_str(), avg.c_str(), bytes);
    }
    std::printf(
        "\nweights %zu, average %.3f bits per weight (codes), layer bytes %.0f, file %ju bytes "
        "(%.0f bytes of header, graph and section table)\n",
        weights, weights ? code_bits / static_cast<double>(weights) : 0.0, total,
        static_cast<std::uintmax_t>(file_bytes), static_cast<double>(file_bytes) - total);
    if (!npz.empty()) {
      bitgrad::train::write_npz(npz, m);
      std::printf("wrote %s\n", npz.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inspect_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
