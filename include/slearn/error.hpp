// Errors: library code throws slearn::Error carrying what went wrong and where (the user's file, line,
// key or tensor in the message; the source location separately for developers). Only the CLI turns an
// Error into one line on stderr and an exit code.
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>

namespace slearn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message,
                 std::source_location where = std::source_location::current())
      : std::runtime_error(message), file_(where.file_name()), line_(static_cast<int>(where.line())) {}

  const char* source_file() const noexcept { return file_; }
  int source_line() const noexcept { return line_; }

 private:
  const char* file_;
  int line_;
};

// A request the user can fix (bad flag, bad file, unsupported model): the CLI exits with code 2 for these.
class InputError : public Error {
 public:
  using Error::Error;
};

// Throws InputError(message) when the condition does not hold.
inline void require(bool condition, const std::string& message,
                    std::source_location where = std::source_location::current()) {
  if (!condition) throw InputError(message, where);
}

// `text` on one line: each run of control characters (newlines, tabs, ...) becomes one space, none at the ends.
// An error is one line on stderr and in a job log, whatever a library put in its text (HDF5's details can
// hold a newline, e.g. a ctime() string on a failed write).
inline std::string one_line(std::string_view text) {
  std::string line;
  bool gap = false;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      gap = true;
      continue;
    }
    if (gap && !line.empty()) line += ' ';
    gap = false;
    line += c;
  }
  return line;
}

}  // namespace slearn
