// A path whose symbolic links go round in a circle: stat() fails with ELOOP, exists() says false, and "not
// found" would send the user looking for a file that seems to be there. Every loader says it is a loop.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

#include "slearn/error.hpp"

namespace slearn {

// Throws InputError "<path>: a symlink loop (too many levels of symbolic links) where <expected> was
// expected" when `ec` (from a stat of `path`) is ELOOP. With `dir` given (the directory `path` lies in), names
// the directory instead (as `dir_expected`) when the loop is the directory itself.
inline void refuse_symlink_loop(const std::filesystem::path& path, const std::error_code& ec,
                                const std::string& expected, const std::filesystem::path& dir = {},
                                const std::string& dir_expected = "a directory") {
  if (ec != std::errc::too_many_symbolic_link_levels) return;
  constexpr const char* kLoop = ": a symlink loop (too many levels of symbolic links) where ";
  if (!dir.empty()) {
    std::error_code dir_ec;
    (void)std::filesystem::status(dir, dir_ec);
    if (dir_ec == std::errc::too_many_symbolic_link_levels)
      throw InputError(dir.string() + kLoop + dir_expected + " was expected");
  }
  throw InputError(path.string() + kLoop + expected + " was expected");
}

}  // namespace slearn
