// The CUDA backend's chunked cross-entropy (cross_entropy.cu has the kernels' design).
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_backend_impl.hpp"
#include "cuda/cuda_check.hpp"
#include "slearn/error.hpp"
#include "util/trace.hpp"

namespace slearn::cuda_backend {
namespace {

// Cross-entropy chunking: rows x vocabulary columns of fp32 logits per GEMM (32 MiB at most).
constexpr std::int64_t kCeRows = 512;
constexpr std::int64_t kCeColumns = 16384;

}  // namespace

// Walks the counted rows kCeRows at a time and the vocabulary kCeColumns at a time (cross_entropy.cu has the
// design). Per-row losses come back to the host and are summed in row order, as the CPU backend sums them.
Backend::CrossEntropyResult CudaBackend::cross_entropy(const Tensor& hidden, const Tensor& lm_head,
                                                       std::span<const std::int32_t> targets, float grad_scale,
                                                       Tensor* dhidden) {
  const TraceRange trace("cross_entropy");
  const std::int64_t tokens = rows_of(hidden), width = row_size(hidden), vocab = lm_head.dim(0);
  expect(tokens == static_cast<std::int64_t>(targets.size()) && lm_head.rank() == 2 && width == lm_head.dim(1),
         hidden, "cross_entropy: hidden rows must match the targets and the head's width");
  if (dhidden != nullptr) expect(dhidden->numel() == hidden.numel(), *dhidden, "dhidden must match hidden");
  std::vector<std::int32_t> rows, row_targets;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    if (target >= vocab)
      throw Error("cross_entropy: target " + std::to_string(target) + " of row " + std::to_string(t) +
                  " is outside the vocabulary of " + std::to_string(vocab));
    if (target >= 0) {
      rows.push_back(index32(t));
      row_targets.push_back(target);
    }
  }
  if (dhidden != nullptr) CUDA_CHECK(cudaMemsetAsync(dev(*dhidden), 0, dhidden->bytes(), stream_));
  const auto counted = static_cast<std::int64_t>(rows.size());
  if (counted == 0) return {};

  cuda::HostPack pack;
  const std::size_t rows_at = pack.add(rows), targets_at = pack.add(row_targets);
  void* staged = stage(pack);
  const std::int64_t chunk_rows = std::min(kCeRows, counted), chunk_cols = std::min(kCeColumns, vocab);
  // One scratch block, carved into 256-byte aligned pieces.
  std::size_t used = 0;
  const auto carve = [&](std::size_t bytes) {
    const std::size_t offset = used;
    used += (bytes + 255) / 256 * 256;
    return offset;
  };
  const auto r = static_cast<std::size_t>(chunk_rows);
  const std::size_t logits_at = carve(r * static_cast<std::size_t>(chunk_cols) * sizeof(float));
  const std::size_t grad_at = carve(dhidden ? r * static_cast<std::size_t>(chunk_cols) * sizeof(bf16) : 0);
  const std::size_t gathered_at = carve(r * static_cast<std::size_t>(width) * sizeof(bf16));
  const std::size_t dgathered_at = carve(dhidden ? r * static_cast<std::size_t>(width) * sizeof(float) : 0);
  const std::size_t max_at = carve(r * sizeof(float)), target_logit_at = carve(r * sizeof(float));
  const std::size_t sum_at = carve(r * sizeof(double)), lse_at = carve(r * sizeof(double));
  const std::size_t loss_at = carve(r * sizeof(double));
  void* base = ce_scratch_.get(context_, used, "cross_entropy scratch");
  auto* logits = at<float>(base, logits_at);
  auto* grad = at<bf16>(base, grad_at);
  auto* gathered = at<bf16>(base, gathered_at);
  auto* dgathered = at<float>(base, dgathered_at);
  auto* running_max = at<float>(base, max_at);
  auto* target_logit = at<float>(base, target_logit_at);
  auto* running_sum = at<double>(base, sum_at);
  auto* lse = at<double>(base, lse_at);
  auto* loss = at<double>(base, loss_at);
  const bf16* head = dev(lm_head);

  std::vector<double> row_loss(rows.size());
  const std::vector<float> minus_inf(r, -INFINITY);
  for (std::int64_t first = 0; first < counted; first += chunk_rows) {
    const std::int64_t n = std::min(chunk_rows, counted - first);
    const std::int32_t* chunk_index = at<std::int32_t>(staged, rows_at) + first;
    const std::int32_t* chunk_targets = at<std::int32_t>(staged, targets_at) + first;
    cuda::launch_gather_rows({dev(hidden), chunk_index, gathered, n, width, stream_});
    staging_.copy_to_device(running_max, minus_inf.data(), static_cast<std::size_t>(n) * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(running_sum, 0, static_cast<std::size_t>(n) * sizeof(double), stream_));
    const auto logits_of = [&](std::int64_t v0, std::int64_t columns) {
      gemm_.run({gathered, false, width, head + v0 * width, true, width, logits, cuda::GemmOut::F32, columns, nullptr,
                 n, columns, width, 1.0f, 0.0f, stream_});
    };
    for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk_cols) {
      const std::int64_t columns = std::min(chunk_cols, vocab - v0);
      logits_of(v0, columns);
      cuda::launch_ce_chunk_stats({logits, chunk_targets, running_max, running_sum, target_logit, n, columns, v0,
                                   stream_});
    }
    cuda::launch_ce_finish({running_max, running_sum, target_logit, lse, loss, n, stream_});
    if (dhidden != nullptr) {
      for (std::int64_t v0 = 0; v0 < vocab; v0 += chunk_cols) {
        const std::int64_t columns = std::min(chunk_cols, vocab - v0);
        logits_of(v0, columns);
        cuda::launch_ce_chunk_grad({logits, chunk_targets, lse, grad, n, columns, v0, grad_scale, stream_});
        gemm_.run({grad, false, columns, head + v0 * width, false, width, dgathered, cuda::GemmOut::F32, width,
                   nullptr, n, width, columns, 1.0f, v0 == 0 ? 0.0f : 1.0f, stream_});
      }
      cuda::launch_scatter_rows_f32({dgathered, chunk_index, dev(*dhidden), n, width, stream_});
    }
    // Synchronous: the scratch and the staged row indices are reused by the next chunk and the next op.
    CUDA_CHECK(cudaMemcpyAsync(row_loss.data() + first, loss, static_cast<std::size_t>(n) * sizeof(double),
                               cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  double total = 0.0;
  for (const double l : row_loss) total += l;
  return {total, counted};
}

}  // namespace slearn::cuda_backend
