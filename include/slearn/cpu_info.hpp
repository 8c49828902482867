// What the CPU backend runs on, for `slearn_dist --version`, the benchmarks' output and bug reports: the
// processor, the instruction sets its kernels can use, and the GEMM library with the kernel it chose. OpenBLAS
// (a DYNAMIC_ARCH build, as Debian's) picks its kernel for the processor when it loads; a processor newer than
// the library falls back to the nearest one it knows, which can be far slower, so the choice is reported.
#pragma once

#include <string>
#include <vector>

namespace slearn {

struct CpuInfo {
  std::string model_name;             // /proc/cpuinfo's "model name" ("unknown" when absent)
  int logical_cpus = 0;               // online
  std::vector<std::string> features;  // of those the kernels care about, the ones present (lscpu's names)
  std::string gemm_library;           // e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY USE_OPENMP ..."
  std::string gemm_kernel;            // the kernel family OpenBLAS chose, e.g. "SkylakeX", "Haswell", "Zen"
};

CpuInfo cpu_info();
// "Intel(R) Xeon(R) Processor, 2 CPUs (avx2 fma avx512f avx512_bf16 amx_bf16); GEMM: OpenBLAS 0.3.21 ...,
// kernel SkylakeX"
std::string describe(const CpuInfo& info);

}  // namespace slearn
