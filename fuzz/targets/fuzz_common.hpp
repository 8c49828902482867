// Shared by the fuzz targets: the expected-outcome rule for exceptions, and an in-memory file for parsers
// that read a path.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <typeinfo>

#include "slearn/error.hpp"

namespace slearn_fuzz {

// Bad input must end in slearn::Error (InputError is one); any other exception is a bug, reported here as a
// crash so that libFuzzer keeps the input. Returns true when `body` finished without an exception.
template <class Body>
bool expect_slearn_errors_only(Body&& body) {
  try {
    body();
    return true;
  } catch (const slearn::Error&) {
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nFUZZ FAILURE: a non-slearn exception escaped: %s: %s\n", typeid(e).name(), e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "\nFUZZ FAILURE: an exception of unknown type escaped\n");
    std::abort();
  }
}

// A property of the parser's output does not hold.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "\nFUZZ FAILURE: %s\n", what.c_str());
  std::abort();
}

// A file in memory (memfd) that parsers open by path (/proc/self/fd/N): no disk traffic per input.
class MemoryFile {
 public:
  MemoryFile() {
    fd_ = ::memfd_create("slearn-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemoryFile() { ::close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  // Replaces the contents with `bytes`.
  void write(std::string_view bytes) {
    if (::ftruncate(fd_, 0) != 0) {
      std::perror("ftruncate");
      std::abort();
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      if (n <= 0) {
        std::perror("pwrite");
        std::abort();
      }
      done += static_cast<std::size_t>(n);
    }
  }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

inline bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n;
    char32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return false;
    if (s.size() - i < n) return false;
    for (std::size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n;
  }
  return true;
}

}  // namespace slearn_fuzz
