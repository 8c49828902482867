// Subcommands of slearn_dist. Each registers its options on the CLI11 app and returns the function that
// runs it; library errors propagate to main(), which prints them as one line.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
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
Command add_report_command(CLI::App& app);

// The report of a run that just finished (rank 0, after summary.json): report.md and plots in run_dir/report/.
// A failure is one warning line naming the cause and `slearn_dist report run_dir`; it never fails the run.
void report_after_run(const std::string& run_dir, bool plots);

// The options of train and run that stand for a configuration key. They apply after every --set, so that
// they win over it. A bad T is the configuration's error, naming parallel.tensor (--backend is checked here).
struct SettingOptions {
  std::string backend;                          // --backend X: backend=X
  std::optional<std::int64_t> tensor_parallel;  // --tensor-parallel T: parallel.tensor=T

  std::vector<std::string> appended_to(std::vector<std::string> overrides) const {
    if (!backend.empty()) overrides.push_back("backend=" + backend);
    if (tensor_parallel) overrides.push_back("parallel.tensor=" + std::to_string(*tensor_parallel));
    return overrides;
  }
};

// Registers --backend and --tensor-parallel on `sub`, bound to `options` (which must outlive the parse).
inline void add_setting_options(CLI::App& sub, SettingOptions& options) {
  sub.add_option("--backend", options.backend, "cpu, cuda or auto: where every stage computes (as --set backend=...)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub.add_option("--tensor-parallel", options.tensor_parallel,
                 "ranks per tensor-parallel group (as --set parallel.tensor=T); the world size must be a multiple")
      ->type_name("T");
}

}  // namespace slearn::cli
