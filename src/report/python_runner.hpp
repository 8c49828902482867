// Runs the embedded plotting script with a Python interpreter and tells, in words a person can act on, why
// it did not draw (no interpreter, no matplotlib, the script failed).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace slearn::report {

// Runs `python -I -c script series out_dir`; nullopt when it exits 0, else the reason, on one line.
// posix_spawn, not fork: the caller may be an MPI rank, where fork() copies (or breaks) the transport's state.
std::optional<std::string> run_plot_script(const std::string& python, const std::string& script,
                                           const std::filesystem::path& series, const std::filesystem::path& out_dir);

}  // namespace slearn::report
