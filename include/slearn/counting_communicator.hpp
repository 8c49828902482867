// A Communicator that forwards every call to another one and counts, per kind of collective, the calls and the
// payload bytes this rank contributes. It is how the communication figures of docs/performance.md are measured
// (perf/bench_tensor_parallel.cpp wraps a tensor group in one before loading the model, so the model's sums
// over the group go through it), and how a test checks how many collectives a step makes.
//
// What counts as this rank's bytes, per kind:
//   allreduce  the bytes of the span summed in place (float, double and int64 alike);
//   allgather  the bytes this rank sends (its `values`), not the size() times larger result;
//   broadcast  the bytes of the buffer (a float or int32 span); for a string, its size after the call, which
//              is the root's text on every rank (the payload that travelled);
//   other      any (1 byte: the flag), barrier (0 bytes) and split (0 bytes: a call, no payload).
//
// split forwards to the wrapped communicator and returns its result unwrapped: the new group's traffic is not
// counted here. To count a subgroup's collectives, wrap the group that split returned in a CountingCommunicator
// of its own (as the benchmark does with Mesh::tensor_group). The wrapped communicator must outlive this one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "slearn/communicator.hpp"

namespace slearn {

struct CollectiveCounts {
  std::int64_t calls = 0, bytes = 0;
};

class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}

  const CollectiveCounts& allreduce_counts() const { return allreduce_; }
  const CollectiveCounts& allgather_counts() const { return allgather_; }
  const CollectiveCounts& broadcast_counts() const { return broadcast_; }
  const CollectiveCounts& other_counts() const { return other_; }
  // Every count back to zero (a measurement starts here).
  void reset();

  int rank() const override;
  int size() const override;
  void allreduce_sum(std::span<float> values) override;
  void allreduce_sum(std::span<double> values) override;
  void allreduce_sum(std::span<std::int64_t> values) override;
  std::vector<std::int64_t> allgather(std::span<const std::int64_t> values) override;
  void broadcast(std::string& text, int root) override;
  bool any(bool flag) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;  // unwrapped, not counted further (above)
  void allgather(std::span<const float> values, std::span<float> out) override;
  void broadcast(std::span<float> values, int root) override;
  void broadcast(std::span<std::int32_t> values, int root) override;

 private:
  Communicator& inner_;
  CollectiveCounts allreduce_, allgather_, broadcast_, other_;
};

}  // namespace slearn
