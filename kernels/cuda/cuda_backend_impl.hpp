// The CUDA backend's class, shared by its four source files: cuda_backend.cpp (memory, the plain ops,
// training ops, device discovery), cuda_backend_step.cpp (the ops that read a step's host inputs: binding,
// dispatch of attention, sampling, recorded steps), cuda_backend_loss.cpp (the chunked cross-entropy) and
// cuda_backend_train.cpp (the training state: write, zero, the bf16 compute copy, the flat check, AdamW and
// the gradient sum).
//
// Device tensors are bf16 (fp32 from zeros_f32); every kernel accumulates in fp32. Shapes are checked as the
// CPU backend checks them. All work is queued on the context's stream (device_memory.hpp); nothing here
// synchronises except to_host, write, check_flat, sample and cross_entropy's per-chunk loss copies. Not
// thread-safe (one backend per thread, as for the CPU backend's callers).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_kernels.hpp"
#include "cuda/device_memory.hpp"
#include "cuda/gemm.hpp"
#include "cuda/step_graphs.hpp"
#include "slearn/backend.hpp"

namespace slearn::cuda_backend {

using cuda::bf16;

void expect(bool condition, const Tensor& tensor, const std::string& what);
inline std::int64_t rows_of(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
inline std::int64_t row_size(const Tensor& t) { return t.numel() / std::max<std::int64_t>(rows_of(t), 1); }
const bf16* dev(const Tensor& t);
bf16* dev(Tensor& t);
const float* dev_f32(const Tensor& t);
float* dev_f32(Tensor& t);
std::int32_t index32(std::int64_t value);
// Throws slearn::Error naming `what` for a position outside a RoPE table of `limit` positions.
void check_positions(const char* what, std::span<const std::int32_t> positions, std::int64_t limit);
template <class T>
T* at(void* base, std::size_t offset) { return reinterpret_cast<T*>(static_cast<char*>(base) + offset); }

// The host inputs of the bound step (Backend::bind_step), their copies to recognise them by, and where each
// array lives in the step's device buffer.
struct BoundStep {
  bool valid = false;
  std::vector<TokenId> ids;
  std::vector<std::int32_t> slots, positions;
  std::vector<std::int64_t> rows;
  std::int64_t cache_slots = 0, cache_capacity = 0;
  std::size_t ids_at = 0, slots_at = 0, positions_at = 0, key_row0_at = 0, context_at = 0, rows_at = 0;
  std::size_t decode_context_at = 0, prefill_tiles_at = 0;  // attention's per-row dispatch
  std::int64_t prefill_tile_count = 0, decode_first = 0, decode_rows = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  Tensor zeros(std::vector<std::int64_t> shape, std::string name) override;
  Tensor zeros_f32(std::vector<std::int64_t> shape, std::string name) override;
  Tensor upload(Tensor host) override;
  void to_host(const Tensor& tensor, std::span<float> out) override;
  void fill_random(Tensor& t, std::uint64_t key, float scale) override;
  std::size_t free_memory_bytes() override;

  void embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& out) override;
  void rope(Tensor& x, const TokenLayout& layout, const Tensor& cos, const Tensor& sin) override;
  void kv_store(const Tensor& k, const Tensor& v, const TokenLayout& layout, Tensor& k_cache,
                Tensor& v_cache) override;
  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const TokenLayout& layout,
                 float scale, Tensor& out) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add_inplace(Tensor& x, const Tensor& y) override;
  void gather_rows(const Tensor& x, std::span<const std::int64_t> rows, Tensor& out) override;

  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& weight, float eps, Tensor& out) override;
  void rope_split_qkv(const Tensor& qkv, const TokenLayout& layout, const Tensor& cos, const Tensor& sin, Tensor& q,
                      Tensor& k, Tensor& v) override;
  void swiglu_fused(const Tensor& gate_up, Tensor& out) override;
  void sample(const Tensor& logits, const SamplingOptions& options, std::span<const std::uint64_t> streams,
              std::span<const std::uint64_t> steps, std::span<TokenId> out) override;
  void bind_step(const StepInputs& inputs) override;
  void run_recorded(std::uint64_t key, const std::function<void()>& ops) override;

  void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, float alpha, float beta,
              Tensor& c) override;
  void scale(Tensor& x, float factor) override;
  void dropout(const Tensor& x, float p, const DropoutMask& mask, Tensor& out) override;
  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, float eps, Tensor& dx) override;
  void rope_backward(Tensor& grad, std::span<const std::int32_t> positions, const Tensor& cos,
                     const Tensor& sin) override;
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup) override;
  void attention_train(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const std::int64_t> seq_starts,
                       float scale_factor, Tensor& out, Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, std::span<const std::int64_t> seq_starts, float scale_factor,
                          Tensor& dq, Tensor& dk, Tensor& dv) override;
  void write(Tensor& t, std::span<const float> values) override;
  void zero(Tensor& t) override;
  Tensor compute_copy(const Tensor& master, std::string name) override;
  void refresh_compute_copy(const Tensor& master, Tensor& copy) override;
  FlatCheck check_flat(const Tensor& flat, std::span<const std::int64_t> segment_ends) override;
  void adamw_update(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamWScalars& s) override;
  std::unique_ptr<GradientSum> make_gradient_sum(Communicator& comm, std::int64_t elements,
                                                 const GradientSumOptions& options) override;
  std::unique_ptr<GroupSum> make_group_sum(Communicator& group, double timeout_seconds) override;
  CrossEntropyResult cross_entropy(const Tensor& hidden, const Tensor& lm_head, std::span<const std::int32_t> targets,
                                   float grad_scale, Tensor* dhidden) override;

 private:
  Tensor allocate(std::vector<std::int64_t> shape, std::string name, DType dtype);
  // Copies what `pack` holds to the staging device buffer (reused by the next op: stream-ordered) and
  // returns that buffer's address.
  void* stage(const cuda::HostPack& pack);
  void rotate(const char* what, Tensor& x, std::span<const std::int32_t> positions, const Tensor& cos,
              const Tensor& sin, bool inverse);
  // The bound step's device arrays when `layout` is the bound layout (same contents), else nullptr.
  void* bound_layout(const TokenLayout& layout) const;
  static void check_train_shapes(const Tensor& q, const Tensor& k, const Tensor& v);

  std::shared_ptr<cuda::DeviceContext> context_;
  cudaStream_t stream_ = nullptr;
  cuda::Gemm gemm_;
  cuda::PinnedStaging staging_;
  cuda::DeviceBuffer staged_, scratch_, ce_scratch_, step_buffer_, attention_scratch_, sample_scratch_;
  BoundStep bound_;
  cuda::StepGraphs graphs_;
  TokenId* chosen_host_ = nullptr;  // pinned: the sampled ids of a step come back here
  std::size_t chosen_capacity_ = 0;
  // check_flat's per-block partials and its result on the device, and the pinned host copy of the result
  // (freed after the destructor's stream synchronisation, which no copy into it can outlast).
  struct PinnedFree {
    void operator()(void* p) const { cudaFreeHost(p); }
  };
  cuda::DeviceBuffer check_scratch_;
  std::unique_ptr<void, PinnedFree> check_result_host_;
};

}  // namespace slearn::cuda_backend
