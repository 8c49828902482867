// cpu_info (slearn/cpu_info.hpp): /proc/cpuinfo for the processor and its flags, OpenBLAS's own answers for
// the library and the kernel it chose.
#include "slearn/cpu_info.hpp"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace slearn {

CpuInfo cpu_info() {
  CpuInfo info;
  info.model_name = "unknown";
  info.logical_cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  std::ifstream in("/proc/cpuinfo");
  std::vector<std::string> flags;
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : std::string();
    if (key == "model name" && info.model_name == "unknown") info.model_name = value;
    if (key == "flags" && flags.empty()) {
      std::istringstream words(value);
      for (std::string w; words >> w;) flags.push_back(w);
    }
  }
  // The instruction sets that decide which kernels are fast: FMA and AVX2 everywhere modern, AVX-512 and its
  // bf16/fp16 dot products, VNNI, and AMX tiles.
  for (const char* wanted : {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                             "amx_int8"})
    if (std::find(flags.begin(), flags.end(), wanted) != flags.end()) info.features.emplace_back(wanted);
  info.gemm_library = openblas_get_config();
  info.gemm_kernel = openblas_get_corename();
  return info;
}

std::string describe(const CpuInfo& info) {
  std::string features;
  for (const auto& f : info.features) features += (features.empty() ? "" : " ") + f;
  return info.model_name + ", " + std::to_string(info.logical_cpus) + " CPUs (" + features + "); GEMM: " +
         info.gemm_library + ", kernel " + info.gemm_kernel;
}

}  // namespace slearn
