// CountingCommunicator (slearn/counting_communicator.hpp): each call is counted, then forwarded, so a call that
// throws has still been counted (it was made). The string broadcast is the exception: it is counted after the
// call, because only then does every rank know the size of the text that travelled.
#include "slearn/counting_communicator.hpp"

namespace slearn {
namespace {

void count(CollectiveCounts& counts, std::size_t bytes) {
  ++counts.calls;
  counts.bytes += static_cast<std::int64_t>(bytes);
}

}  // namespace

void CountingCommunicator::reset() { allreduce_ = allgather_ = broadcast_ = other_ = {}; }

int CountingCommunicator::rank() const { return inner_.rank(); }
int CountingCommunicator::size() const { return inner_.size(); }

void CountingCommunicator::allreduce_sum(std::span<float> values) {
  count(allreduce_, values.size_bytes());
  inner_.allreduce_sum(values);
}

void CountingCommunicator::allreduce_sum(std::span<double> values) {
  count(allreduce_, values.size_bytes());
  inner_.allreduce_sum(values);
}

void CountingCommunicator::allreduce_sum(std::span<std::int64_t> values) {
  count(allreduce_, values.size_bytes());
  inner_.allreduce_sum(values);
}

std::vector<std::int64_t> CountingCommunicator::allgather(std::span<const std::int64_t> values) {
  count(allgather_, values.size_bytes());
  return inner_.allgather(values);
}

void CountingCommunicator::allgather(std::span<const float> values, std::span<float> out) {
  count(allgather_, values.size_bytes());
  inner_.allgather(values, out);
}

void CountingCommunicator::broadcast(std::string& text, int root) {
  inner_.broadcast(text, root);
  count(broadcast_, text.size());  // after the call: the root's text, on every rank
}

void CountingCommunicator::broadcast(std::span<float> values, int root) {
  count(broadcast_, values.size_bytes());
  inner_.broadcast(values, root);
}

void CountingCommunicator::broadcast(std::span<std::int32_t> values, int root) {
  count(broadcast_, values.size_bytes());
  inner_.broadcast(values, root);
}

bool CountingCommunicator::any(bool flag) {
  count(other_, 1);
  return inner_.any(flag);
}

void CountingCommunicator::barrier() {
  count(other_, 0);
  inner_.barrier();
}

std::unique_ptr<Communicator> CountingCommunicator::split(int color, int key) {
  count(other_, 0);
  return inner_.split(color, key);
}

}  // namespace slearn
