// Outputs that are complete or absent: a reader (or a resumed run) never finds a file that looks finished but
// was cut short by a kill. Each is written under a temporary name in the same directory (holding ".tmp.",
// see is_atomic_temporary), flushed and fsynced, then renamed over its final name, and the directory fsynced so
// the rename itself survives a crash.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace slearn {

// Writes `text` to `path` atomically.
void write_file_atomically(const std::filesystem::path& path, const std::string& text);

// Replaces the directory `dir` by one that `fill` writes into the temporary directory it is given (each file
// fsynced by its writer): the old directory is renamed aside, the new one renamed in, the old one removed. A
// reader sees the whole old directory, none, or the whole new one.
void replace_directory_atomically(const std::filesystem::path& dir,
                                  const std::function<void(const std::filesystem::path&)>& fill);

// Whether a file or directory name is a temporary of the functions above (left behind by a kill: never
// complete, safe to delete before a run starts).
bool is_atomic_temporary(const std::filesystem::path& path);

}  // namespace slearn
