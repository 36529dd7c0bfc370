// ONNX export of a trained network (docs/onnx.md): the network becomes the same model
// description a .bgm file holds (train::to_model_file, calibrated as export_model does), which
// onnx::to_onnx turns into ONNX. So a network exported directly and the .bgm of the same network
// converted by bgm_to_onnx give byte-identical ONNX files.
//
//   net.visit_quantizers([](auto, auto& q) { q.freeze(quant::rounding::nearest); });
//   train::export_onnx(net, "model-qdq.onnx", train_set, normalise, {.form = onnx::form::qdq});
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/onnx/export.hpp>
#include <bitgrad/train/export.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace bitgrad::train {

/// The calibrated model description of `net` (quantizers frozen) for images shaped like those
/// of `calibration`, as export_model writes it to a .bgm file.
template <class Net>
format::model_file calibrated_model_file(Net& net, const dataset& calibration,
                                         const loader_options& normalise,
                                         std::size_t calibration_images = 1024) {
  format::model_file m =
      to_model_file(net,
                    format::shape::image(static_cast<std::uint32_t>(calibration.channels),
                                         static_cast<std::uint32_t>(calibration.height),
                                         static_cast<std::uint32_t>(calibration.width)),
                    normalise.mean, normalise.stddev);
  calibrate(m, calibration, calibration_images);
  return m;
}

/// Writes `net` as an ONNX file (atomically), calibrated on the first `calibration_images`
/// images of `calibration`. Returns the bytes written.
template <class Net>
std::size_t export_onnx(Net& net, const std::filesystem::path& path, const dataset& calibration,
                        const loader_options& normalise, const onnx::export_options& options = {},
                        std::size_t calibration_images = 1024) {
  return onnx::write_onnx_file(
      path, calibrated_model_file(net, calibration, normalise, calibration_images), options);
}

} // namespace bitgrad::train
