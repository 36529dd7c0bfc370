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
// save / load go through io/bytes.hpp (optimizers' save(io::byte_writer&) and
// load(io::byte_reader&) call them).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
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
  /// Writes the binary form above with base lr `lr`.
  void save(io::byte_writer& w, double lr) const {
    w.put_bytes(detail::state_magic.data(), detail::state_magic.size());
    w.put(detail::state_version);
    std::array<char, 8> tag{};
    std::memcpy(tag.data(), who_, std::min<std::size_t>(std::strlen(who_), tag.size()));
    w.put_bytes(tag.data(), tag.size());
    w.put(static_cast<std::uint8_t>(sizeof(T)));
    w.put(lr);
    w.put(static_cast<std::uint64_t>(slots_.size()));
    for (const slot<T>& s : slots_) {
      w.put(static_cast<std::uint32_t>(s.name.size()));
      w.put_bytes(s.name.data(), s.name.size());
      w.put(static_cast<std::uint64_t>(s.size));
      w.put(s.steps);
      w.put(static_cast<std::uint32_t>(s.buffers.size()));
      for (const std::vector<T>& b : s.buffers) w.put_array(b);
    }
  }

  /// Reads a state written by save(); returns its base lr. Leaves *this unchanged on error
  /// (format_error naming the reader's source, the offset and the field).
  double load(io::byte_reader& r) {
    std::array<char, 8> magic{};
    r.get_bytes(magic.data(), magic.size(), "the magic");
    if (magic != detail::state_magic) r.fail("not a bitgrad optimizer state (bad magic)");
    const auto version = r.get<std::uint32_t>("the version");
    if (version != detail::state_version)
      r.fail("unknown optimizer state version " + std::to_string(version) +
             " (this reader: " + std::to_string(detail::state_version) + ")");
    std::array<char, 9> tag{};
    r.get_bytes(tag.data(), 8, "the optimizer tag");
    if (std::string_view(tag.data()) != std::string_view(who_))
      r.fail("the state is for optimizer '" + std::string(tag.data()) + "', not '" + who_ + "'");
    const auto elem = r.get<std::uint8_t>("the element size");
    if (elem != sizeof(T))
      r.fail("the state holds " + std::to_string(elem) + "-byte values, this optimizer " +
             std::to_string(sizeof(T)) + "-byte ones");
    const double lr = r.get<double>("the lr");
    if (!(lr >= 0.0) || !std::isfinite(lr)) r.fail("the lr is " + std::to_string(lr));
    const auto count = r.get<std::uint64_t>("the parameter count");
    std::vector<slot<T>> slots;
    for (std::uint64_t i = 0; i < count; ++i) {
      slot<T> s;
      const auto len = r.get<std::uint32_t>("a parameter name length");
      if (len > 4096) r.fail("parameter name of " + std::to_string(len) + " bytes");
      s.name.resize(len);
      r.get_bytes(s.name.data(), len, "a parameter name");
      const auto size = r.get<std::uint64_t>("a parameter size");
      s.steps = r.get<std::uint64_t>("a step count");
      const auto buffers = r.get<std::uint32_t>("a buffer count");
      if (buffers != 0 && buffers != buffer_count_)
        r.fail("parameter '" + s.name + "' has " + std::to_string(buffers) +
               " buffers, expected 0 or " + std::to_string(buffer_count_));
      // Every buffer must be there before any is allocated (a corrupt size fails here).
      if (buffers != 0) r.need_values(size, buffers * sizeof(T), "the buffers");
      s.size = static_cast<std::size_t>(size);
      s.buffers.resize(buffers);
      for (std::vector<T>& b : s.buffers) {
        b.resize(s.size);
        r.get_array(b.data(), b.size(), "a buffer");
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
