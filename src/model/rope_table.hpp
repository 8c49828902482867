// Rotary position tables: cos and sin of position x inverse frequency, [positions, head_dim/2], computed in
// fp32 as Hugging Face computes them, with the "linear" and "llama3" frequency scalings.
#pragma once

#include <cstdint>
#include <vector>

#include "slearn/model_config.hpp"

namespace slearn {

std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

struct RopeTables {
  std::vector<float> cos, sin;  // [positions, head_dim/2]
};
RopeTables make_rope_tables(const std::vector<float>& inverse_frequencies, std::int64_t positions);

}  // namespace slearn
