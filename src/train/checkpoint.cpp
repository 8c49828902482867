// Training checkpoints: where they go and which are kept. <run>/checkpoints/step-NNNNNNNN.h5 (the file format:
// checkpoint_file.cpp) is written under a temporary name, flushed, fsynced and renamed, then `latest` is
// replaced the same way; a crash at any point leaves either the previous checkpoint or the new one as `latest`,
// never a torn file. Loading `latest` checks its fingerprint against the run's.
#include "slearn/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <utility>

#include "slearn/error.hpp"
#include "train/checkpoint_file.hpp"

namespace slearn {

namespace {

namespace fs = std::filesystem;
using checkpoint_file::Hdf5Session;

constexpr const char* kLatestName = "latest";
constexpr const char* kLatestTemporary = "latest.tmp";
constexpr std::uintmax_t kMaxLatestSize = 4096;

// ---------------------------------------------------------------------------------------------------------
// Names and validation.

std::string step_file_name(std::int64_t step) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "step-%08lld.h5", static_cast<long long>(step));
  return buffer;
}

// The step of "step-<digits>.h5" (with `suffix` after it), or -1 for any other name.
std::int64_t parse_step_file_name(const std::string& name, std::string_view suffix = {}) {
  constexpr std::string_view kPrefix = "step-";
  constexpr std::string_view kExtension = ".h5";
  std::string_view view = name;
  if (!view.starts_with(kPrefix) || !view.ends_with(suffix)) return -1;
  view.remove_prefix(kPrefix.size());
  view.remove_suffix(suffix.size());
  if (!view.ends_with(kExtension)) return -1;
  view.remove_suffix(kExtension.size());
  if (view.empty() || !std::all_of(view.begin(), view.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  std::int64_t step = 0;
  const auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), step);
  if (ec != std::errc() || end != view.data() + view.size()) return -1;
  return step;
}

// ---------------------------------------------------------------------------------------------------------
// Plain files: fsync, small writes, renames.

void sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw Error(path.string() + ": cannot open to sync it to disk: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some filesystems cannot sync a directory; the rename is then as durable as they make it.
  if (rc != 0 && !(directory && (error == EINVAL || error == ENOTSUP))) {
    throw Error(path.string() + ": fsync failed: " + std::strerror(error));
  }
}

void write_file_synced(const fs::path& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path.string() + ": cannot create: " + std::strerror(errno));
  std::size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      throw Error(path.string() + ": write failed: " + std::strerror(error));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    throw Error(path.string() + ": fsync failed: " + std::strerror(error));
  }
  if (::close(fd) != 0) throw Error(path.string() + ": close failed: " + std::strerror(errno));
}

void rename_file(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) throw Error(from.string() + ": cannot rename to " + to.string() + ": " + ec.message());
}

void remove_file(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) throw Error(path.string() + ": cannot remove: " + ec.message());
}

// Removes a temporary file unless dismissed (a failed save leaves nothing behind).
class TemporaryFile {
 public:
  explicit TemporaryFile(fs::path path) : path_(std::move(path)) {}
  ~TemporaryFile() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  void dismiss() { path_.clear(); }

 private:
  fs::path path_;
};

// Names of the plain files in `dir` (a missing directory has none).
std::vector<std::string> list_files(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot list the directory: " + ec.message());
  for (const fs::directory_entry& entry : it) {
    std::error_code type_ec;
    if (entry.is_regular_file(type_ec)) names.push_back(entry.path().filename().string());
  }
  return names;
}

// ---------------------------------------------------------------------------------------------------------
// Fingerprint comparison: "model:<hex> data:<hex> config:<hex>", compared part by part.

std::vector<std::pair<std::string, std::string>> fingerprint_parts(const std::string& fingerprint) {
  std::vector<std::pair<std::string, std::string>> parts;
  std::size_t start = 0;
  while (start < fingerprint.size()) {
    std::size_t end = fingerprint.find(' ', start);
    if (end == std::string::npos) end = fingerprint.size();
    const std::string token = fingerprint.substr(start, end - start);
    if (!token.empty()) {
      const std::size_t colon = token.find(':');
      if (colon == std::string::npos) {
        parts.emplace_back(token, std::string());
      } else {
        parts.emplace_back(token.substr(0, colon), token.substr(colon + 1));
      }
    }
    start = end + 1;
  }
  return parts;
}

std::string describe_part(const std::string& key) {
  if (key == "model") return "another base model";
  if (key == "data") return "other training data";
  if (key == "config") return "another configuration";
  return "a different " + key;
}

[[noreturn]] void refuse_fingerprint(const fs::path& file, const std::string& found, const std::string& expected) {
  const auto found_parts = fingerprint_parts(found);
  const auto expected_parts = fingerprint_parts(expected);
  const auto lookup = [](const auto& parts, const std::string& key) -> std::optional<std::string> {
    for (const auto& [k, v] : parts) {
      if (k == key) return v;
    }
    return std::nullopt;
  };
  std::vector<std::string> differing;
  const auto consider = [&](const std::string& key) {
    if (std::find(differing.begin(), differing.end(), key) != differing.end()) return;
    if (lookup(found_parts, key) != lookup(expected_parts, key)) differing.push_back(key);
  };
  for (const auto& part : expected_parts) consider(part.first);
  for (const auto& part : found_parts) consider(part.first);

  std::string message = file.string() + " was written for ";
  if (differing.empty()) {
    message += "another run (fingerprint differs)";
  } else {
    std::string descriptions;
    std::string keys;
    for (std::size_t i = 0; i < differing.size(); ++i) {
      const char* separator = i == 0 ? "" : (i + 1 == differing.size() ? " and " : ", ");
      descriptions += separator + describe_part(differing[i]);
      keys += (i == 0 ? "" : ", ") + differing[i];
    }
    message += descriptions + " (" + keys + (differing.size() == 1 ? " fingerprint differs)" : " fingerprints differ)");
  }
  throw InputError(message + "; start a new run directory or pass --force");
}

// The newest checkpoint in `dir` older than `step` that loads, verifies completely and has the expected
// fingerprint, or an empty string. It is only named to the user, never loaded in place of `latest`: going back
// repeats steps, and a file that went bad may mean a failing disk, so that is the user's call.
std::string valid_older_checkpoint(const fs::path& dir, std::int64_t step, const std::string& expected_fingerprint) {
  std::vector<std::pair<std::int64_t, std::string>> older;
  try {
    for (const std::string& file : list_files(dir)) {
      const std::int64_t file_step = parse_step_file_name(file);
      if (file_step >= 0 && file_step < step) older.emplace_back(file_step, file);
    }
  } catch (const Error&) {
    return {};
  }
  std::sort(older.begin(), older.end(), std::greater<>());
  for (const auto& [file_step, file] : older) {
    try {
      if (checkpoint_file::read(dir / file).fingerprint == expected_fingerprint) return file;
    } catch (const Error&) {
      // Not valid either: try the next older one.
    }
  }
  return {};
}

}  // namespace

// -------------------------------------------------------------------------------------------------------------

fs::path save_checkpoint(const fs::path& dir, const TrainState& state, std::int64_t keep_last) {
  Hdf5Session session;
  const std::string name = step_file_name(state.step);
  const fs::path final_path = dir / name;
  checkpoint_file::validate_state(state, final_path);

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create the checkpoint directory: " + ec.message());
  if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": exists and is not a directory");

  // Leftovers of a save that crashed half-way are never loaded; clear them.
  for (const std::string& file : list_files(dir)) {
    if (file == kLatestTemporary || parse_step_file_name(file, ".tmp") >= 0) remove_file(dir / file);
  }

  const fs::path temporary = dir / (name + ".tmp");
  {
    TemporaryFile guard(temporary);
    checkpoint_file::write(temporary, state);
    sync_path(temporary, false);
    rename_file(temporary, final_path);
    guard.dismiss();
  }
  sync_path(dir, true);

  const fs::path latest_temporary = dir / kLatestTemporary;
  {
    TemporaryFile guard(latest_temporary);
    write_file_synced(latest_temporary, name + "\n");
    rename_file(latest_temporary, dir / kLatestName);
    guard.dismiss();
  }
  sync_path(dir, true);

  if (keep_last > 0) {
    std::vector<std::pair<std::int64_t, std::string>> checkpoints;
    for (const std::string& file : list_files(dir)) {
      const std::int64_t step = parse_step_file_name(file);
      if (step >= 0) checkpoints.emplace_back(step, file);
    }
    std::sort(checkpoints.begin(), checkpoints.end(), std::greater<>());
    for (std::size_t i = static_cast<std::size_t>(std::min<std::int64_t>(keep_last, static_cast<std::int64_t>(checkpoints.size())));
         i < checkpoints.size(); ++i) {
      if (checkpoints[i].second != name) remove_file(dir / checkpoints[i].second);
    }
  }
  return final_path;
}

std::optional<TrainState> load_latest_checkpoint(const fs::path& dir, const std::string& expected_fingerprint) {
  Hdf5Session session;
  std::error_code ec;
  const auto dir_status = fs::status(dir, ec);
  if (!fs::exists(dir_status)) return std::nullopt;
  if (!fs::is_directory(dir_status)) throw InputError(dir.string() + ": is not a checkpoint directory");
  const fs::path latest = dir / kLatestName;
  const auto latest_status = fs::status(latest, ec);
  if (!fs::exists(latest_status)) return std::nullopt;
  if (!fs::is_regular_file(latest_status)) throw InputError(latest.string() + ": is not a file");
  const std::uintmax_t size = fs::file_size(latest, ec);
  if (ec) throw Error(latest.string() + ": cannot read the file size: " + ec.message());
  if (size > kMaxLatestSize) throw InputError(latest.string() + ": does not name a checkpoint file (too long)");

  std::string name(static_cast<std::size_t>(size), '\0');
  {
    std::FILE* stream = std::fopen(latest.c_str(), "rb");
    if (stream == nullptr) throw Error(latest.string() + ": cannot open: " + std::strerror(errno));
    const std::size_t got = std::fread(name.data(), 1, name.size(), stream);
    const bool failed = std::ferror(stream) != 0;
    std::fclose(stream);
    if (failed) throw Error(latest.string() + ": read error");
    name.resize(got);
  }
  const auto not_space = [](unsigned char c) { return c != ' ' && c != '\n' && c != '\r' && c != '\t'; };
  name.erase(name.begin(), std::find_if(name.begin(), name.end(), not_space));
  name.erase(std::find_if(name.rbegin(), name.rend(), not_space).base(), name.end());
  const std::int64_t step = parse_step_file_name(name);
  if (step < 0) {
    throw InputError(latest.string() + ": does not name a checkpoint file (it holds \"" + one_line(name) +
                     "\", expected step-NNNNNNNN.h5)");
  }
  const fs::path file = dir / name;
  std::optional<TrainState> state;
  try {
    if (!fs::exists(file, ec)) {
      throw InputError(latest.string() + " names " + name + ", which does not exist in " + dir.string());
    }
    state = checkpoint_file::read(file);
  } catch (const InputError& error) {
    const std::string older = valid_older_checkpoint(dir, step, expected_fingerprint);
    if (older.empty()) throw;
    throw InputError(std::string(error.what()) + "; the older checkpoint " + older + " in " + dir.string() +
                     " is valid: to resume from it, write its name into " + latest.string() +
                     "; or pass --force to start over");
  }
  if (state->fingerprint != expected_fingerprint) refuse_fingerprint(file, state->fingerprint, expected_fingerprint);
  return state;
}

TrainState load_checkpoint(const fs::path& file) {
  Hdf5Session session;
  return checkpoint_file::read(file);
}

}  // namespace slearn
