#include "util/terminal.hpp"

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <string_view>

namespace slearn {

bool writes_to_terminal(int fd) {
  if (isatty(fd) == 0) return false;
  if (std::getenv("SLURM_JOB_ID") != nullptr && std::getenv("SLURM_PTY_PORT") == nullptr) return false;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    // What the launcher's descriptor points at, without opening it: a terminal device or anything else.
    const std::string link = "/proc/" + std::to_string(getppid()) + "/fd/" + std::to_string(fd);
    char target[256];
    const ssize_t length = readlink(link.c_str(), target, sizeof target - 1);
    if (length <= 0) return false;
    const std::string_view path(target, static_cast<std::size_t>(length));
    return path.starts_with("/dev/pts/") || path.starts_with("/dev/tty");
  }
  return true;
}

}  // namespace slearn
