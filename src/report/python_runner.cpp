#include "report/python_runner.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace slearn::report {

namespace {

constexpr const char* kInstall = "install the Debian package python3-matplotlib (apt-get install python3-matplotlib, "
                                 "or launch/setup.sh)";

// The last non-blank line of the script's output: a traceback's last line says what went wrong.
std::string last_line(const std::string& output) {
  std::size_t end = output.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return "no output";
  const std::size_t begin = output.rfind('\n', end);
  return output.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

}  // namespace

std::optional<std::string> run_plot_script(const std::string& python, const std::string& script,
                                           const std::filesystem::path& series, const std::filesystem::path& out_dir) {
  if (::access(python.c_str(), X_OK) != 0)
    return python + " not found (" + std::strerror(errno) + "): install the Debian packages python3 and "
           "python3-matplotlib (apt-get install python3 python3-matplotlib, or launch/setup.sh)";
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return std::string("cannot create a pipe for the plot script: ") + std::strerror(errno);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);
  // -I: isolated from PYTHONPATH, PYTHONHOME and the user's site-packages, which could hide or shadow the
  // system's matplotlib.
  // The last argument: this process, with which the script ends if it is killed (plots.py, end_with_parent).
  std::vector<std::string> args = {python, "-I", "-c", script, series.string(), out_dir.string(),
                                   std::to_string(::getpid())};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (spawned != 0) {
    ::close(pipe_fds[0]);
    return "cannot start " + python + ": " + std::strerror(spawned) + ": " + kInstall;
  }
  std::string output;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return std::nullopt;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
    return last_line(output) + ": " + kInstall;  // the script's line: matplotlib cannot be imported by ...
  if (WIFSIGNALED(status))
    return "the plot script (" + python + ") was killed by signal " + std::to_string(WTERMSIG(status));
  return "the plot script (" + python + ") failed with exit " + std::to_string(WEXITSTATUS(status)) + ": " +
         last_line(output);
}

}  // namespace slearn::report
