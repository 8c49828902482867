// The MPI test executable (slearn_mpi_tests): main.cpp holds the MpiSession and the world communicator the
// tests share. Every test is collective: all ranks run the same tests in the same order and make the same
// communicator calls, so a test must not return early (ASSERT) before a collective the others will make.
#pragma once

#include "slearn/communicator.hpp"

namespace slearn::mpi_tests {

Communicator& world();

}  // namespace slearn::mpi_tests
