// The CUDA backend's training ops against the CPU backend on the same bf16-rounded inputs (see
// gpu_test_util.hpp for the per-element tolerance): matmul in every transpose combination, dropout (the same
// mask, exactly), the backward of RMSNorm and SwiGLU, attention over packed sequences forward and backward
// for GQA groups 1 to 16 at head dims 16, 64 and 128 (the forward on tensor cores at 64 and 128:
// prefill_attention.cu, longer sequences in test_cuda_attention_train.cpp; the backward's tiled kernels:
// attention_backward.cu) with bit-identical reruns, and the chunked cross-entropy with a ragged vocabulary
// chunk and more than one row chunk. Every test skips, visibly, without a GPU.
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
      const auto av = random_bf16(static_cast<std::size_t>(m * k), 1.0f, 20);
      const auto bv = random_bf16(static_cast<std::size_t>(k * n), 0.1f, 21);
      const auto cv = random_bf16(static_cast<std::size_t>(m * n), 1.0f, 22);
      const Pair a = both(*cuda, av, a_shape, "a"), b = both(*cuda, bv, b_shape, "b");
      Pair c = both(*cuda, cv, {m, n}, "c");
      cpu->matmul(a.cpu, ta, b.cpu, tb, 0.5f, 1.0f, c.cpu);
      cuda->matmul(a.cuda, ta, b.cuda, tb, 0.5f, 1.0f, c.cuda);
      expect_within(fetch(*cuda, c.cuda), fetch(*cpu, c.cpu),
                    std::string("matmul ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0"),
                    Tolerance{abs_product_sums(av, ta, bv, tb, m, n, k, 0.5, cv, 1.0), k + 1, {}, true});
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
    const auto xv = random_bf16(count, 2.0f, 24), wv = random_bf16(static_cast<std::size_t>(hidden), 1.5f, 25);
    const auto dyv = random_bf16(count, 1.0f, 26);
    const Pair x = both(*cuda, xv, {rows, hidden}, "x"), w = both(*cuda, wv, {hidden}, "w");
    const Pair dy = both(*cuda, dyv, {rows, hidden}, "dy");
    Pair dx = zeros(*cpu, *cuda, {rows, hidden}, "dx");
    cpu->rms_norm_backward(x.cpu, w.cpu, dy.cpu, 1e-6f, dx.cpu);
    cuda->rms_norm_backward(x.cuda, w.cuda, dy.cuda, 1e-6f, dx.cuda);
    // dx_i = r w_i dy_i - x_i r^3 / n sum_j w_j dy_j x_j: S_i = r |w_i dy_i| + |x_i| r^3 / n sum_j |w_j dy_j x_j|
    // (the two terms cancel in places), K = hidden.
    std::vector<double> sums(count);
    for (std::int64_t r = 0; r < rows; ++r) {
      double squares = 0, products = 0;
      for (std::int64_t j = 0; j < hidden; ++j) {
        const auto at = static_cast<std::size_t>(r * hidden + j);
        squares += static_cast<double>(xv[at]) * xv[at];
        products += std::abs(static_cast<double>(wv[static_cast<std::size_t>(j)]) * dyv[at] * xv[at]);
      }
      const double inv_rms = 1.0 / std::sqrt(squares / static_cast<double>(hidden) + 1e-6);
      for (std::int64_t j = 0; j < hidden; ++j) {
        const auto at = static_cast<std::size_t>(r * hidden + j);
        sums[at] = inv_rms * std::abs(static_cast<double>(wv[static_cast<std::size_t>(j)]) * dyv[at]) +
                   std::abs(xv[at]) * inv_rms * inv_rms * inv_rms / static_cast<double>(hidden) * products;
      }
    }
    expect_within(fetch(*cuda, dx.cuda), fetch(*cpu, dx.cpu), "rms_norm_backward hidden " + std::to_string(hidden),
                  Tolerance{std::move(sums), hidden, {}, true});
  }
  const std::int64_t rows = 77, inter = 4864;
  const auto count = static_cast<std::size_t>(rows * inter);
  const auto gv = random_bf16(count, 6.0f, 27), uv = random_bf16(count, 2.0f, 28), dv = random_bf16(count, 1.0f, 29);
  const Pair gate = both(*cuda, gv, {rows, inter}, "gate"), up = both(*cuda, uv, {rows, inter}, "up");
  const Pair dout = both(*cuda, dv, {rows, inter}, "dout");
  Pair dgate = zeros(*cpu, *cuda, {rows, inter}, "dgate"), dup = zeros(*cpu, *cuda, {rows, inter}, "dup");
  cpu->swiglu_backward(gate.cpu, up.cpu, dout.cpu, dgate.cpu, dup.cpu);
  cuda->swiglu_backward(gate.cuda, up.cuda, dout.cuda, dgate.cuda, dup.cuda);
  // dgate = dout up s (1 + g (1 - s)), s = sigmoid(g): zero near g = -1.28, where the two terms cancel, so S
  // is the size of the terms, times (1 + |g|) for exp's relative error of its argument's size.
  std::vector<double> sums(count);
  for (std::size_t i = 0; i < count; ++i) {
    const double g = gv[i], s = 1.0 / (1.0 + std::exp(-g));
    sums[i] = std::abs(static_cast<double>(dv[i]) * uv[i]) * s * (1.0 + std::abs(g) * (1.0 - s)) * (1.0 + std::abs(g));
  }
  expect_within(fetch(*cuda, dgate.cuda), fetch(*cpu, dgate.cpu), "swiglu_backward dgate",
                Tolerance{std::move(sums), 4, {}, true});
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
  const AttnShape shapes[] = {{"qwen2_0_5b group 7", 14, 2, 64}, {"qwen2_7b group 7", 28, 4, 128},
                              {"fixture group 2", 4, 2, 16},     {"group 1 d128", 4, 4, 128},
                              {"group 2 d64", 4, 2, 64},          {"group 8 d64", 16, 2, 64},
                              {"group 8 d128", 8, 1, 128},        {"group 16 d64", 16, 1, 64},
                              // the largest group at the largest head dim
                              {"group 16 d128", 32, 2, 128}};
  for (const AttnShape s : shapes) {
    const std::int64_t q_count = tokens * s.heads * s.head_dim, kv_count = tokens * s.kv_heads * s.head_dim;
    const std::vector<std::int64_t> q_shape = {tokens, s.heads, s.head_dim}, kv_shape = {tokens, s.kv_heads, s.head_dim};
    const auto qv = random_bf16(static_cast<std::size_t>(q_count), 1.0f, 30);
    const auto kv = random_bf16(static_cast<std::size_t>(kv_count), 1.0f, 31);
    const auto vv = random_bf16(static_cast<std::size_t>(kv_count), 1.0f, 32);
    const Pair q = both(*cuda, qv, q_shape, "q"), k = both(*cuda, kv, kv_shape, "k"), v = both(*cuda, vv, kv_shape, "v");
    const float scale = 2.0f / std::sqrt(static_cast<float>(s.head_dim));
    const auto geometry = packed_geometry(seq_starts, s.heads, s.kv_heads, s.head_dim, scale);
    Pair out = zeros(*cpu, *cuda, q_shape, "attn");
    Pair lse{cpu->zeros_f32({tokens, s.heads}, "layers.0.lse"), cuda->zeros_f32({tokens, s.heads}, "layers.0.lse")};
    ASSERT_EQ(lse.cuda.dtype(), DType::F32) << "the log-sum-exp must be kept in fp32";
    cpu->attention_train(q.cpu, k.cpu, v.cpu, seq_starts, scale, out.cpu, lse.cpu);
    cuda->attention_train(q.cuda, k.cuda, v.cuda, seq_starts, scale, out.cuda, lse.cuda);
    const auto cuda_out = fetch(*cuda, out.cuda), cuda_lse = fetch(*cuda, lse.cuda);
    expect_within(cuda_out, fetch(*cpu, out.cpu), std::string("attention_train out ") + s.name,
                  attention_tolerance(geometry, qv, kv, vv));
    // lse is stored in fp32 by both: only the scores' fp32 error and exp/log differ.
    const auto cpu_lse = fetch(*cpu, lse.cpu);
    const auto lse_bound = lse_tolerance(geometry, qv, kv, cpu_lse);
    for (std::size_t i = 0; i < cpu_lse.size(); ++i)
      ASSERT_NEAR(cuda_lse[i], cpu_lse[i], lse_bound[i]) << s.name << " lse " << i;

    // The backward of both backends from identical inputs: the CUDA forward's (bf16) output and lse.
    const auto dov = random_bf16(static_cast<std::size_t>(q_count), 1.0f, 33);
    const Pair dout = both(*cuda, dov, q_shape, "dout");
    const Tensor out_ref = host_tensor(cuda_out, q_shape, "attn"), lse_ref = host_tensor(cuda_lse, {tokens, s.heads}, "lse");
    Pair dq = zeros(*cpu, *cuda, q_shape, "dq"), dk = zeros(*cpu, *cuda, kv_shape, "dk"), dv = zeros(*cpu, *cuda, kv_shape, "dv");
    cpu->attention_backward(q.cpu, k.cpu, v.cpu, out_ref, lse_ref, dout.cpu, seq_starts, scale, dq.cpu, dk.cpu, dv.cpu);
    cuda->attention_backward(q.cuda, k.cuda, v.cuda, out.cuda, lse.cuda, dout.cuda, seq_starts, scale, dq.cuda, dk.cuda,
                             dv.cuda);
    const auto tol = attention_backward_tolerances(geometry, qv, kv, vv, cuda_out, cuda_lse, dov);
    const auto first_dq = fetch(*cuda, dq.cuda), first_dk = fetch(*cuda, dk.cuda), first_dv = fetch(*cuda, dv.cuda);
    expect_within(first_dq, fetch(*cpu, dq.cpu), std::string("attention_backward dq ") + s.name, tol.dq);
    expect_within(first_dk, fetch(*cpu, dk.cpu), std::string("attention_backward dk ") + s.name, tol.dk);
    expect_within(first_dv, fetch(*cpu, dv.cpu), std::string("attention_backward dv ") + s.name, tol.dv);

    // Deterministic: a second backward, into tensors that start out dirty, gives the same bits.
    cuda->fill_random(dq.cuda, 1, 1.0f);
    cuda->fill_random(dk.cuda, 2, 1.0f);
    cuda->fill_random(dv.cuda, 3, 1.0f);
    cuda->attention_backward(q.cuda, k.cuda, v.cuda, out.cuda, lse.cuda, dout.cuda, seq_starts, scale, dq.cuda, dk.cuda,
                             dv.cuda);
    EXPECT_EQ(fetch(*cuda, dq.cuda), first_dq) << "dq rerun " << s.name;
    EXPECT_EQ(fetch(*cuda, dk.cuda), first_dk) << "dk rerun " << s.name;
    EXPECT_EQ(fetch(*cuda, dv.cuda), first_dv) << "dv rerun " << s.name;
  }
}

// The chunked cross-entropy (CudaBackend::cross_entropy: kCeRows = 512 counted rows and kCeColumns = 16384
// vocabulary columns per GEMM) against the CPU's, loss and dhidden.
void check_cross_entropy(Backend& cuda, std::int64_t tokens, std::int64_t hidden, std::int64_t vocab,
                         const std::vector<std::int64_t>& skipped, std::uint32_t seed) {
  auto cpu = make_cpu_backend();
  const std::string name = "cross_entropy " + std::to_string(tokens) + " rows vocab " + std::to_string(vocab);
  const auto hv = random_bf16(static_cast<std::size_t>(tokens * hidden), 1.0f, seed);
  const auto head_values = random_bf16(static_cast<std::size_t>(vocab * hidden), 3.0f / std::sqrt(float(hidden)), seed + 1);
  const Pair h = both(cuda, hv, {tokens, hidden}, "norm");
  const Pair head = both(cuda, head_values, {vocab, hidden}, "lm_head");
  std::vector<std::int32_t> targets(static_cast<std::size_t>(tokens));
  std::mt19937 rng(seed + 2);
  for (auto& t : targets) t = static_cast<std::int32_t>(rng() % vocab);
  for (const auto r : skipped) targets[static_cast<std::size_t>(r)] = -100;
  targets[5] = 0;
  targets[6] = static_cast<std::int32_t>(vocab - 1);
  const float grad_scale = 1.0f / static_cast<float>(tokens - static_cast<std::int64_t>(skipped.size()));
  Pair dh = zeros(*cpu, cuda, {tokens, hidden}, "d_norm");
  const auto ref = cpu->cross_entropy(h.cpu, head.cpu, targets, grad_scale, &dh.cpu);
  const auto got = cuda.cross_entropy(h.cuda, head.cuda, targets, grad_scale, &dh.cuda);
  EXPECT_EQ(got.counted, ref.counted) << name;
  const auto forward_only = cuda.cross_entropy(h.cuda, head.cuda, targets, grad_scale, nullptr);
  EXPECT_EQ(forward_only.loss_sum, got.loss_sum) << name << ": the forward must not depend on the gradient";

  // Host logits, their S (sum_j |h_j W_cj|), and G = grad_scale (softmax - onehot).
  std::vector<float> logits(static_cast<std::size_t>(tokens * vocab));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(vocab),
              static_cast<int>(hidden), 1.0f, hv.data(), static_cast<int>(hidden), head_values.data(),
              static_cast<int>(hidden), 0.0f, logits.data(), static_cast<int>(vocab));
  const auto logit_sums = abs_product_sums(hv, false, head_values, true, tokens, vocab, hidden);
  std::vector<float> abs_w(head_values.size());
  for (std::size_t i = 0; i < abs_w.size(); ++i) abs_w[i] = std::abs(head_values[i]);
  double loss_bound = 0;
  for (std::int64_t r = 0; r < tokens; ++r) {
    float* row = logits.data() + r * vocab;
    const std::int32_t target = targets[static_cast<std::size_t>(r)];
    if (target < 0) {
      std::fill_n(row, vocab, 0.0f);
      continue;
    }
    const float mx = *std::max_element(row, row + vocab);
    double total = 0, largest_sum = 0;
    for (std::int64_t c = 0; c < vocab; ++c) {
      total += std::exp(static_cast<double>(row[c] - mx));
      largest_sum = std::max(largest_sum, logit_sums[static_cast<std::size_t>(r * vocab + c)]);
    }
    // loss_r = lse_r - logit_target: each logit is off by at most eta(hidden) S (fp32 GEMM), which moves lse
    // and the target logit by as much; exp, log and the double running sum add a few ulps of |lse|.
    const double lse = mx + std::log(total);
    loss_bound += 2.0 * 2.0 * fp32_noise(hidden) * largest_sum + 64.0 * kFp32Unit * (1.0 + std::abs(lse));
    for (std::int64_t c = 0; c < vocab; ++c) {
      const double g = grad_scale * (std::exp(static_cast<double>(row[c] - mx)) / total - (c == target ? 1.0 : 0.0));
      row[c] = static_cast<float>(std::abs(g));
    }
  }
  EXPECT_NEAR(got.loss_sum, ref.loss_sum, loss_bound) << name << " loss";
  std::printf("[ measured ] %s loss: |cuda - cpu| = %.3g (bound %.3g, loss %.6g)\n", name.c_str(),
              std::abs(got.loss_sum - ref.loss_sum), loss_bound, ref.loss_sum);

  // dhidden = G W over the vocabulary: S_rj = sum_c |G_rc| |W_cj| (K = vocab), and the CUDA path rounds G to
  // bf16 before that GEMM (cross_entropy.cu), which adds at most u S.
  std::vector<float> bound(static_cast<std::size_t>(tokens * hidden));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(tokens), static_cast<int>(hidden),
              static_cast<int>(vocab), 1.0f, logits.data(), static_cast<int>(vocab), abs_w.data(),
              static_cast<int>(hidden), 0.0f, bound.data(), static_cast<int>(hidden));
  Tolerance tol{std::vector<double>(bound.begin(), bound.end()), vocab, std::vector<double>(bound.size()), true};
  for (std::size_t i = 0; i < bound.size(); ++i) tol.extra[i] = kBf16Unit * bound[i];
  const auto dh_got = fetch(cuda, dh.cuda);
  expect_within(dh_got, fetch(*cpu, dh.cpu), name + " dhidden", tol);
  for (const std::int64_t r : skipped)
    for (std::int64_t j = 0; j < hidden; ++j)
      ASSERT_EQ(dh_got[static_cast<std::size_t>(r * hidden + j)], 0.0f) << name << " skipped row " << r;
}

TEST(CudaTrainOps, CrossEntropyLossAndGradient) {
  SLEARN_REQUIRE_GPU(cuda);
  // A vocabulary that is no multiple of the 16384-column chunks (50001 = 3 x 16384 + 849), hidden 896, 77 rows
  // of which some are skipped (-100).
  check_cross_entropy(*cuda, 77, 896, 50001, {3, 10, 40}, 34);
}

TEST(CudaTrainOps, CrossEntropyOverSeveralRowChunks) {
  SLEARN_REQUIRE_GPU(cuda);
  // 1100 rows, 1095 counted: row chunks of 512, 512 and 71; vocabulary 20000 = 16384 + 3616.
  check_cross_entropy(*cuda, 1100, 256, 20000, {0, 511, 512, 700, 1099}, 50);
}

}  // namespace
}  // namespace slearn
