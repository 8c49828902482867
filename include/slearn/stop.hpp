// Stopping on request: SIGTERM (what Slurm sends on preemption, scancel and time limits) and SIGUSR1 (what a
// job script can ask for ahead of the time limit, and what mpirun forwards to every rank) only record the
// request. The work notices it at its next safe point, where every rank agrees with a collective to stop,
// saves what it has (a training checkpoint; the answer and judge shards are written a record at a time
// anyway) and throws StopRequested, which the CLI turns into one line and exit code 75 (EX_TEMPFAIL: run the
// same command again to resume). See docs/stopping.md.
#pragma once

#include <csignal>
#include <source_location>
#include <string>

#include "slearn/error.hpp"

namespace slearn {

class Communicator;

// Exit code of a run stopped on request with its outputs saved (sysexits.h's EX_TEMPFAIL).
inline constexpr int kExitStopped = 75;

// Installs the handlers for SIGTERM and SIGUSR1 (sigaction with SA_RESTART and without SA_RESETHAND, so a
// second signal is recorded too instead of killing the process half way through saving).
void install_stop_handlers();
// Puts the default actions back, for commands that have no safe points to stop at (generate, tokenize,
// merge): a signal that arrived while the handlers were installed is raised again, so it acts as it would have.
void uninstall_stop_handlers();

// Whether a stop was requested in this process (by a signal, or request_stop).
bool stop_requested() noexcept;
// The first signal that requested the stop; 0 when none did.
int which_signal() noexcept;
// What the handler does; async-signal-safe.
void request_stop(int signal) noexcept;
// Forgets a request: for tests, which raise signals in the test process.
void clear_stop_request() noexcept;

// "SIGTERM", "SIGUSR1", ... ("signal N" for others).
std::string signal_name(int signal);

// Thrown on every rank once the ranks agreed to stop, after the outputs are saved.
class StopRequested : public Error {
 public:
  // `signal` 0: the request came from another rank without naming a signal. `report`: this process prints
  // the line (one rank of a job, so the message appears once).
  StopRequested(int signal, std::string stage, std::string detail, bool report = true,
                std::source_location where = std::source_location::current());
  int signal() const noexcept { return signal_; }
  const std::string& stage() const noexcept { return stage_; }
  const std::string& detail() const noexcept { return detail_; }
  bool report() const noexcept { return report_; }

 private:
  int signal_;
  std::string stage_, detail_;
  bool report_;
};

// Collective: every rank must call it at the same point of the work, the same number of times. True on every
// rank when any rank has a stop request or passes `stopping`.
bool agree_to_stop(Communicator& comm, bool stopping);

// Collective, on every rank once agree_to_stop returned true: throws StopRequested naming the signal some
// rank received (the lowest-numbered one when they differ), reported by rank 0 only.
[[noreturn]] void throw_agreed_stop(Communicator& comm, const std::string& stage, const std::string& detail);

}  // namespace slearn
