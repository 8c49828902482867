// Sampling: the options, the CPU sampler, and the counter-based random draw that both backends use.
//
// The draw of a sampled token is a pure function of (seed, the record's stream id, the step): no generator
// state is carried from step to step, so a sampled answer depends neither on the rank count, nor on what it
// was batched with, nor on the backend (up to logits that differ by rounding). The functions below are
// plain integer arithmetic, compiled both here and in kernels/cuda/sampling.cu (C++17, host and device), so
// the two backends draw bit-identical uniforms; sample_weight is shared the same way.
#pragma once

#include <cmath>
#include <cstdint>
#if __cplusplus >= 202002L  // kernels/cuda/sampling.cu, compiled as C++17, sees all but sample_token
#include <span>
#endif

#include "slearn/mix64.hpp"

namespace slearn {

using TokenId = std::int32_t;

struct SamplingOptions {
  double temperature = 0.0;  // 0 means greedy (argmax, lowest id on ties)
  std::int64_t top_k = 0;    // 0 disables
  double top_p = 1.0;        // 1 disables
  std::uint64_t seed = 0;
};

// 64 random bits for draw `step` of stream `stream` under `seed`.
SLEARN_HOST_DEVICE inline std::uint64_t sample_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t step) {
  std::uint64_t z = mix64(seed + 0x9e3779b97f4a7c15ull);
  z = mix64(z ^ (stream * 0xd1b54a32d192ed03ull + 0x8bb84b93962eacc9ull));
  return mix64(z ^ (step * 0xaef17502108ef2d9ull + 0x2545f4914f6cdd1dull));
}

// A uniform double in [0, 1) from the top 53 bits of sample_bits.
SLEARN_HOST_DEVICE inline double sample_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t step) {
  return static_cast<double>(sample_bits(seed, stream, step) >> 11) * (1.0 / 9007199254740992.0);
}

// The unnormalised probability of a token, exp(logit / T - top) with top = max logit / T, as both backends
// compute it (inv_temperature = 1 / T, top = double(max logit) * inv_temperature). The fused multiply-add is
// spelled out so that no compiler's contraction choice changes the bits; the two exp implementations (libm,
// CUDA) may still differ by an ulp.
SLEARN_HOST_DEVICE inline double sample_weight(float logit, double inv_temperature, double top) {
#if defined(__CUDA_ARCH__)
  return ::exp(::fma(static_cast<double>(logit), inv_temperature, -top));
#else
  return std::exp(std::fma(static_cast<double>(logit), inv_temperature, -top));
#endif
}

// Throws InputError for a temperature that is negative, NaN or infinite, top_p outside (0, 1], or top_k < 0.
void check_sampling_options(const SamplingOptions& options);

// The next token from one row of logits. The rules, which the CUDA sampler (kernels/cuda/sampling.cu)
// follows too:
//   - the order: logit, highest first; equal logits by lower id first (-0 and +0 are equal);
//   - temperature 0: greedy, the first token of the order (argmax, lowest id on ties). So is a row whose
//     top logit / T is not finite (+inf logit, every logit -inf, or T so small the scaling overflows): the
//     limit of sampling as T -> 0;
//   - weights w = sample_weight(logit, 1 / T, max / T);
//   - top-k (k > 0): the candidates are the tokens whose logit is >= the k-th logit of the order (every token
//     tied with the k-th is kept, as torch.topk's threshold does); all tokens when k is 0 or >= the vocab;
//   - total = the sum of the candidates' weights, in id order;
//   - top-p (< 1): the kept tokens are the shortest prefix of the candidates in the order whose running sum
//     of w / total (in the order) reaches top_p, and kept = the sum of their weights in the order; when
//     top_p is 1, or the running sum never reaches it, every candidate is kept and kept = total;
//   - the draw: u = sample_uniform(seed, stream, step) * kept; the first kept token in the order at which the
//     running sum of weights exceeds u (u < sum), else the last kept token.
// Throws InputError for bad options (check_sampling_options) and Error for an empty row or a NaN logit.
// Only the candidates the draw reaches are sorted (partial selection): a typical top-p row sorts a few
// hundred tokens, not the vocabulary.
#if __cplusplus >= 202002L
TokenId sample_token(std::span<const float> logits, const SamplingOptions& options, std::uint64_t stream,
                     std::uint64_t step);
#endif

}  // namespace slearn
