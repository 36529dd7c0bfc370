// The one place bitgrad includes nlohmann/json (Debian: nlohmann-json3-dev, which xtensor's
// package depends on; CMake target nlohmann_json::nlohmann_json). Every other bitgrad header
// includes this shim instead of nlohmann/json itself.
#pragma once

#if __has_include(<nlohmann/json.hpp>)
#include <nlohmann/json.hpp>
#else
#error "bitgrad needs nlohmann/json >= 3.9 (Debian: nlohmann-json3-dev)"
#endif

namespace bitgrad {

/// A JSON document whose objects keep their keys in insertion order (summary.json lists its
/// fields in a fixed order).
using json = nlohmann::ordered_json;

} // namespace bitgrad
