// What the GPU benchmarks (bench_gpu_decode, bench_gpu_ops) share with each other and, by construction, with
// their Python peer (perf/gpu/peer_gpu.py): the bytes a decode step has to read, the median, and the JSON line
// every measurement ends as. The peer repeats the shapes (slearn::reference_shape) and the byte count in
// Python; perf/gpu/report.py pairs the lines of both by their "case" string, so the two must name a case the
// same way (the functions below and their Python twins).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "slearn/error.hpp"
#include "slearn/model_config.hpp"

namespace slearn::perf {

// Bytes of bf16 weights one decode step reads: every projection, bias and norm of every layer, the final norm
// and the LM head ([vocab, hidden], the embedding table itself when tied). The embedding lookup reads one row
// per token, which is left out (hidden * 2 bytes).
inline double decode_weight_bytes(const ModelConfig& c) {
  const double h = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double per_layer = (q + 2 * kv) * h + (c.attention_bias ? q + 2 * kv : 0) + h * q + 3 * h * i + 2 * h;
  return 2.0 * (static_cast<double>(c.num_hidden_layers) * per_layer + h + static_cast<double>(c.vocab_size) * h);
}

// Bytes of bf16 keys and values a decode step reads for one sequence that attends to `context` positions.
inline double kv_read_bytes(const ModelConfig& c, double context) {
  return 2.0 * 2.0 * static_cast<double>(c.num_hidden_layers * c.num_key_value_heads * c.head_dim) * context;
}

// The mean context of the decode steps after a prefill of `prompt_len` that go on to `new_tokens` tokens: step
// j (1 .. new_tokens - 1; token 0 comes with the prefill) attends to prompt_len + j positions.
inline double mean_decode_context(std::int64_t prompt_len, std::int64_t new_tokens) {
  return static_cast<double>(prompt_len) + static_cast<double>(new_tokens) / 2.0;
}

inline std::string decode_case(std::string_view shape, std::int64_t batch, std::int64_t prompt_len,
                               std::int64_t new_tokens) {
  return std::string(batch == 1 ? "decode " : "generate ") + std::string(shape) + " b=" + std::to_string(batch) +
         " in=" + std::to_string(prompt_len) + " out=" + std::to_string(new_tokens);
}
inline std::string gemm_case(std::int64_t m, std::int64_t n, std::int64_t k) {
  return "gemm m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k);
}
inline std::string attention_case(std::int64_t seq, std::int64_t heads, std::int64_t kv_heads,
                                  std::int64_t head_dim) {
  return "attention seq=" + std::to_string(seq) + " heads=" + std::to_string(heads) + "/" +
         std::to_string(kv_heads) + " d=" + std::to_string(head_dim);
}
inline std::string copy_case(std::int64_t bytes) { return "copy " + std::to_string(bytes >> 20) + " MiB"; }

// Causal self-attention of `seq` rows: query row r scores and mixes r + 1 keys, 2 flops per multiply-add in
// both q k^T and p v, so 4 * heads * head_dim * seq (seq + 1) / 2 (the FlashAttention papers' count for a
// causal mask, which SDPA's figure in the peer uses too).
inline double causal_attention_flops(std::int64_t seq, std::int64_t heads, std::int64_t head_dim) {
  return 4.0 * static_cast<double>(heads * head_dim) * static_cast<double>(seq) * static_cast<double>(seq + 1) /
         2.0;
}

inline double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Splits "a,b,c" (empty items dropped).
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  for (const char ch : text + ",") {
    if (ch == ',') {
      if (!item.empty()) items.push_back(item);
      item.clear();
    } else {
      item += ch;
    }
  }
  return items;
}

}  // namespace slearn::perf
