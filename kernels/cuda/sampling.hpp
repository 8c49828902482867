// The CUDA sampler (sampling.cu): one token per row of fp32 logits by the rules of slearn/sampling.hpp, with
// the same counter-based draw, so a row gives the CPU sampler's token up to logits, weights and sums that
// differ by rounding. Only the ids need to leave the device.
//
// NOTE: written and compiled for sm_80/sm_90 without a GPU at hand; never run yet (docs/cuda.md).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace slearn::cuda {

struct SampleRowsParams {
  const float* logits;           // [rows, vocab]
  std::int64_t rows, vocab;      // vocab in [1, 2^31 - 2^11)
  const std::uint64_t* streams;  // [rows]: row r draws sample_uniform(seed, streams[r], steps[r])
  const std::uint64_t* steps;    // [rows]
  std::uint64_t seed;
  double temperature;            // options as check_sampling_options accepts them (the launcher refuses others)
  std::int64_t top_k;
  double top_p;
  void* scratch;                 // sample_rows_scratch_bytes(rows, vocab) bytes of device memory (may be null at 0)
  std::int32_t* out;             // [rows]: the chosen ids; -1 for a row holding a NaN logit
  cudaStream_t stream;
};

// Device scratch the launcher needs: none today (everything lives in shared memory); kept in the interface
// so that a split of long rows over several blocks needs no change in the backend.
std::size_t sample_rows_scratch_bytes(std::int64_t rows, std::int64_t vocab);

void launch_sample_rows(const SampleRowsParams& p);

}  // namespace slearn::cuda
