// Checking a job's inputs on every rank at once. Every rank of an MPI job reads the same configuration, model,
// tokenizer and data, so a bad input fails on all of them alike; printed by each, it would be one line per
// rank, and a rank that failed alone would leave the others waiting in their next collective forever.
// check_on_all_ranks runs the checks, then the ranks agree (one allgather): either all go on, or all stop,
// and the error is reported once (docs/failures.md).
#pragma once

#include <functional>
#include <source_location>
#include <string>

#include "slearn/communicator.hpp"
#include "slearn/error.hpp"

namespace slearn {

// Thrown on the ranks that do not report a failed check: the CLI exits with exit_code() without printing,
// since the rank that reports prints the line.
class ReportedByAnotherRank : public Error {
 public:
  ReportedByAnotherRank(int reporting_rank, int exit_code,
                        std::source_location where = std::source_location::current())
      : Error("the inputs failed their checks; rank " + std::to_string(reporting_rank) + " reports why", where),
        exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

// Collective: every rank calls it at the same point. Runs `check`; when it throws on no rank, returns. When it
// throws on some ranks, every rank throws: the lowest-numbered failing rank its own exception; each other
// failing rank its own too if its message differs from that one's (prefixed with "rank N: "), else
// ReportedByAnotherRank; and the ranks whose checks passed ReportedByAnotherRank. Exit codes follow the
// reported error: 2 for an InputError, 1 otherwise. With one rank it is just check().
void check_on_all_ranks(Communicator& comm, const std::function<void()>& check);

// Whether the failure now leaving the program was agreed by all ranks (check_on_all_ranks, or another place
// where every rank takes the same decision and calls mark_failure_agreed). A failure that was not may leave
// other ranks waiting in a collective: the CLI then aborts the job (MPI_Abort) instead of finalising, which
// would wait for them forever.
void mark_failure_agreed();
bool failure_agreed();

}  // namespace slearn
