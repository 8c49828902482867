// Linear layers, out = x W^T + b, with the weight in PyTorch's [out, in] layout (never copied).
// Two paths:
//  - skinny (m <= kSkinnyRows, i.e. decode steps): memory-bound. Each weight row is streamed once and
//    dotted with every activation row while it sits in L1 (with AVX-512: one row at a time, front to back,
//    see below; the portable loop takes four rows at a time for independent FMA chains). OpenBLAS's sgemm
//    packs the whole weight for m = 1 and runs 3-5x slower here.
//  - sgemm (prefill): compute-bound, OpenBLAS.
// A bf16 weight (cpu_weights bf16) halves the bytes a decode step reads: the skinny path widens each weight
// element to fp32 as it loads it (a 16-bit shift, exact) and multiplies and adds in fp32 as for an fp32
// weight, so a bf16 checkpoint gives the same products either way; the sgemm path widens blocks of weight
// rows into an fp32 buffer and runs sgemm on each block (prefill is compute-bound: the widening is the cost).
// In the skinny path each output element's summation order is fixed by K alone, so a row's result does not
// depend on how many rows share the call or how threads split the work.
#include <cblas.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

#include "cpu/cpu_kernels.hpp"

namespace slearn::cpu {
namespace {

constexpr std::int64_t kSkinnyRows = 8;

// A weight element as fp32: as stored, or widened from bf16 (exact). Plain functions of the element so that
// the loops below stay pointer loops the compiler vectorizes alike for both types.
inline float widen(float w) { return w; }
inline float widen(std::uint16_t w) { return std::bit_cast<float>(static_cast<std::uint32_t>(w) << 16); }

template <typename Weight>
void linear_skinny(const LinearParams& p, const Weight* weights) {
  const std::int64_t k_size = p.k;
  const std::int64_t blocks = (p.n + 3) / 4;
  // Dynamic chunks keep all threads busy when one is slowed down (shared nodes, SMT siblings).
#pragma omp parallel for schedule(dynamic, 16) if (p.n * p.k > (1 << 16))
  for (std::int64_t block = 0; block < blocks; ++block) {
    const std::int64_t n0 = block * 4;
    if (n0 + 4 > p.n) {  // the ragged tail: one weight row at a time
      for (std::int64_t n = n0; n < p.n; ++n) {
        const Weight* w = weights + n * k_size;
        for (std::int64_t m = 0; m < p.m; ++m) {
          const float* x = p.x + m * k_size;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (std::int64_t k = 0; k < k_size; ++k) acc += x[k] * widen(w[k]);
          float* out = p.out + m * p.n + n;
          *out = acc + (p.bias ? p.bias[n] : 0.0f) + (p.beta != 0.0f ? p.beta * *out : 0.0f);
        }
      }
      continue;
    }
    const Weight* w0 = weights + n0 * k_size;
    const Weight* w1 = w0 + k_size;
    const Weight* w2 = w1 + k_size;
    const Weight* w3 = w2 + k_size;
    for (std::int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * k_size;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (std::int64_t k = 0; k < k_size; ++k) {
        const float xv = x[k];
        a0 += xv * widen(w0[k]);
        a1 += xv * widen(w1[k]);
        a2 += xv * widen(w2[k]);
        a3 += xv * widen(w3[k]);
      }
      float* out = p.out + m * p.n + n0;
      const float acc[4] = {a0, a1, a2, a3};
      for (int j = 0; j < 4; ++j)
        out[j] = acc[j] + (p.bias ? p.bias[n0 + j] : 0.0f) + (p.beta != 0.0f ? p.beta * out[j] : 0.0f);
    }
  }
}

}  // namespace

#if defined(__AVX512F__)
// The skinny paths with AVX-512 (the library is built for the machine it runs on, -march=native).
//
// One weight row at a time, front to back: the whole weight is then read as one sequential stream, which the
// hardware prefetchers follow at full speed. (The first versions streamed four rows together, four short
// streams that restart at every block: on a Zen 4 EPYC one core read 14 GB/s of fp32 weights that way and 9.5
// of bf16, against 23.5 and 21.5 front to back, where llama.cpp's decode reads about 20.) The row, 2-4 KB, then
// sits in L1 for the other activation rows. Four 16-lane fp32 accumulators over 64-element chunks keep the FMA
// chains independent; the reduction order is fixed by K alone (chunks, then a 16-element tail into the first
// accumulator, then (a0 + a1) + (a2 + a3), its lanes in order, then scalars), so a row's result does not
// depend on how many rows share the call or how threads split the work.
//
// bf16: a bf16 value is the high half of the fp32 with the same value, so interleaving 16-bit zeros below the
// weight's 16-bit elements (vpunpcklwd / vpunpckhwd: in-lane, one cycle) widens them exactly. The two take a
// 64-byte line of 32 weights apart into elements {0-3, 8-11, 16-19, 24-27} and {4-7, 12-15, 20-23, 28-31};
// the activation rows are permuted once per call into the same order.
inline __m512 widen16(const std::uint16_t* w) {
  // The maskz forms (all lanes) are the plain ones without GCC 12's spurious "may be used uninitialized".
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(static_cast<__mmask16>(0xffff), half);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(static_cast<__mmask16>(0xffff), wide, 16));
}

// Element e of each 32-element line in the order the unpacks leave the weights: [lo lanes | hi lanes].
constexpr int unpack_source(int e) {
  const int half = e / 16, lane = (e % 16) / 4, within = e % 4;  // half 0: unpacklo, 1: unpackhi
  return lane * 8 + half * 4 + within;
}

// The fp32 values of a line's bf16 elements {0-3, 8-11, 16-19, 24-27} and {4-7, 12-15, 20-23, 28-31}.
inline __m512 lo(__m512i line) { return _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), line)); }
inline __m512 hi(__m512i line) { return _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), line)); }

// (a0 + a1) + (a2 + a3), then its lanes in order (GCC 12 warns spuriously inside _mm512_reduce_add_ps).
inline float finish_row(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  float total = 0.0f;
  for (const float lane : lanes) total += lane;
  return total;
}

inline void store_output(const LinearParams& p, std::int64_t m, std::int64_t n, float total) {
  float* out = p.out + m * p.n + n;
  *out = total + (p.bias ? p.bias[n] : 0.0f) + (p.beta != 0.0f ? p.beta * *out : 0.0f);
}

void linear_skinny_f32_avx512(const LinearParams& p) {
  const std::int64_t k_size = p.k, chunk_end = p.k / 64 * 64, vector_end = p.k / 16 * 16;
#pragma omp parallel for schedule(dynamic, 64) if (p.n * p.k > (1 << 16))
  for (std::int64_t n = 0; n < p.n; ++n) {
    const float* w = p.w + n * k_size;
    for (std::int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * k_size;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (std::int64_t k = 0; k < chunk_end; k += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(w + k + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 32), _mm512_loadu_ps(w + k + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 48), _mm512_loadu_ps(w + k + 48), a3);
      }
      for (std::int64_t k = chunk_end; k < vector_end; k += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), a0);
      float total = finish_row(a0, a1, a2, a3);
      for (std::int64_t k = vector_end; k < k_size; ++k) total += x[k] * w[k];
      store_output(p, m, n, total);
    }
  }
}

void linear_skinny_bf16_avx512(const LinearParams& p) {
  const std::int64_t k_size = p.k, chunk_end = p.k / 64 * 64, line_end = p.k / 32 * 32, vector_end = p.k / 16 * 16;
  // The activation rows in unpack order, for the whole lines of K.
  std::vector<float> permuted(static_cast<std::size_t>(p.m * line_end));
  for (std::int64_t m = 0; m < p.m; ++m)
    for (std::int64_t k = 0; k < line_end; k += 32)
      for (int e = 0; e < 32; ++e)
        permuted[static_cast<std::size_t>(m * line_end + k + e)] = p.x[m * k_size + k + unpack_source(e)];
#pragma omp parallel for schedule(dynamic, 64) if (p.n * p.k > (1 << 16))
  for (std::int64_t n = 0; n < p.n; ++n) {
    const std::uint16_t* w = p.w_bf16 + n * k_size;
    for (std::int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * k_size;
      const float* xp = permuted.data() + m * line_end;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (std::int64_t k = 0; k < chunk_end; k += 64) {
        const __m512i l0 = _mm512_loadu_si512(w + k), l1 = _mm512_loadu_si512(w + k + 32);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k), lo(l0), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k + 16), hi(l0), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k + 32), lo(l1), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k + 48), hi(l1), a3);
      }
      for (std::int64_t k = chunk_end; k < line_end; k += 32) {
        const __m512i l0 = _mm512_loadu_si512(w + k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k), lo(l0), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + k + 16), hi(l0), a1);
      }
      for (std::int64_t k = line_end; k < vector_end; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), widen16(w + k), a0);
      float total = finish_row(a0, a1, a2, a3);
      for (std::int64_t k = vector_end; k < k_size; ++k) total += x[k] * widen(w[k]);
      store_output(p, m, n, total);
    }
  }
}
#endif

// out[:, block] = x W_block^T for blocks of bf16 weight rows widened into an fp32 buffer. Each thread widens
// its own blocks, small enough to stay in its L2 (about 1 MiB of fp32), and runs a single-threaded sgemm on
// each (OpenBLAS runs on one thread inside an OpenMP parallel region): the widened rows are read back from
// L2 instead of memory. Blocks of 8 MiB widened by all threads, then one threaded sgemm each, were 20%
// slower (the widening then writes to memory and sgemm reads it back).
// With many rows (m above kFewRows: a batched prefill), repacking x for every small block would cost more than
// the widening saves: then all threads widen blocks of about 8 MiB in turn, each for one threaded sgemm.
void linear_bf16_sgemm_many_rows(const LinearParams& p) {
  constexpr std::int64_t kBlockBytes = std::int64_t{8} << 20;
  const std::int64_t block = std::min(p.n, std::max<std::int64_t>(64, kBlockBytes / (4 * p.k)));
  std::vector<float> widened(static_cast<std::size_t>(block * p.k));
  for (std::int64_t n0 = 0; n0 < p.n; n0 += block) {
    const std::int64_t rows = std::min(block, p.n - n0);
    const std::uint16_t* source = p.w_bf16 + n0 * p.k;
    const std::int64_t count = rows * p.k;
#pragma omp parallel for simd schedule(static) if (count > (1 << 16))
    for (std::int64_t i = 0; i < count; ++i) widened[static_cast<std::size_t>(i)] = widen(source[i]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.m), static_cast<blasint>(rows),
                static_cast<blasint>(p.k), 1.0f, p.x, static_cast<blasint>(p.k), widened.data(),
                static_cast<blasint>(p.k), p.beta, p.out + n0, static_cast<blasint>(p.n));
  }
}

void linear_bf16_sgemm(const LinearParams& p) {
  constexpr std::int64_t kFewRows = 256;
  if (p.m > kFewRows) {
    linear_bf16_sgemm_many_rows(p);
    return;
  }
  constexpr std::int64_t kBlockBytes = std::int64_t{1} << 20;
  const std::int64_t block = std::min(p.n, std::max<std::int64_t>(16, kBlockBytes / (4 * p.k)));
  const std::int64_t blocks = (p.n + block - 1) / block;
#pragma omp parallel
  {
    std::vector<float> widened(static_cast<std::size_t>(block * p.k));
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t n0 = b * block, rows = std::min(block, p.n - n0);
      const std::uint16_t* source = p.w_bf16 + n0 * p.k;
      const std::int64_t count = rows * p.k;
#pragma omp simd
      for (std::int64_t i = 0; i < count; ++i) widened[static_cast<std::size_t>(i)] = widen(source[i]);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.m), static_cast<blasint>(rows),
                  static_cast<blasint>(p.k), 1.0f, p.x, static_cast<blasint>(p.k), widened.data(),
                  static_cast<blasint>(p.k), p.beta, p.out + n0, static_cast<blasint>(p.n));
    }
  }
}

void linear(const LinearParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.m <= kSkinnyRows) {
#if defined(__AVX512F__)
    if (p.w_bf16 != nullptr) linear_skinny_bf16_avx512(p);
    else linear_skinny_f32_avx512(p);
#else
    if (p.w_bf16 != nullptr) linear_skinny(p, p.w_bf16);
    else linear_skinny(p, p.w);
#endif
    return;
  }
  if (p.w_bf16 != nullptr)
    linear_bf16_sgemm(p);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.m), static_cast<blasint>(p.n),
                static_cast<blasint>(p.k), 1.0f, p.x, static_cast<blasint>(p.k), p.w, static_cast<blasint>(p.k),
                p.beta, p.out, static_cast<blasint>(p.n));
  if (p.bias == nullptr) return;
#pragma omp parallel for schedule(static) if (p.m * p.n > (1 << 15))
  for (std::int64_t r = 0; r < p.m; ++r) {
    float* row = p.out + r * p.n;
#pragma omp simd
    for (std::int64_t c = 0; c < p.n; ++c) row[c] += p.bias[c];
  }
}

}  // namespace slearn::cpu
