// The CUDA backend's ops that read a step's host inputs (token ids, the token layout, rows to gather), the
// binding of those inputs, recorded steps and sampling.
//
// bind_step validates a forward's inputs once and uploads them, with the arrays derived from them (each
// token's key range in the cache), in one copy into the step buffer. An op given the bound inputs (the
// same contents) reads that buffer: a forward of a 28-layer model copies its indices once, not ~100
// times, and a recorded step (a CUDA graph) replays with whatever was bound last, because the step buffer's
// address is part of its key and the copy into it is queued before the graph's launch. An op given other
// inputs validates and stages them itself, as before (tests call ops one by one).
//
// Attention is dispatched per row, by the row's own chunk and never by what else is in the step, so a
// sequence's result does not depend on its batch: a token alone in its chunk (a decode row) goes to the
// split-KV kernel (decode_attention.cu), the rows of a longer chunk (a prefill) to the tensor-core kernel
// (prefill_attention.cu). Head dims those lack (16, the test fixtures) run every row through the
// reference kernel (attention.cu). The decode launch covers the rows from the first decode row to the last,
// with context 0 (left untouched) for prefill rows among them, which the prefill launch writes.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_backend_impl.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/decode_attention.hpp"
#include "cuda/prefill_attention.hpp"
#include "cuda/sampling.hpp"
#include "slearn/error.hpp"
#include "util/trace.hpp"

namespace slearn::cuda_backend {
namespace {

void check_cache_layout(const TokenLayout& layout, std::int64_t slots, std::int64_t capacity) {
  if (layout.positions.size() != layout.slots.size()) throw Error("cuda backend: token layout sizes differ");
  for (std::size_t t = 0; t < layout.slots.size(); ++t)
    if (layout.slots[t] < 0 || layout.slots[t] >= slots || layout.positions[t] < 0 ||
        layout.positions[t] >= capacity)
      throw Error("kv cache: slot " + std::to_string(layout.slots[t]) + " position " +
                  std::to_string(layout.positions[t]) + " is outside the cache (" + std::to_string(slots) +
                  " slots x " + std::to_string(capacity) + " positions)");
}

void check_ids(std::span<const TokenId> ids, std::int64_t vocab) {
  for (const TokenId id : ids)
    if (id < 0 || id >= vocab)
      throw InputError("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                       ")");
}

// Each token's key range in the cache: rows slot * capacity .. + position.
void key_ranges(const TokenLayout& layout, std::int64_t capacity, std::vector<std::int64_t>& key_row0,
                std::vector<std::int32_t>& context) {
  key_row0.resize(layout.tokens());
  context.resize(layout.tokens());
  for (std::size_t t = 0; t < layout.tokens(); ++t) {
    key_row0[t] = static_cast<std::int64_t>(layout.slots[t]) * capacity;
    context[t] = layout.positions[t] + 1;
  }
}

// The per-row dispatch of attention (see the top of the file): the decode launch's contexts (position + 1 for
// a row alone in its chunk, 0 for prefill rows) and the prefill chunks' tiles. A chunk is a run of rows of
// one slot at consecutive positions.
// The decode launch covers only the rows from the first decode row to the last (the engine puts running
// sequences before newly admitted prompts, so that is just the decode rows): its scratch scales with them,
// not with a long prefill in the same step.
struct AttentionPlan {
  std::vector<std::int32_t> decode_context;
  std::int64_t decode_first = 0, decode_rows = 0;
  std::vector<cuda::PrefillTile> tiles;
};
AttentionPlan attention_plan(const TokenLayout& layout, std::int64_t slots, std::int64_t capacity) {
  AttentionPlan plan;
  const std::size_t n = layout.tokens();
  plan.decode_context.assign(n, 0);
  std::vector<cuda::PrefillChunk> chunks;
  for (std::size_t first = 0; first < n;) {
    std::size_t end = first + 1;
    while (end < n && layout.slots[end] == layout.slots[first] && layout.positions[end] == layout.positions[end - 1] + 1)
      ++end;
    if (end - first == 1) {
      plan.decode_context[first] = layout.positions[first] + 1;
      if (plan.decode_rows == 0) plan.decode_first = static_cast<std::int64_t>(first);
      plan.decode_rows = static_cast<std::int64_t>(first) + 1 - plan.decode_first;
    } else {
      chunks.push_back({static_cast<std::int64_t>(first), static_cast<std::int64_t>(end - first),
                        layout.positions[first], layout.slots[first]});
    }
    first = end;
  }
  plan.tiles = cuda::prefill_tiles(chunks, static_cast<std::int64_t>(n), slots, capacity);
  return plan;
}

std::uint64_t mix(std::uint64_t key, const void* address) {
  return mix64(key ^ (static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(address)) +
                             0x9e3779b97f4a7c15ull));
}

}  // namespace

void CudaBackend::bind_step(const StepInputs& inputs) {
  const TraceRange trace("bind_step");
  bound_.valid = false;
  if (inputs.layout == nullptr) throw Error("bind_step: no token layout");
  const TokenLayout& layout = *inputs.layout;
  if (inputs.ids.size() != layout.tokens())
    throw Error("bind_step: " + std::to_string(inputs.ids.size()) + " ids for " + std::to_string(layout.tokens()) +
                " tokens");
  check_ids(inputs.ids, inputs.vocab);
  check_cache_layout(layout, inputs.cache_slots, inputs.cache_capacity);
  std::vector<std::int32_t> rows(inputs.rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (inputs.rows[i] < 0 || inputs.rows[i] >= static_cast<std::int64_t>(layout.tokens()))
      throw Error("bind_step: row " + std::to_string(inputs.rows[i]) + " is not one of the step's tokens");
    rows[i] = index32(inputs.rows[i]);
  }
  std::vector<std::int64_t> key_row0;
  std::vector<std::int32_t> context;
  key_ranges(layout, inputs.cache_capacity, key_row0, context);

  cuda::HostPack pack;
  bound_.ids.assign(inputs.ids.begin(), inputs.ids.end());
  bound_.slots = layout.slots;
  bound_.positions = layout.positions;
  bound_.rows.assign(inputs.rows.begin(), inputs.rows.end());
  bound_.cache_slots = inputs.cache_slots;
  bound_.cache_capacity = inputs.cache_capacity;
  bound_.ids_at = pack.add(bound_.ids);
  bound_.slots_at = pack.add(layout.slots);
  bound_.positions_at = pack.add(layout.positions);
  bound_.key_row0_at = pack.add(key_row0);
  bound_.context_at = pack.add(context);
  bound_.rows_at = pack.add(rows);
  const AttentionPlan plan = attention_plan(layout, inputs.cache_slots, inputs.cache_capacity);
  bound_.decode_context_at = pack.add(plan.decode_context);
  bound_.prefill_tiles_at = pack.add(plan.tiles);
  bound_.prefill_tile_count = static_cast<std::int64_t>(plan.tiles.size());
  bound_.decode_first = plan.decode_first;
  bound_.decode_rows = plan.decode_rows;
  void* base = step_buffer_.get(context_, pack.size(), "step inputs");
  staging_.copy_to_device(base, pack.data(), pack.size());
  bound_.valid = true;
}

void* CudaBackend::bound_layout(const TokenLayout& layout) const {
  if (!bound_.valid || layout.slots != bound_.slots || layout.positions != bound_.positions) return nullptr;
  return const_cast<void*>(step_buffer_.address());
}

void CudaBackend::run_recorded(std::uint64_t key, const std::function<void()>& ops) {
  // The backend's own buffers that a step's kernels read or write belong to the key too.
  std::uint64_t full = mix(key, step_buffer_.address());
  full = mix(full, attention_scratch_.address());
  full = mix(full, scratch_.address());
  graphs_.run(full, stream_, ops);
}

void CudaBackend::embedding(const Tensor& table, std::span<const TokenId> ids, Tensor& out) {
  const TraceRange trace("embedding");
  expect(rows_of(out) == static_cast<std::int64_t>(ids.size()) && row_size(out) == table.dim(1), out,
         "embedding output must be [tokens, hidden]");
  const std::int32_t* index = nullptr;
  if (bound_.valid && ids.size() == bound_.ids.size() && std::equal(ids.begin(), ids.end(), bound_.ids.begin())) {
    index = at<const std::int32_t>(const_cast<void*>(step_buffer_.address()), bound_.ids_at);
  } else {
    check_ids(ids, table.dim(0));
    cuda::HostPack pack;
    const std::size_t offset = pack.add(ids.data(), ids.size());
    index = at<const std::int32_t>(stage(pack), offset);
  }
  cuda::launch_gather_rows({dev(table), index, dev(out), static_cast<std::int64_t>(ids.size()), table.dim(1), stream_});
}

void CudaBackend::rope(Tensor& x, const TokenLayout& layout, const Tensor& cos, const Tensor& sin) {
  const TraceRange trace("rope");
  expect(x.rank() == 3 && x.dim(0) == static_cast<std::int64_t>(layout.tokens()) && cos.dim(1) * 2 == x.dim(2), x,
         "rope input must be [tokens, heads, head_dim]");
  if (void* base = bound_layout(layout); base != nullptr && cos.dim(0) >= bound_.cache_capacity) {
    expect(sin.shape() == cos.shape(), sin, "rope tables differ in shape");
    cuda::launch_rope({dev(x), at<const std::int32_t>(base, bound_.positions_at), dev(cos), dev(sin), x.dim(0),
                       x.dim(1), x.dim(2), false, stream_});
    return;
  }
  rotate("rope", x, layout.positions, cos, sin, false);
}

void CudaBackend::rope_split_qkv(const Tensor& qkv, const TokenLayout& layout, const Tensor& cos, const Tensor& sin,
                                 Tensor& q, Tensor& k, Tensor& v) {
  const TraceRange trace("rope_split_qkv");
  const std::int64_t n = rows_of(qkv);
  expect(q.rank() == 3 && k.rank() == 3 && v.shape() == k.shape() && rows_of(q) == n && rows_of(k) == n &&
             q.dim(2) == k.dim(2) && row_size(qkv) == row_size(q) + 2 * row_size(k) &&
             n == static_cast<std::int64_t>(layout.tokens()) && cos.dim(1) * 2 == q.dim(2),
         qkv, "rope_split_qkv: the fused projection must be [tokens, q + k + v] of " + q.name() + " " +
                  q.shape_string() + " and " + k.name() + " " + k.shape_string());
  expect(sin.shape() == cos.shape(), sin, "rope tables differ in shape");
  const std::int32_t* positions = nullptr;
  if (void* base = bound_layout(layout); base != nullptr && cos.dim(0) >= bound_.cache_capacity) {
    positions = at<const std::int32_t>(base, bound_.positions_at);
  } else {
    check_positions("rope_split_qkv", layout.positions, cos.dim(0));
    cuda::HostPack pack;
    const std::size_t offset = pack.add(layout.positions);
    positions = at<const std::int32_t>(stage(pack), offset);
  }
  cuda::launch_rope_split_qkv({dev(qkv), dev(q), dev(k), dev(v), positions, dev(cos), dev(sin), n, q.dim(1),
                               k.dim(1), q.dim(2), stream_});
}

void CudaBackend::kv_store(const Tensor& k, const Tensor& v, const TokenLayout& layout, Tensor& k_cache,
                           Tensor& v_cache) {
  const TraceRange trace("kv_store");
  expect(k_cache.rank() == 4 && k.rank() == 3 && k.dim(1) == k_cache.dim(2) && k.dim(2) == k_cache.dim(3), k,
         "does not match the cache " + k_cache.shape_string());
  expect(v.shape() == k.shape() && v_cache.shape() == k_cache.shape(), v, "value and key shapes differ");
  expect(k.dim(0) == static_cast<std::int64_t>(layout.tokens()), k, "one row per token of the layout is needed");
  const std::int32_t *slots = nullptr, *positions = nullptr;
  void* base = bound_layout(layout);
  if (base != nullptr && bound_.cache_slots == k_cache.dim(0) && bound_.cache_capacity == k_cache.dim(1)) {
    slots = at<const std::int32_t>(base, bound_.slots_at);
    positions = at<const std::int32_t>(base, bound_.positions_at);
  } else {
    check_cache_layout(layout, k_cache.dim(0), k_cache.dim(1));
    cuda::HostPack pack;
    const std::size_t slots_at = pack.add(layout.slots), positions_at = pack.add(layout.positions);
    void* staged = stage(pack);
    slots = at<const std::int32_t>(staged, slots_at);
    positions = at<const std::int32_t>(staged, positions_at);
  }
  cuda::launch_kv_store({dev(k), dev(v), dev(k_cache), dev(v_cache), slots, positions, k.dim(0), k.dim(1) * k.dim(2),
                         k_cache.dim(1), stream_});
}

void CudaBackend::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const TokenLayout& layout,
                            float scale_factor, Tensor& out) {
  const TraceRange trace("attention");
  expect(q.rank() == 3 && k_cache.rank() == 4 && q.dim(2) == k_cache.dim(3) && q.dim(1) % k_cache.dim(2) == 0, q,
         "query heads do not match the cache " + k_cache.shape_string());
  expect(v_cache.shape() == k_cache.shape(), v_cache, "value and key caches differ");
  expect(out.numel() == q.numel(), out, "attention output must match the query");
  expect(q.dim(0) == static_cast<std::int64_t>(layout.tokens()), q, "one row per token of the layout is needed");
  const std::int64_t heads = q.dim(1), kv_heads = k_cache.dim(2), head_dim = q.dim(2);
  const std::int64_t slots = k_cache.dim(0), capacity = k_cache.dim(1);
  const std::int64_t *key_row0 = nullptr;
  const std::int32_t *context = nullptr, *decode_context = nullptr;
  const cuda::PrefillTile* tiles = nullptr;
  std::int64_t tile_count = 0, decode_first = 0, decode_rows = 0;
  void* base = bound_layout(layout);
  if (base != nullptr && bound_.cache_slots == slots && bound_.cache_capacity == capacity) {
    key_row0 = at<const std::int64_t>(base, bound_.key_row0_at);
    context = at<const std::int32_t>(base, bound_.context_at);
    decode_context = at<const std::int32_t>(base, bound_.decode_context_at);
    tiles = at<const cuda::PrefillTile>(base, bound_.prefill_tiles_at);
    tile_count = bound_.prefill_tile_count;
    decode_first = bound_.decode_first;
    decode_rows = bound_.decode_rows;
  } else {
    check_cache_layout(layout, slots, capacity);
    std::vector<std::int64_t> rows;
    std::vector<std::int32_t> contexts;
    key_ranges(layout, capacity, rows, contexts);
    const AttentionPlan plan = attention_plan(layout, slots, capacity);
    cuda::HostPack pack;
    const std::size_t rows_at = pack.add(rows), contexts_at = pack.add(contexts);
    const std::size_t decode_at = pack.add(plan.decode_context), tiles_at = pack.add(plan.tiles);
    void* staged = stage(pack);
    key_row0 = at<const std::int64_t>(staged, rows_at);
    context = at<const std::int32_t>(staged, contexts_at);
    decode_context = at<const std::int32_t>(staged, decode_at);
    tiles = at<const cuda::PrefillTile>(staged, tiles_at);
    tile_count = static_cast<std::int64_t>(plan.tiles.size());
    decode_first = plan.decode_first;
    decode_rows = plan.decode_rows;
  }
  if (!cuda::prefill_attention_supports(head_dim)) {  // the reference kernel for every row
    cuda::launch_attention_forward({dev(q), dev(k_cache), dev(v_cache), dev(out), nullptr, key_row0, context,
                                    q.dim(0), heads, kv_heads, head_dim, scale_factor, stream_});
    return;
  }
  if (decode_rows > 0) {
    auto* partial = static_cast<float*>(attention_scratch_.get(
        context_, cuda::decode_attention_scratch_bytes(decode_rows, heads, head_dim, capacity),
        "decode attention partials"));
    const std::int64_t row = decode_first * heads * head_dim;
    cuda::launch_decode_attention({dev(q) + row, dev(k_cache), dev(v_cache), dev(out) + row, key_row0 + decode_first,
                                   decode_context + decode_first, decode_rows, heads, kv_heads, head_dim, capacity,
                                   scale_factor, partial, stream_});
  }
  if (tile_count > 0)
    cuda::launch_prefill_attention({dev(q), dev(k_cache), dev(v_cache), dev(out), tiles, tile_count, heads, kv_heads,
                                    head_dim, capacity, scale_factor, stream_});
}

void CudaBackend::gather_rows(const Tensor& x, std::span<const std::int64_t> rows, Tensor& out) {
  const TraceRange trace("gather_rows");
  expect(rows_of(out) == static_cast<std::int64_t>(rows.size()) && row_size(out) == row_size(x), out,
         "gather output has the wrong shape");
  const std::int32_t* index = nullptr;
  if (bound_.valid && !rows.empty() && rows.size() == bound_.rows.size() &&
      std::equal(rows.begin(), rows.end(), bound_.rows.begin()) &&
      rows_of(x) == static_cast<std::int64_t>(bound_.ids.size())) {
    index = at<const std::int32_t>(const_cast<void*>(step_buffer_.address()), bound_.rows_at);
  } else {
    std::vector<std::int32_t> staged_rows(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      expect(rows[i] >= 0 && rows[i] < rows_of(x), x, "gather row out of range");
      staged_rows[i] = index32(rows[i]);
    }
    cuda::HostPack pack;
    const std::size_t offset = pack.add(staged_rows);
    index = at<const std::int32_t>(stage(pack), offset);
  }
  cuda::launch_gather_rows({dev(x), index, dev(out), static_cast<std::int64_t>(rows.size()), row_size(x), stream_});
}

void CudaBackend::sample(const Tensor& logits, const SamplingOptions& options, std::span<const std::uint64_t> streams,
                         std::span<const std::uint64_t> steps, std::span<TokenId> out) {
  const TraceRange trace("sample");
  check_sampling_options(options);
  const std::int64_t rows = rows_of(logits), vocab = row_size(logits);
  expect(static_cast<std::int64_t>(out.size()) == rows && streams.size() == out.size() && steps.size() == out.size(),
         logits, "sample: one stream, step and output per row is needed");
  if (rows == 0) return;
  cuda::HostPack pack;
  const std::size_t streams_at = pack.add(streams.data(), streams.size());
  const std::size_t steps_at = pack.add(steps.data(), steps.size());
  void* staged = stage(pack);
  // The kernel's scratch, then the chosen ids (16-byte aligned).
  const std::size_t scratch_bytes = (cuda::sample_rows_scratch_bytes(rows, vocab) + 15) / 16 * 16;
  void* scratch = sample_scratch_.get(context_, scratch_bytes + static_cast<std::size_t>(rows) * sizeof(TokenId),
                                      "sampling scratch");
  auto* chosen = at<std::int32_t>(scratch, scratch_bytes);
  cuda::launch_sample_rows({dev_f32(logits), rows, vocab, at<const std::uint64_t>(staged, streams_at),
                            at<const std::uint64_t>(staged, steps_at), options.seed, options.temperature,
                            options.top_k, options.top_p, scratch, chosen, stream_});
  if (chosen_capacity_ < out.size()) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (chosen_host_ != nullptr) CUDA_CHECK(cudaFreeHost(chosen_host_));
    chosen_host_ = nullptr;
    chosen_capacity_ = 0;
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&chosen_host_), out.size() * sizeof(TokenId)));
    chosen_capacity_ = out.size();
  }
  CUDA_CHECK(cudaMemcpyAsync(chosen_host_, chosen, out.size() * sizeof(TokenId), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::copy(chosen_host_, chosen_host_ + out.size(), out.begin());
  for (std::size_t r = 0; r < out.size(); ++r)
    if (out[r] < 0) throw Error("sample: row " + std::to_string(r) + " of " + logits.name() + " holds a NaN logit");
}

}  // namespace slearn::cuda_backend
