// Optimizer state: one slot per parameter in visitation order, and its binary form.
//
// A slot is sized lazily, on the first step, from the parameter it belongs to. Every later
// step checks that the parameter source still visits the same number of parameters with the
// same sizes; a mismatch (a state loaded from a different architecture) throws config_error
// naming the parameter. Buffers (SGD's momentum; Adam's first and second moments) are
// allocated the first time their parameter is updated, so a parameter whose grad pointer is
// null keeps an empty slot and its place in the order.
//
// Binary form (all integers and floats little-endian; T values are IEEE-754 of sizeof(T)):
//   offset  bytes  field
//   0       8      magic "BGOPTIM\0"
//   8       4      u32 version (1)
//   12      8      optimizer tag, NUL-padded ASCII: "sgd", "adam", "adamw"
//   20      1      u8 sizeof(T): 4 (float) or 8 (double)
//   21      8      f64 base lr
//   29      8      u64 slot count P
//   then P slots, each:
//           4      u32 name length L, then L bytes of name (for messages only)
//           8      u64 parameter size n
//           8      u64 steps taken by this parameter (Adam's bias correction uses it)
//           4      u32 buffer count B: 0 (not yet updated) or the optimizer's buffer count
//           B*n*sizeof(T)  the buffers, one after the other
// The reader rejects (format_error) a wrong magic, an unknown version, another optimizer's
// tag, another element size, a buffer count it does not expect, and a truncated stream.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::optim {

/// The state of one parameter.
template <class T>
struct slot {
  std::string name;
  std::size_t size = 0;
  std::uint64_t steps = 0;
  std::vector<std::vector<T>> buffers; ///< empty until the parameter is first updated
};

namespace detail {

inline constexpr std::array<char, 8> state_magic{'B', 'G', 'O', 'P', 'T', 'I', 'M', '\0'};
inline constexpr std::uint32_t state_version = 1;

class le_writer {
public:
  explicit le_writer(std::ostream& out) : out_(out) {}
  template <class U>
  void uint(U v) {
    unsigned char b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    out_.write(reinterpret_cast<const char*>(b), sizeof(U));
  }
  void real(float v) { uint(std::bit_cast<std::uint32_t>(v)); }
  void real(double v) { uint(std::bit_cast<std::uint64_t>(v)); }
  void bytes(const char* p, std::size_t n) { out_.write(p, static_cast<std::streamsize>(n)); }

private:
  std::ostream& out_;
};

class le_reader {
public:
  le_reader(std::istream& in, std::string source) : in_(in), source_(std::move(source)) {}
  template <class U>
  U uint(const char* what) {
    unsigned char b[sizeof(U)];
    bytes(reinterpret_cast<char*>(b), sizeof(U), what);
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(U(b[i]) << (8 * i));
    return v;
  }
  template <class R>
  R real(const char* what) {
    if constexpr (sizeof(R) == 4)
      return std::bit_cast<R>(uint<std::uint32_t>(what));
    else
      return std::bit_cast<R>(uint<std::uint64_t>(what));
  }
  void bytes(char* p, std::size_t n, const char* what) {
    in_.read(p, static_cast<std::streamsize>(n));
    if (static_cast<std::size_t>(in_.gcount()) != n)
      fail(std::string("truncated while reading ") + what);
    offset_ += n;
  }
  [[noreturn]] void fail(const std::string& reason) const {
    throw format_error(source_, offset_, reason);
  }
  std::uint64_t offset() const { return offset_; }

private:
  std::istream& in_;
  std::string source_;
  std::uint64_t offset_ = 0;
};

} // namespace detail

/// The slots of one optimizer, with the shape check and the binary form described above.
template <class T>
class optimizer_state {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "optimizer state holds float or double");

public:
  /// `who` names the optimizer in messages and is its tag in the binary form;
  /// `buffers` is how many buffers of the parameter's size an updated slot holds.
  optimizer_state(const char* who, std::size_t buffers) : who_(who), buffer_count_(buffers) {}

  /// Visits the parameters once without touching them: sizes the slots on the first call,
  /// checks count and sizes on later ones (config_error naming the parameter). Optimizers call
  /// it at the start of every step, so a mismatch is caught before any parameter changes.
  template <class V>
  void bind(V& visit) {
    if (!sized_) slots_.clear();
    index_ = 0;
    visit([this](param_ref<T>& p) { next(p); });
    end_pass();
  }

  /// The slot of the i-th parameter (after bind()).
  slot<T>& at(std::size_t i) { return slots_[i]; }

  const std::vector<slot<T>>& slots() const { return slots_; }
  /// True once the slots are fixed (after a first step or a load).
  bool sized() const { return sized_; }

  /// Allocates the buffers of `s` (zeros) if it has none yet; returns true if it did.
  bool ensure_buffers(slot<T>& s) {
    if (!s.buffers.empty()) return false;
    s.buffers.assign(buffer_count_, std::vector<T>(s.size, T(0)));
    return true;
  }

private:
  void next(const param_ref<T>& p) {
    std::size_t i = index_++;
    if (sized_ && i >= slots_.size())
      throw config_error(std::string(who_) + ": parameter " + std::to_string(i) + " '" + p.name +
                         "' has no optimizer state: the state holds " +
                         std::to_string(slots_.size()) + " parameters");
    if (!sized_) slots_.push_back(slot<T>{p.name, p.size, 0, {}});
    slot<T>& s = slots_[i];
    if (s.size != p.size)
      throw config_error(std::string(who_) + ": parameter " + std::to_string(i) + " '" + p.name +
                         "' has " + std::to_string(p.size) + " elements, its optimizer state ('" +
                         s.name + "') has " + std::to_string(s.size));
  }

  void end_pass() {
    if (sized_ && index_ != slots_.size())
      throw config_error(std::string(who_) + ": the parameter source visited " +
                         std::to_string(index_) + " parameters, the optimizer state holds " +
                         std::to_string(slots_.size()) + " (next expected: '" +
                         slots_[index_].name + "')");
    sized_ = true;
  }

public:
  void save(std::ostream& out, double lr) const {
    detail::le_writer w(out);
    w.bytes(detail::state_magic.data(), detail::state_magic.size());
    w.uint(detail::state_version);
    std::array<char, 8> tag{};
    std::memcpy(tag.data(), who_, std::min<std::size_t>(std::strlen(who_), tag.size()));
    w.bytes(tag.data(), tag.size());
    w.uint(static_cast<std::uint8_t>(sizeof(T)));
    w.real(lr);
    w.uint(static_cast<std::uint64_t>(slots_.size()));
    for (const slot<T>& s : slots_) {
      w.uint(static_cast<std::uint32_t>(s.name.size()));
      w.bytes(s.name.data(), s.name.size());
      w.uint(static_cast<std::uint64_t>(s.size));
      w.uint(s.steps);
      w.uint(static_cast<std::uint32_t>(s.buffers.size()));
      for (const std::vector<T>& b : s.buffers)
        for (T v : b) w.real(v);
    }
    if (!out) throw io_error(std::string(who_) + ": writing the optimizer state failed");
  }

  /// Reads a state written by save(); returns its base lr. Leaves *this unchanged on error.
  double load(std::istream& in, const std::string& source) {
    detail::le_reader r(in, source);
    std::array<char, 8> magic{};
    r.bytes(magic.data(), magic.size(), "the magic");
    if (magic != detail::state_magic) r.fail("not a bitgrad optimizer state (bad magic)");
    auto version = r.uint<std::uint32_t>("the version");
    if (version != detail::state_version)
      r.fail("unknown optimizer state version " + std::to_string(version) +
             " (this reader: " + std::to_string(detail::state_version) + ")");
    std::array<char, 9> tag{};
    r.bytes(tag.data(), 8, "the optimizer tag");
    if (std::string_view(tag.data()) != std::string_view(who_))
      r.fail("the state is for optimizer '" + std::string(tag.data()) + "', not '" + who_ + "'");
    auto elem = r.uint<std::uint8_t>("the element size");
    if (elem != sizeof(T))
      r.fail("the state holds " + std::to_string(elem) + "-byte values, this optimizer " +
             std::to_string(sizeof(T)) + "-byte ones");
    double lr = r.real<double>("the lr");
    if (!(lr >= 0.0) || !std::isfinite(lr)) r.fail("the lr is " + std::to_string(lr));
    auto count = r.uint<std::uint64_t>("the parameter count");
    std::vector<slot<T>> slots;
    for (std::uint64_t i = 0; i < count; ++i) {
      slot<T> s;
      auto len = r.uint<std::uint32_t>("a parameter name length");
      if (len > 4096) r.fail("parameter name of " + std::to_string(len) + " bytes");
      s.name.resize(len);
      r.bytes(s.name.data(), len, "a parameter name");
      s.size = static_cast<std::size_t>(r.uint<std::uint64_t>("a parameter size"));
      s.steps = r.uint<std::uint64_t>("a step count");
      auto buffers = r.uint<std::uint32_t>("a buffer count");
      if (buffers != 0 && buffers != buffer_count_)
        r.fail("parameter '" + s.name + "' has " + std::to_string(buffers) +
               " buffers, expected 0 or " + std::to_string(buffer_count_));
      s.buffers.resize(buffers);
      for (std::vector<T>& b : s.buffers) {
        for (std::size_t k = 0; k < s.size; ++k) b.push_back(r.template real<T>("a buffer value"));
      }
      slots.push_back(std::move(s));
    }
    slots_ = std::move(slots);
    sized_ = true;
    index_ = 0;
    return lr;
  }

private:
  const char* who_;
  std::size_t buffer_count_;
  std::vector<slot<T>> slots_;
  std::size_t index_ = 0;
  bool sized_ = false;
};

} // namespace bitgrad::optim
