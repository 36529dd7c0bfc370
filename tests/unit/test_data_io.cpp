// write_file_atomically: the file appears complete or not at all, the temporary is removed on
// failure, and an existing file survives a failed write untouched.
#include "test_data_common.hpp"

#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/read_file.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace test_data_io {

using namespace bitgrad_test;

namespace {

std::vector<std::string> names_in(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

} // namespace

TEST_CASE("write_file_atomically writes the whole file and leaves no temporary") {
  temp_dir dir;
  auto path = dir / "model.bgm";
  bitgrad::write_file_atomically(path, std::string_view("hello\n"));
  CHECK(read_text(path) == "hello\n");

  // Many small writes and one write larger than the internal buffer.
  std::string big(200000, 'x');
  for (std::size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>('a' + i % 26);
  bitgrad::write_file_atomically(path, [&](std::ostream& out) {
    for (int i = 0; i < 1000; ++i) out << i << ',';
    out.write(big.data(), static_cast<std::streamsize>(big.size()));
    out << "end";
  });
  std::string expected;
  for (int i = 0; i < 1000; ++i) expected += std::to_string(i) + ',';
  expected += big + "end";
  CHECK(read_text(path) == expected);
  CHECK(names_in(dir.path()) == std::vector<std::string>{"model.bgm"});

  // An empty file is a file too.
  bitgrad::write_file_atomically(dir / "empty", [](std::ostream&) {});
  CHECK(std::filesystem::file_size(dir / "empty") == 0);
}

TEST_CASE("a throwing writer leaves the existing file untouched and no temporary") {
  temp_dir dir;
  auto path = dir / "checkpoint.bin";
  bitgrad::write_file_atomically(path, std::string_view("old contents"));
  try {
    bitgrad::write_file_atomically(path, [](std::ostream& out) {
      out << std::string(100000, 'n'); // more than the buffer: some of it reached the temporary
      throw std::runtime_error("out of ideas");
    });
    FAIL("no exception");
  } catch (const bitgrad::io_error& e) {
    std::string msg = e.what();
    CHECK(msg.find(path.string()) != std::string::npos);
    CHECK(msg.find("out of ideas") != std::string::npos);
    CHECK_THROWS_WITH_AS(std::rethrow_if_nested(e), "out of ideas", std::runtime_error);
  }
  CHECK(read_text(path) == "old contents");
  CHECK(names_in(dir.path()) == std::vector<std::string>{"checkpoint.bin"});

  // A non-standard exception, and a new file that never appears.
  CHECK_THROWS_AS(bitgrad::write_file_atomically(dir / "new", [](std::ostream&) { throw 42; }),
                  bitgrad::io_error);
  CHECK_FALSE(std::filesystem::exists(dir / "new"));
  CHECK(names_in(dir.path()) == std::vector<std::string>{"checkpoint.bin"});
}

TEST_CASE("write_file_atomically reports unwritable places as io_error naming the file") {
  temp_dir dir;
  auto path = dir / "no-such-dir" / "report.html";
  CHECK_THROWS_WITH_AS(bitgrad::write_file_atomically(path, std::string_view("x")),
                       doctest::Contains(path.string().c_str()), bitgrad::io_error);
  // Renaming onto a directory fails after the data was written: the temporary goes away.
  std::filesystem::create_directory(dir / "occupied");
  std::filesystem::create_directory(dir / "occupied" / "child");
  CHECK_THROWS_WITH_AS(bitgrad::write_file_atomically(dir / "occupied", std::string_view("x")),
                       doctest::Contains("rename"), bitgrad::io_error);
  CHECK(names_in(dir.path()) == std::vector<std::string>{"occupied"});
}

TEST_CASE("read_file_bytes reads everything and enforces its limit") {
  temp_dir dir;
  bytes data = random_bytes(3 << 20, 9); // several read chunks
  write_bytes(dir / "blob", data);
  CHECK(bitgrad::read_file_bytes(dir / "blob", 4 << 20) == data);
  CHECK_THROWS_AS((void)bitgrad::read_file_bytes(dir / "blob", 1 << 20), bitgrad::format_error);
  CHECK_THROWS_AS((void)bitgrad::read_file_bytes(dir / "missing", 10), bitgrad::io_error);
  CHECK_THROWS_AS((void)bitgrad::read_file_bytes(dir.path(), 10), bitgrad::io_error);
}

namespace {

/// Forks a child that writes `path` atomically in many slow chunks; once it has written at
/// least `bytes_before_kill` it tells the parent, which kills it with SIGKILL mid-write.
void kill_writer_mid_write(const std::filesystem::path& path, std::size_t bytes_before_kill) {
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ready[0]);
    try {
      bitgrad::write_file_atomically(path, [&](std::ostream& out) {
        const std::string chunk(64 * 1024, 'n');
        for (std::size_t written = 0;; written += chunk.size()) {
          out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
          out.flush();
          if (written >= bytes_before_kill) {
            const char go = 1;
            (void)!::write(ready[1], &go, 1);
            ::pause(); // killed here, in the middle of the file
          }
        }
      });
    } catch (...) {
    }
    ::_exit(3); // never reached when killed
  }
  ::close(ready[1]);
  char go = 0;
  REQUIRE(::read(ready[0], &go, 1) == 1);
  ::close(ready[0]);
  REQUIRE(::kill(child, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
}

} // namespace

TEST_CASE("a writer killed mid-write never leaves a truncated file under the final name") {
  const temp_dir dir;
  SUBCASE("new file: the final name does not appear") {
    const auto path = dir / "model.bgm";
    kill_writer_mid_write(path, 1 << 20);
    CHECK_FALSE(std::filesystem::exists(path));
  }
  SUBCASE("existing file: the old content stays whole") {
    const auto path = dir / "checkpoint.bin";
    const std::string old = "the last good checkpoint";
    bitgrad::write_file_atomically(path, old);
    kill_writer_mid_write(path, 1 << 20);
    const auto bytes = bitgrad::read_file_bytes(path, 1 << 20);
    CHECK(std::string(bytes.begin(), bytes.end()) == old);
  }
}

} // namespace test_data_io
