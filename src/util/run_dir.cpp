#include "util/run_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <system_error>

#include "slearn/error.hpp"
#include "util/atomic_file.hpp"

namespace slearn {

namespace fs = std::filesystem;

namespace {

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "unknown host";
  return name;
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

constexpr const char* kNamelessHolder = "a process that has not written its name yet";

std::string read_holder(int fd) {
  char buffer[512] = {};
  const ssize_t n = ::pread(fd, buffer, sizeof buffer - 1, 0);
  std::string text = n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text.empty() ? std::string(kNamelessHolder) : text;
}

// Absolute and normalized without touching the file system, and resolved through symbolic links where it
// exists: a path can hide inside run_dir either way.
std::vector<fs::path> spellings(const fs::path& path) {
  std::vector<fs::path> out{fs::absolute(path).lexically_normal()};
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(path, ec);
  if (!ec && resolved != out.front()) out.push_back(resolved);
  return out;
}

bool lexically_within(const fs::path& path, const fs::path& dir) {
  auto p = path.begin();
  for (auto d = dir.begin(); d != dir.end(); ++d, ++p) {
    if (d->empty() && std::next(d) == dir.end()) break;  // a trailing separator
    if (p == path.end() || *p != *d) return false;
  }
  return true;
}

}  // namespace

RunDirLock::RunDirLock(const fs::path& run_dir) {
  check_run_dir_usable(run_dir);
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw InputError(run_dir.string() + ": cannot create the run directory: " + ec.message());
  const fs::path file = run_dir / kRunLockName;
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(file.string() + ": cannot create the run directory's lock: " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    if (error == EWOULDBLOCK || error == EINTR) {
      // The holder writes its name just after taking the lock: a loser that looks in between waits for it
      // (briefly) rather than reporting a holder without a name.
      std::string holder = read_holder(fd_);
      for (int i = 0; i < 100 && holder == kNamelessHolder; ++i) {
        ::usleep(10'000);
        holder = read_holder(fd_);
      }
      ::close(fd_);
      fd_ = -1;
      throw InputError(run_dir.string() + " is in use by another run (" + holder + ", lock " + file.string() +
                       "); wait for it to end or use another run_dir");
    }
    if (error == ENOLCK || error == ENOSYS || error == EOPNOTSUPP || error == EINVAL) {
      std::fprintf(stderr, "slearn_dist: warning: %s: the file system does not support locks (%s); a second run "
                   "on this run_dir at the same time would not be detected\n", file.c_str(), std::strerror(error));
      return;
    }
    const std::string reason = std::strerror(error);
    ::close(fd_);
    fd_ = -1;
    throw InputError(file.string() + ": cannot lock the run directory: " + reason);
  }
  const std::string holder = "host " + host_name() + ", pid " + std::to_string(::getpid()) + ", since " + utc_now();
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, holder.data(), holder.size(), 0) != static_cast<ssize_t>(holder.size()) ||
      ::pwrite(fd_, "\n", 1, static_cast<off_t>(holder.size())) != 1) {
    const std::string reason = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    throw InputError(file.string() + ": cannot write the run directory's lock: " + reason);
  }
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

RunDirLock::RunDirLock(RunDirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

void check_run_dir_usable(const fs::path& run_dir) {
  if (run_dir.empty()) throw InputError("run_dir is empty");
  std::error_code ec;
  const auto status = fs::status(run_dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
    throw InputError(run_dir.string() + ": cannot use as the run directory: " + ec.message());
  if (fs::exists(status) && !fs::is_directory(status))
    throw InputError(run_dir.string() + ": is a file, not a directory; run_dir must be a directory (or not exist yet)");
  // The directory, or the nearest ancestor it would be created in.
  fs::path existing = fs::absolute(run_dir).lexically_normal();
  while (!fs::exists(fs::status(existing, ec)) && existing.has_relative_path()) existing = existing.parent_path();
  if (!fs::is_directory(fs::status(existing, ec)))
    throw InputError(run_dir.string() + ": cannot be created: " + existing.string() + " is not a directory");
  if (::access(existing.c_str(), W_OK | X_OK) != 0)
    throw InputError(run_dir.string() + ": cannot " + (existing == fs::absolute(run_dir).lexically_normal()
                                                         ? std::string("write in it")
                                                         : "be created in " + existing.string()) +
                     ": " + std::strerror(errno));
}

void refuse_foreign_run_dir(const fs::path& run_dir, const std::string& marker, const std::string& kind) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec) || fs::exists(run_dir / marker, ec)) return;
  std::vector<std::string> foreign;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    const std::string name = entry.path().filename().string();
    if (name != kRunLockName && !(is_atomic_temporary(name) && name.starts_with(marker + "."))) foreign.push_back(name);
  }
  if (foreign.empty()) return;
  throw InputError(run_dir.string() + " is not empty (it holds " + foreign.front() +
                   (foreign.size() > 1 ? " and " + std::to_string(foreign.size() - 1) + " more" : "") +
                   ") and has no " + marker + ": it is not a " + kind + " of slearn's, and nothing in it is touched; "
                   "use a new or empty run_dir");
}

bool path_is_within(const fs::path& path, const fs::path& dir) {
  for (const auto& p : spellings(path))
    for (const auto& d : spellings(dir))
      if (lexically_within(p, d)) return true;
  return false;
}

void refuse_clearing_inputs(const fs::path& run_dir, const LabelledPaths& inputs, const std::string& why) {
  for (const auto& [label, input] : inputs) {
    if (input.empty()) continue;
    if (!path_is_within(input, run_dir)) continue;
    std::error_code ec;
    const bool same = fs::equivalent(input, run_dir, ec);
    throw InputError(run_dir.string() + (same ? " is the " : " holds the ") + label + " (" + input.string() +
                     "); " + why + " would delete it: use a run_dir of its own");
  }
}

}  // namespace slearn
