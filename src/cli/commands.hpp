// Subcommands of slearn_dist. Each registers its options on the CLI11 app and returns the function that
// runs it; library errors propagate to main(), which prints them as one line.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace slearn::cli {

using Command = std::function<int()>;

// Starts MPI for a command that needs it. main() finalizes it only after it has printed the command's outcome:
// mpirun ends the whole job as soon as one rank exits non-zero, and MPI_Finalize waits for every rank, so the
// reporting rank's line must be out before it enters MPI_Finalize, or another rank's exit can cut it off.
void start_mpi();

Command add_generate_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app);
Command add_train_command(CLI::App& app);
Command add_merge_command(CLI::App& app);
Command add_run_command(CLI::App& app);

// The configuration overrides with `--backend X` (when given) as the last one, backend=X.
inline std::vector<std::string> with_backend(std::vector<std::string> overrides, const std::string& backend) {
  if (!backend.empty()) overrides.push_back("backend=" + backend);
  return overrides;
}

}  // namespace slearn::cli
