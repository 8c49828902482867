// NcclCommunicator (nccl_communicator.hpp): a non-blocking NCCL communicator whose every wait is a bounded
// poll. The id broadcast carries one tag byte first, so that rank 0 can send the reason it has no id in the
// id's place and every rank fails with it at once, instead of the others waiting in initialisation.
#include "cuda/nccl_communicator.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <thread>

#include "cuda/cuda_check.hpp"
#include "slearn/communicator.hpp"
#include "slearn/error.hpp"

namespace slearn::cuda {
namespace {

constexpr char kIdTag = 'I';     // followed by the ncclUniqueId's bytes
constexpr char kErrorTag = 'E';  // followed by rank 0's reason

// A deadline and the pause between two polls: a few tens of microseconds at first (a collective that is
// nearly done costs almost no latency), doubling up to one millisecond (a long wait costs almost no CPU).
class Poll {
 public:
  explicit Poll(double timeout_seconds)
      : deadline_(std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(timeout_seconds))) {}
  bool expired() const { return std::chrono::steady_clock::now() >= deadline_; }
  void pause() {
    std::this_thread::sleep_for(pause_);
    pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
  }

 private:
  std::chrono::steady_clock::time_point deadline_;
  std::chrono::microseconds pause_{50};
};

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", seconds);
  return text;
}

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& comm, int device, double timeout_seconds)
    : rank_(comm.rank()), size_(comm.size()), device_(device), timeout_seconds_(timeout_seconds) {
  if (!(timeout_seconds > 0))
    throw Error("NCCL communicator: the timeout must be positive (got " + seconds_text(timeout_seconds) + " s)");
  CUDA_CHECK(cudaSetDevice(device));

  std::string message;
  if (rank_ == 0) {
    ncclUniqueId id{};
    const ncclResult_t status = ncclGetUniqueId(&id);
    if (status == ncclSuccess) {
      message.assign(1, kIdTag);
      message.append(reinterpret_cast<const char*>(&id), sizeof id);
    } else {
      message.assign(1, kErrorTag);
      message += describe(status);
    }
  }
  comm.broadcast(message, 0);
  const std::string where = "NCCL on rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": ";
  if (!message.empty() && message[0] == kErrorTag)
    throw Error(where + "rank 0 could not create the NCCL id: " + message.substr(1));
  if (message.size() != 1 + sizeof(ncclUniqueId) || message[0] != kIdTag)
    throw Error(where + "the NCCL id from rank 0 is malformed (" + std::to_string(message.size()) + " bytes, " +
                std::to_string(1 + sizeof(ncclUniqueId)) + " expected)");
  ncclUniqueId id{};
  std::memcpy(&id, message.data() + 1, sizeof id);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // initialisation returns at once; settle() bounds the wait for the peers
  settle(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "initialisation");
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  // Unwinding: this rank is leaving because of an error, and a flush could wait on peers for the timeout.
  if (failed_ || std::uncaught_exceptions() > 0) {
    (void)ncclCommAbort(comm_);
    return;
  }
  ncclResult_t status = ncclCommFinalize(comm_);
  Poll poll(timeout_seconds_);
  while (status == ncclInProgress && !poll.expired()) {
    poll.pause();
    if (ncclCommGetAsyncError(comm_, &status) != ncclSuccess) status = ncclInternalError;
  }
  if (status == ncclSuccess) (void)ncclCommDestroy(comm_);
  else (void)ncclCommAbort(comm_);  // a failed or stuck flush: a peer is gone
}

void NcclCommunicator::allreduce_sum(float* device_buffer, std::size_t count, cudaStream_t stream) {
  allreduce(device_buffer, count, ncclFloat, stream);
}

void NcclCommunicator::allreduce(void* device_buffer, std::size_t count, ncclDataType_t type, cudaStream_t stream) {
  if (failed_) fail("allreduce", "refused: the communicator was aborted after an earlier error");
  if (count == 0) return;
  settle(ncclAllReduce(device_buffer, device_buffer, count, type, ncclSum, comm_, stream), "enqueueing an allreduce");
}

void NcclCommunicator::wait(cudaEvent_t done, const char* what) {
  if (failed_) fail(what, "refused: the communicator was aborted after an earlier error");
  Poll poll(timeout_seconds_);
  for (;;) {
    const cudaError_t event = cudaEventQuery(done);
    if (event == cudaSuccess) return;
    if (event != cudaErrorNotReady) {
      (void)cudaGetLastError();
      fail(what, std::string("failed on the device: ") + cudaGetErrorName(event) + ": " + cudaGetErrorString(event));
    }
    ncclResult_t state = ncclSuccess;
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    if (query != ncclSuccess) fail(what, "failed: ncclCommGetAsyncError: " + describe(query));
    if (state != ncclSuccess && state != ncclInProgress) fail(what, "failed: " + describe(state));
    if (poll.expired()) fail(what, "timed out after " + seconds_text(timeout_seconds_) + " s: a peer may be gone");
    poll.pause();
  }
}

void NcclCommunicator::settle(ncclResult_t status, const char* what) {
  if (status == ncclSuccess) return;
  if (status != ncclInProgress) fail(what, "failed: " + describe(status));
  Poll poll(timeout_seconds_);
  for (;;) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    if (query != ncclSuccess) fail(what, "failed: ncclCommGetAsyncError: " + describe(query));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) fail(what, "failed: " + describe(state));
    if (poll.expired()) fail(what, "timed out after " + seconds_text(timeout_seconds_) + " s: a peer may be gone");
    poll.pause();
  }
}

void NcclCommunicator::fail(const char* what, const std::string& reason) {
  if (comm_ != nullptr) {
    (void)ncclCommAbort(comm_);  // stops this rank's NCCL kernels, so its streams drain instead of hanging
    comm_ = nullptr;
  }
  failed_ = true;
  throw Error("NCCL on rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": " + what + " " +
              reason);
}

std::string NcclCommunicator::describe(ncclResult_t status) const {
  std::string text = ncclGetErrorString(status);
  // The last error's details (which peer, which call); NCCL keeps them per thread, comm_ may be null.
  const char* detail = ncclGetLastError(comm_);
  if (detail != nullptr && detail[0] != '\0') text += std::string(" (") + detail + ")";
  return one_line(text);
}

}  // namespace slearn::cuda
