#include "slearn/stop.hpp"

#include <atomic>
#include <csignal>
#include <cstring>
#include <vector>

#include "slearn/communicator.hpp"

namespace slearn {
namespace {

// The only state a signal handler touches: a lock-free atomic is async-signal-safe (a mutex or an
// allocation would not be). 0: no request; otherwise the first signal number (-1 for request_stop(0)).
std::atomic<int> g_request{0};
static_assert(std::atomic<int>::is_always_lock_free, "the stop flag must be lock-free to be set in a signal handler");

extern "C" void on_stop_signal(int signal) { request_stop(signal); }

// Signal numbers the agreement can name (the classic ones; others are reported without a name).
constexpr int kNamedSignals = 32;

}  // namespace

void install_stop_handlers() {
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESTART: reads, writes and waits interrupted by the signal carry on instead of failing with EINTR
  // (MPI, HDF5 and stdio would otherwise see errors). No SA_RESETHAND: a second SIGTERM must not kill the
  // process while it is writing its checkpoint.
  action.sa_flags = SA_RESTART;
  for (int signal : {SIGTERM, SIGUSR1})
    if (sigaction(signal, &action, nullptr) != 0)
      throw Error("cannot install the handler for " + signal_name(signal) + ": " + std::strerror(errno));
  // A launcher may start us with these blocked (the mask survives exec): we would never hear a preemption.
  sigset_t ours;
  sigemptyset(&ours);
  sigaddset(&ours, SIGTERM);
  sigaddset(&ours, SIGUSR1);
  if (sigprocmask(SIG_UNBLOCK, &ours, nullptr) != 0)
    throw Error(std::string("cannot unblock SIGTERM and SIGUSR1: ") + std::strerror(errno));
}

void uninstall_stop_handlers() {
  for (int signal : {SIGTERM, SIGUSR1}) std::signal(signal, SIG_DFL);
  // A request that came in while the handlers were up: what the signal would have done without them.
  if (const int signal = which_signal(); signal > 0) std::raise(signal);
}

bool stop_requested() noexcept { return g_request.load(std::memory_order_relaxed) != 0; }

int which_signal() noexcept {
  const int request = g_request.load(std::memory_order_relaxed);
  return request > 0 ? request : 0;
}

void request_stop(int signal) noexcept {
  int expected = 0;
  // The first request wins: a later SIGUSR1 does not rename a stop that SIGTERM started.
  g_request.compare_exchange_strong(expected, signal > 0 ? signal : -1, std::memory_order_relaxed);
}

void clear_stop_request() noexcept { g_request.store(0, std::memory_order_relaxed); }

std::string signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "signal " + std::to_string(signal);
  }
}

namespace {

std::string stop_message(int signal, const std::string& stage, const std::string& detail) {
  std::string message = signal > 0 ? "stopped by " + signal_name(signal) : std::string("stopped on request");
  message += " during " + stage;
  if (!detail.empty()) message += " (" + detail + ")";
  return message + "; run the same command again to resume";
}

}  // namespace

StopRequested::StopRequested(int signal, std::string stage, std::string detail, bool report,
                             std::source_location where)
    : Error(stop_message(signal, stage, detail), where), signal_(signal), stage_(std::move(stage)),
      detail_(std::move(detail)), report_(report) {}

bool agree_to_stop(Communicator& comm, bool stopping) { return comm.any(stopping || stop_requested()); }

void throw_agreed_stop(Communicator& comm, const std::string& stage, const std::string& detail) {
  // One count per signal number, summed over the ranks: every rank then names the same signal.
  std::vector<std::int64_t> seen(kNamedSignals, 0);
  const int mine = which_signal();
  if (mine > 0 && mine < kNamedSignals) seen[static_cast<std::size_t>(mine)] = 1;
  comm.allreduce_sum(std::span<std::int64_t>(seen));
  int signal = 0;
  for (int s = 1; s < kNamedSignals && signal == 0; ++s)
    if (seen[static_cast<std::size_t>(s)] > 0) signal = s;
  throw StopRequested(signal, stage, detail, comm.rank() == 0);
}

}  // namespace slearn
