// slearn_dist: the one binary. Errors from the library arrive here as exceptions and leave as one line on
// stderr and an exit code: 2 for input the user can fix, 1 for anything else, 75 for a run stopped on request
// (SIGTERM, SIGUSR1) with its outputs saved (docs/stopping.md).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>

#include "cli/commands.hpp"
#include "slearn/communicator.hpp"
#include "slearn/cpu_info.hpp"
#include "slearn/error.hpp"
#include "slearn/input_check.hpp"
#include "slearn/stop.hpp"
#include "util/launcher.hpp"

namespace {

std::optional<slearn::MpiSession> g_mpi;


// Runs the parsed command and turns what it throws into one line and an exit code.
int run_command(const std::map<CLI::App*, slearn::cli::Command>& commands, bool verbose_errors) {
  try {
    for (auto& [sub, command] : commands)
      if (sub->parsed()) return command();
    return 2;
  } catch (const slearn::StopRequested& e) {
    // Every rank of the job stops together; one of them reports, so the line appears once.
    // Only the reporting rank exits non-zero: mpirun ends the job at the first non-zero exit and may drop
    // output still in flight from the others, which lost the reporter's line when a silent rank was quicker.
    // The job's exit code (mpirun's, srun's, Slurm's) is then the reporter's.
    if (!e.report()) return 0;
    std::cerr << "slearn_dist: " << slearn::one_line(e.what()) << std::endl;
    return slearn::kExitStopped;
  } catch (const slearn::ReportedByAnotherRank&) {
    return 0;  // a failure every rank saw alike: the reporting rank prints it and gives the job its exit code
  } catch (const slearn::InputError& e) {
    std::cerr << "slearn_dist: error: " << slearn::one_line(e.what());
    if (verbose_errors) std::cerr << " [" << e.source_file() << ":" << e.source_line() << "]";
    std::cerr << std::endl;
    return 2;
  } catch (const slearn::Error& e) {
    std::cerr << "slearn_dist: error: " << slearn::one_line(e.what());
    if (verbose_errors) std::cerr << " [" << e.source_file() << ":" << e.source_line() << "]";
    std::cerr << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "slearn_dist: internal error: " << slearn::one_line(e.what()) << std::endl;
    return 1;
  }
}

}  // namespace

void slearn::cli::start_mpi() {
  if (!g_mpi) g_mpi.emplace(nullptr, nullptr);
}

int main(int argc, char** argv) {
  // A rank outliving a killed mpirun would go on writing into the run directory (util/launcher.hpp).
  slearn::end_with_launcher();
  // First of all: a SIGTERM (Slurm's preemption) that comes while the program starts must be a stop with exit
  // 75 (requeued), not death by the default action (143, not requeued). run and train check the flag at their
  // first safe point; the other commands put the default action back once parsed.
  try {
    slearn::install_stop_handlers();
  } catch (const std::exception& e) {
    std::cerr << "slearn_dist: error: " << slearn::one_line(e.what()) << std::endl;
    return 1;
  }
  CLI::App app{"slearn_dist: self-learning fine-tuning of chat models (SLearnLLM) on HPC clusters"};
  app.require_subcommand(1);
  // The version with what the CPU backend runs on: the GEMM kernel OpenBLAS chose decides prefill speed.
  app.set_version_flag("--version", [] {
    return "slearn_dist 0.1.0\ncpu: " + slearn::describe(slearn::cpu_info());
  });
  bool verbose_errors = false;
  app.add_flag("--debug-errors", verbose_errors, "Add the source location to error messages");

  std::map<CLI::App*, slearn::cli::Command> commands;
  auto add = [&](auto&& adder) {
    auto before = app.get_subcommands({});
    auto command = adder(app);
    auto after = app.get_subcommands({});
    for (auto* sub : after)
      if (std::find(before.begin(), before.end(), sub) == before.end()) commands[sub] = command;
  };
  add(slearn::cli::add_generate_command);
  add(slearn::cli::add_tokenize_command);
  add(slearn::cli::add_train_command);
  add(slearn::cli::add_merge_command);
  add(slearn::cli::add_run_command);
  add(slearn::cli::add_report_command);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  bool stops_at_safe_points = false;
  for (auto& [sub, command] : commands)
    if (sub->parsed() && (sub->get_name() == "run" || sub->get_name() == "train")) stops_at_safe_points = true;
  if (!stops_at_safe_points) slearn::uninstall_stop_handlers();
  const int code = run_command(commands, verbose_errors);
  // A failure some ranks did not take part in (an error while working, on this rank alone) leaves the others
  // in their next collective: finalising would wait for them, so the job is aborted instead, once the line
  // is out. Agreed failures and stops end every rank by itself.
  if (code != 0 && code != slearn::kExitStopped && !slearn::failure_agreed() && g_mpi) g_mpi->abort_job(code);
  g_mpi.reset();  // MPI_Finalize, once the outcome is reported (see start_mpi)
  return code;
}
