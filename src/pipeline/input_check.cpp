#include <atomic>
#include "slearn/input_check.hpp"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <vector>

namespace slearn {

namespace {
std::atomic<bool> failure_agreed_flag{false};
}  // namespace

void mark_failure_agreed() { failure_agreed_flag = true; }
bool failure_agreed() { return failure_agreed_flag; }

void check_on_all_ranks(Communicator& comm, const std::function<void()>& check) {
  std::exception_ptr failure;
  std::string message;
  int code = 0;
  try {
    check();
  } catch (const InputError& e) {
    failure = std::current_exception(), message = e.what(), code = 2;
  } catch (const std::exception& e) {  // slearn::Error and the rest: not the user's to fix, but agreed on all the same
    failure = std::current_exception(), message = e.what(), code = 1;
  }
  if (comm.size() == 1) {
    if (failure) std::rethrow_exception(failure);
    return;
  }

  // Every rank learns which failed: the collectives must not start on some ranks only.
  const std::int64_t mine = code;
  const std::vector<std::int64_t> codes = comm.allgather(std::span<const std::int64_t>(&mine, 1));
  const auto first = std::find_if(codes.begin(), codes.end(), [](std::int64_t c) { return c != 0; });
  if (first == codes.end()) return;
  const int reporter = static_cast<int>(first - codes.begin());
  const int reported_code = static_cast<int>(*first);

  // The reporter's message, to tell an identical failure (stay silent) from another one (say it too).
  std::string reported = comm.rank() == reporter ? message : std::string();
  comm.broadcast(reported, reporter);
  mark_failure_agreed();  // every rank leaves now: none waits in a collective, so MPI can finalise normally
  if (comm.rank() == reporter) std::rethrow_exception(failure);
  if (failure && message != reported) {
    const std::string text = "rank " + std::to_string(comm.rank()) + ": " + message;
    if (code == 2) throw InputError(text);
    throw Error(text);
  }
  throw ReportedByAnotherRank(reporter, reported_code);
}

}  // namespace slearn
