// NVTX ranges, for Nsight Systems timelines: stages (answer, judge, train, eval), layers, and the CUDA
// backend's ops. In builds with CUDA they are nvtx3 ranges (header-only, from the toolkit); with no tool
// attached a range costs a few nanoseconds. In builds without CUDA they compile to nothing.
#pragma once

#include <string>

namespace slearn {

class TraceRange {
 public:
  explicit TraceRange(const char* name);
  explicit TraceRange(const std::string& name) : TraceRange(name.c_str()) {}
  ~TraceRange();
  TraceRange(const TraceRange&) = delete;
  TraceRange& operator=(const TraceRange&) = delete;
};

}  // namespace slearn
