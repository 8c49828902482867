// The fused softmax / loss kernels of the chunked cross-entropy. The backend (cuda_backend.cpp) gathers
// the counted rows' hidden states and walks the vocabulary in chunks: a cuBLASLt GEMM gives the chunk's
// fp32 logits [rows, columns], and these kernels reduce them, so neither [tokens x vocab] logits nor their
// gradient is ever held:
//   forward:  per chunk, ce_chunk_stats merges the chunk's (max, sum of exp) into each row's running pair
//             (the online log-sum-exp, sum kept in double) and picks up the target logit; ce_finish then
//             gives lse and the row's loss = lse - logit[target].
//   backward: per chunk, the logits are recomputed and ce_chunk_grad writes bf16 g = grad_scale *
//             (softmax - onehot), the input of the GEMM dhidden += g W_chunk (fp32 accumulator).
// One block per row, reductions in a fixed order (block_max / block_sum), the running pair updated by
// thread 0 after the block's reductions: deterministic, and chunks are merged in vocabulary order.
#include "cuda/device_utils.cuh"

namespace slearn::cuda {
namespace {

__global__ void ce_chunk_stats_kernel(CeChunkStatsParams p) {
  __shared__ float scratch[32];
  const std::int64_t row = blockIdx.x;
  const float* x = p.logits + row * p.columns;
  float local_max = -INFINITY;
  for (std::int64_t c = threadIdx.x; c < p.columns; c += blockDim.x) local_max = fmaxf(local_max, x[c]);
  const float chunk_max = block_max(local_max, scratch);
  float local_sum = 0.0f;
  for (std::int64_t c = threadIdx.x; c < p.columns; c += blockDim.x) local_sum += expf(x[c] - chunk_max);
  const float chunk_sum = block_sum(local_sum, scratch);
  if (threadIdx.x != 0) return;
  const std::int64_t target = p.targets[row];
  if (target >= p.v0 && target < p.v0 + p.columns) p.target_logit[row] = x[target - p.v0];
  const float old_max = p.running_max[row];
  const float new_max = fmaxf(old_max, chunk_max);
  // exp(-inf) = 0 for the first chunk.
  p.running_sum[row] = p.running_sum[row] * exp(static_cast<double>(old_max) - new_max) +
                       static_cast<double>(chunk_sum) * exp(static_cast<double>(chunk_max) - new_max);
  p.running_max[row] = new_max;
}

__global__ void ce_finish_kernel(CeFinishParams p) {
  for (std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; row < p.rows;
       row += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double lse = static_cast<double>(p.running_max[row]) + log(p.running_sum[row]);
    p.lse[row] = lse;
    p.loss[row] = lse - static_cast<double>(p.target_logit[row]);
  }
}

__global__ void ce_chunk_grad_kernel(CeChunkGradParams p) {
  const std::int64_t row = blockIdx.x;
  const float* x = p.logits + row * p.columns;
  bf16* g = p.grad + row * p.columns;
  const auto lse = static_cast<float>(p.lse[row]);
  const std::int64_t target = p.targets[row] - p.v0;  // outside [0, columns) when not in this chunk
  for (std::int64_t c = threadIdx.x; c < p.columns; c += blockDim.x) {
    float value = p.grad_scale * expf(x[c] - lse);
    if (c == target) value -= p.grad_scale;
    g[c] = to_bf16(value);
  }
}

void check_rows(std::int64_t rows) {
  if (rows > 0x7fffffff) throw_error("cross_entropy: " + std::to_string(rows) + " rows in one chunk exceed the grid");
}

}  // namespace

void launch_ce_chunk_stats(const CeChunkStatsParams& p) {
  if (p.rows == 0) return;
  check_rows(p.rows);
  ce_chunk_stats_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_ce_finish(const CeFinishParams& p) {
  if (p.rows == 0) return;
  ce_finish_kernel<<<grid_for(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_ce_chunk_grad(const CeChunkGradParams& p) {
  if (p.rows == 0) return;
  check_rows(p.rows);
  ce_chunk_grad_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace slearn::cuda
