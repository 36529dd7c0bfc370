// Writing a file so that readers see either the old file or the complete new one, never a
// half-written file (checkpoints, reports, model files).
//
// write_file_atomically(path, writer):
//   1. creates `<path>.tmp.<pid>.<n>` in the same directory as `path` (same file system, so
//      the final rename is atomic; <n> is a per-process counter so two threads never share a
//      temporary),
//   2. calls writer(std::ostream&) on a stream writing straight to that file descriptor,
//   3. flushes, fsync()s the file, closes it, rename()s it over `path` and fsync()s the
//      directory so the rename itself survives a crash.
// If anything fails (the writer throws, a write or fsync fails, the rename fails) the temporary
// is removed, `path` is left as it was, and an io_error naming `path` is thrown; when the cause
// was an exception from the writer it is attached as a nested exception
// (std::rethrow_if_nested).
//
// POSIX only (open/write/fsync/rename).
#pragma once

#include <bitgrad/core/error.hpp>

#include <atomic>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <filesystem>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace bitgrad {

namespace detail {

/// "<what> <file>: <strerror(err)>"
inline std::string errno_message(std::string_view what, const std::filesystem::path& file,
                                 int err) {
  return std::string(what) + " " + file.string() + ": " + std::strerror(err);
}

/// A std::streambuf over a POSIX file descriptor it does not own. Remembers the first errno.
class fd_streambuf : public std::streambuf {
public:
  explicit fd_streambuf(int fd) : fd_(fd), buffer_(1 << 16) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  fd_streambuf(const fd_streambuf&) = delete;
  fd_streambuf& operator=(const fd_streambuf&) = delete;

  /// errno of the first failed write, 0 if none.
  int error() const noexcept { return error_; }

protected:
  int_type overflow(int_type ch) override {
    if (!drain()) return traits_type::eof();
    if (traits_type::eq_int_type(ch, traits_type::eof())) return traits_type::not_eof(ch);
    *pptr() = traits_type::to_char_type(ch);
    pbump(1);
    return ch;
  }

  int sync() override { return drain() ? 0 : -1; }

  std::streamsize xsputn(const char* s, std::streamsize n) override {
    // Large writes bypass the buffer.
    if (n >= static_cast<std::streamsize>(buffer_.size())) {
      if (!drain() || !write_all(s, static_cast<std::size_t>(n))) return 0;
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }

private:
  bool drain() {
    std::size_t pending = static_cast<std::size_t>(pptr() - pbase());
    bool ok = write_all(pbase(), pending);
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return ok;
  }

  bool write_all(const char* data, std::size_t size) {
    if (error_ != 0) return false;
    while (size > 0) {
      ssize_t written = ::write(fd_, data, size);
      if (written < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      data += written;
      size -= static_cast<std::size_t>(written);
    }
    return true;
  }

  int fd_;
  std::vector<char> buffer_;
  int error_ = 0;
};

/// The temporary name used for `path`: "<path>.tmp.<pid>.<n>".
inline std::filesystem::path atomic_temp_path(const std::filesystem::path& path) {
  static std::atomic<unsigned long> counter{0};
  std::string name = path.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                     std::to_string(counter.fetch_add(1));
  return path.parent_path() / name;
}

/// fsync() the directory holding `path` (best effort: some file systems refuse).
inline void fsync_parent_directory(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}

} // namespace detail

/// Writes `path` atomically with `writer(std::ostream&)`; see the top of this header.
/// Throws io_error naming `path` on any failure, leaving an existing `path` untouched.
template <class Writer>
requires std::invocable<Writer&, std::ostream&>
void write_file_atomically(const std::filesystem::path& path, Writer&& writer) {
  if (path.filename().empty())
    throw io_error("write_file_atomically: " + path.string() + " does not name a file");
  const std::filesystem::path temp = detail::atomic_temp_path(path);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw io_error(detail::errno_message("cannot create temporary file for", path, errno) +
                   " (temporary " + temp.string() + ")");
  }
  auto discard = [&] {
    if (fd >= 0) (void)::close(fd);
    fd = -1;
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
  };

  // 1. The writer.
  detail::fd_streambuf buffer(fd);
  try {
    std::ostream out(&buffer);
    out.exceptions(std::ios::badbit | std::ios::failbit);
    writer(out);
    out.flush();
  } catch (...) {
    int err = buffer.error();
    discard();
    if (err != 0) throw io_error(detail::errno_message("cannot write", path, err));
    std::string reason = "writing " + path.string() + " failed";
    try {
      throw;
    } catch (const std::exception& e) {
      reason += ": ";
      reason += e.what();
    } catch (...) {
    }
    std::throw_with_nested(io_error(reason + " (file left unchanged)"));
  }

  // 2. Durable on disk, then visible under the final name.
  if (::fsync(fd) != 0) {
    int err = errno;
    discard();
    throw io_error(detail::errno_message("cannot fsync", path, err));
  }
  int closed = ::close(fd);
  fd = -1;
  if (closed != 0) {
    int err = errno;
    discard();
    throw io_error(detail::errno_message("cannot close", path, err));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    discard();
    throw io_error(detail::errno_message("cannot rename temporary file onto", path, err));
  }
  detail::fsync_parent_directory(path);
}

/// Writes `contents` to `path` atomically.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  write_file_atomically(path, [contents](std::ostream& out) {
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  });
}

} // namespace bitgrad
