// The optimizer's kernels over the flat fp32 training state (src/train/flat_adapter.hpp): the fused AdamW
// update, the gradient check (sum of squares and first non-finite element), the bf16 compute copy of the
// master weights, and an fp32 scale.
// - AdamW: a grid-stride loop, one thread per element (four with float4 loads and stores when all four
//   buffers are 16-byte aligned; the last count % 4 elements then go to the first threads, one each). Every
//   operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn): nvcc may not
//   contract them into FMA, so the GPU computes Backend::adamw_update's formula exactly as written, each
//   fp32 operation rounded on its own. (kernels/cpu/optimizer.cpp writes the same expressions in plain C++,
//   which GCC, at its C++ default -ffp-contract=fast with -march=native, may fuse into FMA: the two backends
//   can then differ by an ulp or so per operation; tests/gpu/test_cuda_optimizer.cpp allows for that.)
// - Flat check: deterministic without atomics. The grid depends on the element count only (never on the
//   device), each block owns one contiguous range, its threads accumulate x*x in double in a fixed stride
//   order and the block combines them in a fixed shared-memory tree; the block's first non-finite index is
//   the minimum of its threads' firsts (exact in any order). One more block then reduces the per-block
//   partials the same way. The order differs from the CPU's (which sums segment by segment, then over the
//   segments): the GPU ignores segment ends, so the two sums agree to double rounding, not bit for bit.
// - Cast: integer rounding to nearest even on the fp32 bits with NaN kept a quiet NaN, as slearn::f32_to_bf16
//   does on the host, so the compute copy equals an upload of the same values bit for bit.
#include "cuda/device_utils.cuh"

namespace slearn::cuda {
namespace {

__device__ __forceinline__ void adamw_element(const AdamWParams& s, float& p, float grad, float& m, float& v) {
  const float g = __fmul_rn(grad, s.grad_scale);
  p = __fmul_rn(p, s.decay);
  m = __fadd_rn(m, __fmul_rn(s.one_minus_beta1, __fsub_rn(g, m)));
  v = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.correction2_sqrt), s.eps);
  p = __fadd_rn(p, __fmul_rn(-s.step_size, __fdiv_rn(m, denom)));
}

__global__ void adamw_kernel(AdamWParams s) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < s.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    adamw_element(s, s.params[i], s.grads[i], s.m[i], s.v[i]);
}

__global__ void adamw_float4_kernel(AdamWParams s) {
  const std::int64_t quads = s.count / 4;
  auto* p4 = reinterpret_cast<float4*>(s.params);
  const auto* g4 = reinterpret_cast<const float4*>(s.grads);
  auto* m4 = reinterpret_cast<float4*>(s.m);
  auto* v4 = reinterpret_cast<float4*>(s.v);
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  for (std::int64_t i = first; i < quads; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float4 p = p4[i], m = m4[i], v = v4[i];
    const float4 g = g4[i];
    adamw_element(s, p.x, g.x, m.x, v.x);
    adamw_element(s, p.y, g.y, m.y, v.y);
    adamw_element(s, p.z, g.z, m.z, v.z);
    adamw_element(s, p.w, g.w, m.w, v.w);
    p4[i] = p;
    m4[i] = m;
    v4[i] = v;
  }
  const std::int64_t tail = quads * 4 + first;  // at most 3 elements, for threads 0..2 of the grid
  if (tail < s.count) adamw_element(s, s.params[tail], s.grads[tail], s.m[tail], s.v[tail]);
}

constexpr int kCheckThreads = 256;  // a power of two: the shared-memory trees halve it
constexpr int kCheckMaxBlocks = static_cast<int>(kFlatCheckScratchBytes / (sizeof(double) + sizeof(std::int64_t)));
constexpr std::int64_t kCheckElementsPerThread = 16;  // below this many, fewer blocks

__device__ __forceinline__ bool is_finite_bits(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }
__device__ __forceinline__ std::int64_t first_of(std::int64_t a, std::int64_t b) {
  if (a < 0) return b;
  if (b < 0) return a;
  return a < b ? a : b;
}

// Reduces each thread's (sum, first) over the block in a fixed tree; thread 0 gets the block's pair.
__device__ __forceinline__ void check_block_reduce(double& sum, std::int64_t& first) {
  __shared__ double sums[kCheckThreads];
  __shared__ std::int64_t firsts[kCheckThreads];
  const int t = threadIdx.x;
  sums[t] = sum;
  firsts[t] = first;
  __syncthreads();
  for (int half = kCheckThreads / 2; half > 0; half /= 2) {
    if (t < half) {
      sums[t] += sums[t + half];
      firsts[t] = first_of(firsts[t], firsts[t + half]);
    }
    __syncthreads();
  }
  sum = sums[0];
  first = firsts[0];
}

__global__ void flat_check_blocks_kernel(FlatCheckParams p, std::int64_t range) {
  const std::int64_t begin = blockIdx.x * range;
  const std::int64_t end = begin + range < p.count ? begin + range : p.count;
  double sum = 0;
  std::int64_t first = -1;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kCheckThreads) {
    const float x = p.values[i];
    if (first < 0 && !is_finite_bits(x)) first = i;  // ascending: a thread's first is its smallest
    const double d = x;
    sum += d * d;
  }
  check_block_reduce(sum, first);
  if (threadIdx.x == 0) {
    auto* block_sums = static_cast<double*>(p.scratch);
    auto* block_firsts = reinterpret_cast<std::int64_t*>(block_sums + kCheckMaxBlocks);
    block_sums[blockIdx.x] = sum;
    block_firsts[blockIdx.x] = first;
  }
}

__global__ void flat_check_finish_kernel(FlatCheckParams p, int blocks) {
  const auto* block_sums = static_cast<const double*>(p.scratch);
  const auto* block_firsts = reinterpret_cast<const std::int64_t*>(block_sums + kCheckMaxBlocks);
  double sum = 0;
  std::int64_t first = -1;
  for (int b = threadIdx.x; b < blocks; b += kCheckThreads) {
    sum += block_sums[b];
    first = first_of(first, block_firsts[b]);
  }
  check_block_reduce(sum, first);
  if (threadIdx.x == 0) *p.result = FlatCheckResult{sum, first};
}

// slearn::f32_to_bf16 (slearn/dtype.hpp) on the device.
__device__ __forceinline__ unsigned int bf16_bits_of(float x) {
  unsigned int word = __float_as_uint(x);
  if ((word & 0x7fffffffu) > 0x7f800000u) return ((word >> 16) | 0x40u) & 0xffffu;  // NaN: stays a quiet NaN
  word += 0x7fffu + ((word >> 16) & 1u);
  return word >> 16;
}

__global__ void cast_f32_to_bf16_kernel(CastF32ToBf16Params p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.dst[i] = __ushort_as_bfloat16(static_cast<unsigned short>(bf16_bits_of(p.src[i])));
}

// Four elements per step: one float4 load, one 8-byte store (element 0 in the low half, little-endian).
__global__ void cast_f32_to_bf16_float4_kernel(CastF32ToBf16Params p) {
  const std::int64_t quads = p.count / 4;
  const auto* src4 = reinterpret_cast<const float4*>(p.src);
  auto* dst4 = reinterpret_cast<uint2*>(p.dst);
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  for (std::int64_t i = first; i < quads; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float4 x = src4[i];
    dst4[i] = make_uint2(bf16_bits_of(x.x) | (bf16_bits_of(x.y) << 16), bf16_bits_of(x.z) | (bf16_bits_of(x.w) << 16));
  }
  const std::int64_t tail = quads * 4 + first;
  if (tail < p.count) p.dst[tail] = __ushort_as_bfloat16(static_cast<unsigned short>(bf16_bits_of(p.src[tail])));
}

__global__ void scale_f32_kernel(ScaleF32Params p) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p.x[i] = __fmul_rn(p.x[i], p.factor);
}

bool aligned_to(const void* pointer, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(pointer) % bytes == 0;
}

}  // namespace

void launch_adamw(const AdamWParams& p) {
  if (p.count == 0) return;
  if (aligned_to(p.params, 16) && aligned_to(p.grads, 16) && aligned_to(p.m, 16) && aligned_to(p.v, 16)) {
    adamw_float4_kernel<<<grid_for(p.count / 4), kThreads, 0, p.stream>>>(p);
  } else {
    adamw_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

void launch_flat_check(const FlatCheckParams& p) {
  // Even an empty buffer gets both kernels: the result {0, -1} is then written like any other.
  const std::int64_t per_block = kCheckThreads * kCheckElementsPerThread;
  const std::int64_t wanted = (p.count + per_block - 1) / per_block;
  const int blocks = static_cast<int>(std::clamp<std::int64_t>(wanted, 1, kCheckMaxBlocks));
  const std::int64_t range = (p.count + blocks - 1) / blocks;
  flat_check_blocks_kernel<<<static_cast<unsigned>(blocks), kCheckThreads, 0, p.stream>>>(p, range);
  CUDA_CHECK_LAUNCH();
  flat_check_finish_kernel<<<1, kCheckThreads, 0, p.stream>>>(p, blocks);
  CUDA_CHECK_LAUNCH();
}

void launch_cast_f32_to_bf16(const CastF32ToBf16Params& p) {
  if (p.count == 0) return;
  if (aligned_to(p.src, 16) && aligned_to(p.dst, 8)) {
    cast_f32_to_bf16_float4_kernel<<<grid_for(p.count / 4), kThreads, 0, p.stream>>>(p);
  } else {
    cast_f32_to_bf16_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

void launch_scale_f32(const ScaleF32Params& p) {
  if (p.count == 0) return;
  scale_f32_kernel<<<grid_for(p.count), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace slearn::cuda
