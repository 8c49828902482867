// Turning MPI return codes into exceptions. With MPI_ERRORS_RETURN on the communicator (MpiSession and
// make_mpi_communicator set it on MPI_COMM_WORLD) a failing call returns its code instead of aborting;
// SLEARN_MPI_CHECK(MPI_Allreduce(...)) throws slearn::Error
//   "MPI_Allreduce failed: MPI_ERR_COUNT: invalid count argument (src/dist/mpi_communicator.cpp:123)"
// naming the call, the MPI error text, and the file and line of the check.
#pragma once

#include <source_location>
#include <string>

namespace slearn::mpi {

// "src/dist/mpi_communicator.cpp" from "/work/main/src/dist/mpi_communicator.cpp": the path from the last
// "src/" or "tests/" part on, else the file name as given.
std::string short_source_path(const char* file);

// The MPI error text of `code` ("MPI_ERR_COUNT: invalid count argument").
std::string error_text(int code);

// Throws slearn::Error when `code` is not MPI_SUCCESS. `call` is the call's text; its name is what comes
// before the first '('.
void check(int code, const char* call, std::source_location where = std::source_location::current());

}  // namespace slearn::mpi

#define SLEARN_MPI_CHECK(call) ::slearn::mpi::check((call), #call)
