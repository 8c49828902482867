// Guards of a run directory (slearn_dist run and train): only one job works in it at a time, and nothing in it
// is deleted that a run did not write. A user may point run_dir at a directory that holds their only copy of a
// data set or a model; every clean-up goes through here.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace slearn {

// An exclusive lock on <run_dir>/run.lock for as long as the object lives: flock(2), so the kernel releases it
// when the holder dies (kill -9 included) and a stale lock never blocks. The file holds the holder's host, pid
// and start time, for the refusal message. The lock file itself is never removed: a run that removed it while
// another waited would let a third lock a new file beside them.
class RunDirLock {
 public:
  // Creates run_dir if needed and takes the lock. Throws InputError when another process holds it (naming its
  // host and pid), or when run_dir cannot be created or written. On a file system without flock support it
  // warns on stderr and goes on unlocked (some cluster file systems are mounted so).
  explicit RunDirLock(const std::filesystem::path& run_dir);
  ~RunDirLock();
  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  RunDirLock& operator=(RunDirLock&&) = delete;

 private:
  int fd_ = -1;
};

inline constexpr const char* kRunLockName = "run.lock";

// Checks, without writing anything, that run_dir can be a run directory: it is a directory or does not exist
// yet, and it (or the nearest existing ancestor it would be created in) is writable. Throws InputError.
void check_run_dir_usable(const std::filesystem::path& run_dir);

// Throws InputError when run_dir exists, is not empty and holds no `marker` (run.json for run,
// train_config.yaml for train): it is not a run directory of slearn's (`kind`, for the message), and nothing in
// it may be written or removed. The lock file and temporaries of the marker's own atomic write (a run killed
// while taking the directory) do not count.
void refuse_foreign_run_dir(const std::filesystem::path& run_dir, const std::string& marker, const std::string& kind);

// The inputs of a run, labelled for messages ("model", "data file", ...).
using LabelledPaths = std::vector<std::pair<std::string, std::filesystem::path>>;

// Throws InputError when clearing run_dir could delete one of `inputs`: run_dir is one of them, or holds one
// (by its path as written, or by where its symbolic links lead). `why` says what the clearing is for.
void refuse_clearing_inputs(const std::filesystem::path& run_dir, const LabelledPaths& inputs,
                            const std::string& why);

// Whether `path` lies inside `dir` or is `dir` (both made absolute; compared as written and resolved).
bool path_is_within(const std::filesystem::path& path, const std::filesystem::path& dir);

}  // namespace slearn
