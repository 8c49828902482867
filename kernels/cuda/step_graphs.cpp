// See step_graphs.hpp for the design.
#include "cuda/step_graphs.hpp"

#include "cuda/cuda_check.hpp"

namespace slearn::cuda {

StepGraphs::~StepGraphs() { clear(); }

void StepGraphs::clear() {
  for (auto& [key, entry] : graphs_) cudaGraphExecDestroy(entry.exec);
  graphs_.clear();
  by_age_.clear();
  seen_once_.clear();
}

void StepGraphs::run(std::uint64_t key, cudaStream_t stream, const std::function<void()>& ops) {
  if (auto found = graphs_.find(key); found != graphs_.end()) {
    by_age_.splice(by_age_.begin(), by_age_, found->second.age);
    CUDA_CHECK(cudaGraphLaunch(found->second.exec, stream));
    ++replays_;
    return;
  }
  if (seen_once_.insert(key).second) {  // first sighting: run eagerly, sizing every buffer outside a capture
    if (seen_once_.size() > 4 * kMaxGraphs) seen_once_.clear();
    ops();
    return;
  }
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    ops();
  } catch (...) {
    (void)cudaStreamEndCapture(stream, &graph);  // leaves the stream usable
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CUDA_CHECK(status);
  if (graphs_.size() >= kMaxGraphs) {
    const std::uint64_t oldest = by_age_.back();
    by_age_.pop_back();
    cudaGraphExecDestroy(graphs_.at(oldest).exec);
    graphs_.erase(oldest);
  }
  by_age_.push_front(key);
  graphs_[key] = Entry{exec, by_age_.begin()};
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
}

}  // namespace slearn::cuda
