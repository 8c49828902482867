// splitmix64's finaliser, for counter-based random values and address keys, compiled both in the library
// (C++20) and in the CUDA kernels (C++17, host and device), so both backends compute the same bits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SLEARN_HOST_DEVICE __host__ __device__
#else
#define SLEARN_HOST_DEVICE
#endif

namespace slearn {

// A bijection of 64-bit words with good avalanche.
SLEARN_HOST_DEVICE inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace slearn
