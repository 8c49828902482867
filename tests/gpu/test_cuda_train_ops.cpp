// The CUDA backend's training ops against the CPU backend on the same bf16-rounded inputs (see
// gpu_test_util.hpp for the tolerance): matmul in every transpose combination, dropout (the same mask,
// exactly), the backward of RMSNorm and SwiGLU, attention over packed sequences forward and backward, and
// the chunked cross-entropy. Every test skips, visibly, without a GPU.
#include <cblas.h>

#include "gpu_test_util.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

TEST(CudaTrainOps, MatmulEveryTransposeWithAlphaBeta) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // LoRA shapes: tokens 77, hidden 896, rank 16.
  const std::int64_t m = 77, k = 896, n = 16;
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const std::vector<std::int64_t> a_shape = ta ? std::vector<std::int64_t>{k, m} : std::vector<std::int64_t>{m, k};
      const std::vector<std::int64_t> b_shape = tb ? std::vector<std::int64_t>{n, k} : std::vector<std::int64_t>{k, n};
      const Pair a = both(*cuda, random_bf16(static_cast<std::size_t>(m * k), 1.0f, 20), a_shape, "a");
      const Pair b = both(*cuda, random_bf16(static_cast<std::size_t>(k * n), 0.1f, 21), b_shape, "b");
      Pair c = both(*cuda, random_bf16(static_cast<std::size_t>(m * n), 1.0f, 22), {m, n}, "c");
      cpu->matmul(a.cpu, ta, b.cpu, tb, 0.5f, 1.0f, c.cpu);
      cuda->matmul(a.cuda, ta, b.cuda, tb, 0.5f, 1.0f, c.cuda);
      expect_close(fetch(*cuda, c.cuda), fetch(*cpu, c.cpu),
                   std::string("matmul ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0"));
    }
  }
}

TEST(CudaTrainOps, DropoutDropsTheSameElementsAsTheCpu) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  const std::int64_t rows = 77, cols = 896;
  auto values = random_bf16(static_cast<std::size_t>(rows * cols), 1.0f, 23);
  for (auto& v : values) if (v == 0.0f) v = 0.5f;  // a zero output then means "dropped"
  const Pair x = both(*cuda, values, {rows, cols}, "x");
  Pair out = zeros(*cpu, *cuda, {rows, cols}, "dropped");
  const std::uint64_t key = 0x1234abcd5678ull;
  cpu->dropout(x.cpu, 0.1f, key, out.cpu);
  cuda->dropout(x.cuda, 0.1f, key, out.cuda);
  const auto got = fetch(*cuda, out.cuda), ref = fetch(*cpu, out.cpu);
  std::size_t mismatched = 0, dropped = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    mismatched += (got[i] == 0.0f) != (ref[i] == 0.0f);
    dropped += ref[i] == 0.0f;
  }
  EXPECT_EQ(mismatched, 0u) << "the CUDA mask must equal the CPU mask exactly";
  EXPECT_GT(dropped, ref.size() / 20);
  expect_close(got, ref, "dropout");
}

TEST(CudaTrainOps, RmsNormAndSwigluBackward) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  for (const std::int64_t hidden : {896, 3584}) {
    const std::int64_t rows = 77;
    const auto count = static_cast<std::size_t>(rows * hidden);
    const Pair x = both(*cuda, random_bf16(count, 2.0f, 24), {rows, hidden}, "x");
    const Pair w = both(*cuda, random_bf16(static_cast<std::size_t>(hidden), 1.5f, 25), {hidden}, "w");
    const Pair dy = both(*cuda, random_bf16(count, 1.0f, 26), {rows, hidden}, "dy");
    Pair dx = zeros(*cpu, *cuda, {rows, hidden}, "dx");
    cpu->rms_norm_backward(x.cpu, w.cpu, dy.cpu, 1e-6f, dx.cpu);
    cuda->rms_norm_backward(x.cuda, w.cuda, dy.cuda, 1e-6f, dx.cuda);
    expect_close(fetch(*cuda, dx.cuda), fetch(*cpu, dx.cpu), "rms_norm_backward hidden " + std::to_string(hidden));
  }
  const std::int64_t rows = 77, inter = 4864;
  const auto count = static_cast<std::size_t>(rows * inter);
  const Pair gate = both(*cuda, random_bf16(count, 6.0f, 27), {rows, inter}, "gate");
  const Pair up = both(*cuda, random_bf16(count, 2.0f, 28), {rows, inter}, "up");
  const Pair dout = both(*cuda, random_bf16(count, 1.0f, 29), {rows, inter}, "dout");
  Pair dgate = zeros(*cpu, *cuda, {rows, inter}, "dgate"), dup = zeros(*cpu, *cuda, {rows, inter}, "dup");
  cpu->swiglu_backward(gate.cpu, up.cpu, dout.cpu, dgate.cpu, dup.cpu);
  cuda->swiglu_backward(gate.cuda, up.cuda, dout.cuda, dgate.cuda, dup.cuda);
  expect_close(fetch(*cuda, dgate.cuda), fetch(*cpu, dgate.cpu), "swiglu_backward dgate");
  expect_close(fetch(*cuda, dup.cuda), fetch(*cpu, dup.cpu), "swiglu_backward dup");
}

struct AttnShape {
  const char* name;
  std::int64_t heads, kv_heads, head_dim;
};

TEST(CudaTrainOps, AttentionTrainForwardAndBackward) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // Three packed sequences of 37, 70 and 5 rows: tiles cross sequence starts and end ragged.
  const std::vector<std::int64_t> seq_starts = {0, 37, 107, 112};
  const std::int64_t tokens = seq_starts.back();
  for (const AttnShape s : {AttnShape{"qwen2_0_5b", 14, 2, 64}, AttnShape{"qwen2_7b", 28, 4, 128},
                            AttnShape{"fixture", 4, 2, 16}}) {
    const std::int64_t q_count = tokens * s.heads * s.head_dim, kv_count = tokens * s.kv_heads * s.head_dim;
    const std::vector<std::int64_t> q_shape = {tokens, s.heads, s.head_dim}, kv_shape = {tokens, s.kv_heads, s.head_dim};
    const Pair q = both(*cuda, random_bf16(static_cast<std::size_t>(q_count), 1.0f, 30), q_shape, "q");
    const Pair k = both(*cuda, random_bf16(static_cast<std::size_t>(kv_count), 1.0f, 31), kv_shape, "k");
    const Pair v = both(*cuda, random_bf16(static_cast<std::size_t>(kv_count), 1.0f, 32), kv_shape, "v");
    const float scale = 2.0f / std::sqrt(static_cast<float>(s.head_dim));
    Pair out = zeros(*cpu, *cuda, q_shape, "attn");
    Pair lse = zeros(*cpu, *cuda, {tokens, s.heads}, "layers.0.lse");
    ASSERT_EQ(lse.cuda.dtype(), DType::F32) << "the log-sum-exp must be kept in fp32";
    cpu->attention_train(q.cpu, k.cpu, v.cpu, seq_starts, scale, out.cpu, lse.cpu);
    cuda->attention_train(q.cuda, k.cuda, v.cuda, seq_starts, scale, out.cuda, lse.cuda);
    const auto cuda_out = fetch(*cuda, out.cuda), cuda_lse = fetch(*cuda, lse.cuda);
    expect_close(cuda_out, fetch(*cpu, out.cpu), std::string("attention_train out ") + s.name);
    // lse is stored in fp32 by both: only summation order and exp differ (~1e-6 relative).
    const auto cpu_lse = fetch(*cpu, lse.cpu);
    for (std::size_t i = 0; i < cpu_lse.size(); ++i)
      ASSERT_NEAR(cuda_lse[i], cpu_lse[i], 1e-4 * (1.0 + std::abs(cpu_lse[i]))) << s.name << " lse " << i;

    // The backward of both backends from identical inputs: the CUDA forward's (bf16) output and lse.
    const Pair dout = both(*cuda, random_bf16(static_cast<std::size_t>(q_count), 1.0f, 33), q_shape, "dout");
    const Tensor out_ref = host_tensor(cuda_out, q_shape, "attn"), lse_ref = host_tensor(cuda_lse, {tokens, s.heads}, "lse");
    Pair dq = zeros(*cpu, *cuda, q_shape, "dq"), dk = zeros(*cpu, *cuda, kv_shape, "dk"), dv = zeros(*cpu, *cuda, kv_shape, "dv");
    cpu->attention_backward(q.cpu, k.cpu, v.cpu, out_ref, lse_ref, dout.cpu, seq_starts, scale, dq.cpu, dk.cpu, dv.cpu);
    cuda->attention_backward(q.cuda, k.cuda, v.cuda, out.cuda, lse.cuda, dout.cuda, seq_starts, scale, dq.cuda, dk.cuda,
                             dv.cuda);
    expect_close(fetch(*cuda, dq.cuda), fetch(*cpu, dq.cpu), std::string("attention_backward dq ") + s.name);
    expect_close(fetch(*cuda, dk.cuda), fetch(*cpu, dk.cpu), std::string("attention_backward dk ") + s.name);
    expect_close(fetch(*cuda, dv.cuda), fetch(*cpu, dv.cpu), std::string("attention_backward dv ") + s.name);

    // Deterministic: a second backward gives the same bits.
    const auto first_dk = fetch(*cuda, dk.cuda);
    cuda->attention_backward(q.cuda, k.cuda, v.cuda, out.cuda, lse.cuda, dout.cuda, seq_starts, scale, dq.cuda, dk.cuda,
                             dv.cuda);
    EXPECT_EQ(fetch(*cuda, dk.cuda), first_dk) << s.name;
  }
}

TEST(CudaTrainOps, CrossEntropyLossAndGradient) {
  SLEARN_REQUIRE_GPU(cuda);
  auto cpu = make_cpu_backend();
  // A vocabulary that is no multiple of the CUDA backend's 16384-column chunks, 77 rows of which some are
  // skipped (-100), hidden 896.
  const std::int64_t tokens = 77, hidden = 896, vocab = 50001;
  const Pair h = both(*cuda, random_bf16(static_cast<std::size_t>(tokens * hidden), 1.0f, 34), {tokens, hidden}, "norm");
  const auto head_values = random_bf16(static_cast<std::size_t>(vocab * hidden), 0.1f, 35);
  const Pair head = both(*cuda, head_values, {vocab, hidden}, "lm_head");
  std::vector<std::int32_t> targets(static_cast<std::size_t>(tokens));
  std::mt19937 rng(36);
  for (auto& t : targets) t = static_cast<std::int32_t>(rng() % vocab);
  targets[3] = targets[10] = targets[40] = -100;
  targets[5] = 0;
  targets[6] = static_cast<std::int32_t>(vocab - 1);
  const float grad_scale = 1.0f / 74.0f;
  Pair dh = zeros(*cpu, *cuda, {tokens, hidden}, "d_norm");
  const auto ref = cpu->cross_entropy(h.cpu, head.cpu, targets, grad_scale, &dh.cpu);
  const auto got = cuda->cross_entropy(h.cuda, head.cuda, targets, grad_scale, &dh.cuda);
  EXPECT_EQ(got.counted, ref.counted);
  // The logits are fp32 sums of the same bf16 products in both: the loss differs by summation order only.
  EXPECT_NEAR(got.loss_sum, ref.loss_sum, 1e-5 * std::abs(ref.loss_sum)) << "loss";
  const auto forward_only = cuda->cross_entropy(h.cuda, head.cuda, targets, grad_scale, nullptr);
  EXPECT_EQ(forward_only.loss_sum, got.loss_sum);

  // The CUDA path rounds G = grad_scale (softmax - onehot) to bf16 before dhidden = G W, which adds up to
  // u sum_c |G_rc| |W_cj| to element (r, j): computed here from the CPU's fp32 G.
  const std::vector<float> hv = fetch(*cpu, h.cpu);
  std::vector<float> logits(static_cast<std::size_t>(tokens * vocab));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(vocab),
              static_cast<int>(hidden), 1.0f, hv.data(), static_cast<int>(hidden), head_values.data(),
              static_cast<int>(hidden), 0.0f, logits.data(), static_cast<int>(vocab));
  std::vector<float> abs_w(head_values.size());
  for (std::size_t i = 0; i < abs_w.size(); ++i) abs_w[i] = std::abs(head_values[i]);
  for (std::int64_t r = 0; r < tokens; ++r) {
    float* row = logits.data() + r * vocab;
    const std::int32_t target = targets[static_cast<std::size_t>(r)];
    if (target < 0) {
      std::fill_n(row, vocab, 0.0f);
      continue;
    }
    const float mx = *std::max_element(row, row + vocab);
    double total = 0;
    for (std::int64_t c = 0; c < vocab; ++c) total += std::exp(static_cast<double>(row[c] - mx));
    for (std::int64_t c = 0; c < vocab; ++c) {
      const double g = grad_scale * (std::exp(static_cast<double>(row[c] - mx)) / total - (c == target ? 1.0 : 0.0));
      row[c] = static_cast<float>(std::abs(g));
    }
  }
  std::vector<float> bound(static_cast<std::size_t>(tokens * hidden));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(tokens), static_cast<int>(hidden),
              static_cast<int>(vocab), 1.0f, logits.data(), static_cast<int>(vocab), abs_w.data(),
              static_cast<int>(hidden), 0.0f, bound.data(), static_cast<int>(hidden));
  std::vector<double> extra(bound.size());
  for (std::size_t i = 0; i < bound.size(); ++i) extra[i] = kBf16Unit * bound[i];
  const auto dh_got = fetch(*cuda, dh.cuda);
  expect_close(dh_got, fetch(*cpu, dh.cpu), "cross_entropy dhidden", extra);
  for (const std::int64_t skipped : {3, 10, 40})
    for (std::int64_t j = 0; j < hidden; ++j) ASSERT_EQ(dh_got[static_cast<std::size_t>(skipped * hidden + j)], 0.0f);
}

}  // namespace
}  // namespace slearn
