// Where tests find their data: the committed fixtures and the shared data beside the checkout.
#pragma once

#include <filesystem>

namespace slearn::testing {

inline std::filesystem::path source_dir() { return SLEARN_SOURCE_DIR; }
inline std::filesystem::path fixtures_dir() { return source_dir() / "tests" / "fixtures"; }
inline std::filesystem::path shared_data_dir() { return SLEARN_SHARED_DATA_DIR; }

}  // namespace slearn::testing
