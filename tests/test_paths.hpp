// Where tests find their data (the committed fixtures and the shared data beside the checkout), and reading a
// file whole.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace slearn::testing {

// SLEARN_SOURCE_DIR in the environment overrides the compiled-in checkout: a relocated copy of the fixtures,
// as in the GPU bundle (launch/gpu-bundle.sh).
inline std::filesystem::path source_dir() {
  const char* dir = std::getenv("SLEARN_SOURCE_DIR");
  return dir != nullptr && *dir != '\0' ? std::filesystem::path(dir) : std::filesystem::path(SLEARN_SOURCE_DIR);
}
inline std::filesystem::path fixtures_dir() { return source_dir() / "tests" / "fixtures"; }
inline std::filesystem::path shared_data_dir() { return SLEARN_SHARED_DATA_DIR; }

// The bytes of a file; empty when it cannot be read (the test's own assertions then fail on the content).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace slearn::testing
