// Recorded steps: a decode step's device work captured once as a CUDA graph and replayed afterwards, so a
// step of a few hundred kernels costs one launch instead of hundreds (at batch 1 on an H100/H200 the
// launches alone would take longer than the kernels).
//
// A key sums up every address and shape the step's kernels use (the caller's, plus the backend's own
// scratch and step buffers): equal keys mean the recorded graph reads and writes exactly the memory the
// step would. The first time a key is seen the ops run eagerly (so every scratch buffer reaches its size
// and every GEMM heuristic is asked outside the capture); the second time they are captured and the graph
// launched; from then on it is replayed. At most kMaxGraphs are kept (the least recently used goes).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <list>
#include <unordered_map>
#include <unordered_set>

namespace slearn::cuda {

class StepGraphs {
 public:
  StepGraphs() = default;
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  void run(std::uint64_t key, cudaStream_t stream, const std::function<void()>& ops);
  // Drops every graph (their memory may be about to be freed).
  void clear();
  std::size_t recorded() const { return graphs_.size(); }
  std::uint64_t replays() const { return replays_; }

 private:
  static constexpr std::size_t kMaxGraphs = 48;
  struct Entry {
    cudaGraphExec_t exec = nullptr;
    std::list<std::uint64_t>::iterator age;
  };
  std::unordered_map<std::uint64_t, Entry> graphs_;
  std::list<std::uint64_t> by_age_;  // most recently used first
  std::unordered_set<std::uint64_t> seen_once_;
  std::uint64_t replays_ = 0;
};

}  // namespace slearn::cuda
