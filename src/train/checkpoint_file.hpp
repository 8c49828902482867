// The checkpoint file format (HDF5, format version 2, with a checksum on every dataset): what checkpoint.cpp
// writes under a temporary name and reads back. The layout is described at the top of checkpoint_file.cpp.
#pragma once

#include <filesystem>
#include <mutex>

#include "slearn/checkpoint.hpp"

namespace slearn::checkpoint_file {

// Held by every public entry point of the checkpoint module: serialises its HDF5 use and turns off HDF5's
// automatic printing of its error stack to stderr. (In a thread-safe HDF5 build that setting is per thread, so
// it is applied on every call rather than once.)
class Hdf5Session {
 public:
  Hdf5Session();

 private:
  std::lock_guard<std::mutex> lock_;
};

// Throws Error when `state` cannot be stored as it is (bad names, shapes that do not match the values, moments
// that do not match the adapter); `file` names it in messages.
void validate_state(const TrainState& state, const std::filesystem::path& file);

// Writes `state` into `path` (created or truncated); Error on any I/O failure.
void write(const std::filesystem::path& path, const TrainState& state);

// Reads and verifies the checkpoint at `path`: InputError naming the file and what is wrong (not HDF5, another
// format version, a checksum that fails, a shape that cannot fit the file, ...).
TrainState read(const std::filesystem::path& path);

}  // namespace slearn::checkpoint_file
