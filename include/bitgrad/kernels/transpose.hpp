// Whether a GEMM operand is used as stored or transposed.
#pragma once

namespace bitgrad {
enum class transpose { no, yes };
} // namespace bitgrad
