// Number spellings shared by the text writers (progress lines, the HTML report) and the studies.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace bitgrad {

/// x with `decimals` digits after the point ("%.*f": 3.14159, 2 -> "3.14"); "n/a" when not
/// finite.
inline std::string format_fixed(double x, int decimals) {
  if (!std::isfinite(x)) return "n/a";
  const int n = std::snprintf(nullptr, 0, "%.*f", decimals, x);
  if (n < 0) return {};
  std::string text(std::size_t(n), '\0');
  std::snprintf(text.data(), text.size() + 1, "%.*f", decimals, x);
  return text;
}

} // namespace bitgrad
