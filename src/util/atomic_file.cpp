#include "util/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "slearn/error.hpp"

namespace slearn {

namespace fs = std::filesystem;

namespace {

std::string temporary_suffix() { return ".tmp." + std::to_string(::getpid()); }

// Makes a rename in `dir` durable. Best effort: some file systems refuse fsync on a directory, and the data
// itself was already fsynced.
void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + temporary_suffix();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error(tmp.string() + ": cannot create: " + std::strerror(errno));
  auto fail = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(tmp.string() + ": " + what + ": " + reason);
  };
  std::size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write failed");
    written += static_cast<std::size_t>(n);
  }
  // A failed fsync means the data may never reach the disk: renaming it in would publish a file that is not
  // really there.
  if (::fsync(fd) != 0) fail("fsync failed");
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(tmp.string() + ": close failed: " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw Error(path.string() + ": cannot rename " + tmp.string() + " over it: " + reason);
  }
  sync_directory(path.parent_path());
}

void replace_directory_atomically(const fs::path& dir, const std::function<void(const fs::path&)>& fill) {
  const fs::path tmp = dir.string() + temporary_suffix();
  const fs::path old = dir.string() + ".old" + temporary_suffix();
  fs::remove_all(tmp);
  fs::remove_all(old);
  fs::create_directories(tmp);
  try {
    fill(tmp);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);  // the old directory stays as it was
    throw;
  }
  sync_directory(tmp);
  // rename() cannot replace a non-empty directory: move the old one aside first. Between the two renames
  // `dir` is absent, never half written.
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  sync_directory(dir.parent_path());
  fs::remove_all(old);
}

bool is_atomic_temporary(const fs::path& path) {
  return path.filename().string().find(".tmp.") != std::string::npos;
}

}  // namespace slearn
