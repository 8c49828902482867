// The CUDA gradient sum (kernels/cuda/cuda_gradient_sum.cpp) in one process: the buffer it hands out, the
// zeroing of begin_step, values left as they are by a sum over one rank (with buckets smaller than the
// buffer and ready_from called as a backward would), ready_from's range check, an empty buffer, and the
// same through CudaBackend::make_gradient_sum. The sum across ranks (NCCL, or the host-staged fallback)
// needs several processes and GPUs and is not tested here.
//
// With NCCL in the build, the NcclCommunicator (kernels/cuda/nccl_communicator.cpp) in one process too: a
// one-rank communicator's allreduce and bounded wait; and, through a fake Communicator that plays rank 1 of
// 2, the error rank 0 broadcasts in place of the id, a malformed id, and an initialisation whose peer never
// comes, which must end in an Error after the timeout instead of hanging. And the NCCL group sum of a sharded
// model (cuda_group_sum.cpp) over one rank.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cuda/cuda_check.hpp"
#include "cuda/cuda_gradient_sum.hpp"
#include "cuda/device_memory.hpp"
#include "gpu_test_util.hpp"
#ifdef SLEARN_WITH_NCCL
#include <nccl.h>

#include "cuda/cuda_group_sum.hpp"
#include "cuda/nccl_communicator.hpp"
#endif
#include "slearn/communicator.hpp"
#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "slearn/gradient_sum.hpp"

namespace slearn {
namespace {

// The buffer's values, read on the context's stream after everything queued on it.
std::vector<float> read_buffer(cuda::DeviceContext& context, const Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  if (out.empty()) return out;
  CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data(), t.bytes(), cudaMemcpyDeviceToHost, context.stream()));
  CUDA_CHECK(cudaStreamSynchronize(context.stream()));
  return out;
}

void write_buffer(cuda::DeviceContext& context, Tensor& t, const std::vector<float>& values) {
  ASSERT_EQ(values.size(), static_cast<std::size_t>(t.numel()));
  CUDA_CHECK(cudaMemcpyAsync(t.data(), values.data(), t.bytes(), cudaMemcpyHostToDevice, context.stream()));
  CUDA_CHECK(cudaStreamSynchronize(context.stream()));
}

std::shared_ptr<cuda::DeviceContext> current_device_context() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));  // the device the backend of SLEARN_REQUIRE_GPU chose
  return std::make_shared<cuda::DeviceContext>(device);
}

TEST(CudaGradientSum, SingleProcessKeepsTheValuesAndZeroesEachStep) {
  SLEARN_REQUIRE_GPU(backend);
  const auto context = current_device_context();
  const auto comm = make_single_process_communicator();
  constexpr std::int64_t kElements = 1000;
  // Buckets of 64: 16 buckets, the last (from the buffer's start) 40 elements long.
  auto sum = cuda::make_cuda_gradient_sum(context, *comm, kElements, GradientSumOptions{64, 5.0});

  Tensor& g = sum->gradients();
  EXPECT_EQ(g.device(), Device::CUDA);
  EXPECT_EQ(g.dtype(), DType::F32);
  EXPECT_EQ(g.shape(), std::vector<std::int64_t>{kElements});
  EXPECT_EQ(g.name(), "gradients");
  for (float x : read_buffer(*context, g)) ASSERT_EQ(x, 0.0f) << "a new buffer starts at zero";

  for (int step = 0; step < 3; ++step) {
    write_buffer(*context, g, std::vector<float>(kElements, -7.0f));  // last step's leftovers
    sum->begin_step();
    for (float x : read_buffer(*context, g)) ASSERT_EQ(x, 0.0f) << "begin_step zeroes, step " << step;

    const std::vector<float> values = gpu_testing::random_bf16(kElements, 3.0f, 17u + static_cast<unsigned>(step));
    sum->begin_micro_batch();
    write_buffer(*context, g, values);  // what the backward would have accumulated
    // As the last micro-batch's backward finishes layers from the end: some buckets whole, some not.
    for (std::int64_t begin : {kElements, std::int64_t{900}, std::int64_t{640}, std::int64_t{333}, std::int64_t{0}})
      sum->ready_from(begin);
    sum->end_micro_batch();
    sum->finish();
    EXPECT_EQ(read_buffer(*context, g), values) << "a sum over one rank leaves the values as they are, step " << step;
    EXPECT_EQ(sum->bytes_reduced(), 0) << "one rank sends nothing";
  }
}

TEST(CudaGradientSum, ReadyFromOutsideTheBufferThrows) {
  SLEARN_REQUIRE_GPU(backend);
  const auto context = current_device_context();
  const auto comm = make_single_process_communicator();
  auto sum = cuda::make_cuda_gradient_sum(context, *comm, 100, GradientSumOptions{});
  sum->begin_step();
  EXPECT_THROW(sum->ready_from(-1), Error);
  EXPECT_THROW(sum->ready_from(101), Error);
  EXPECT_NO_THROW(sum->ready_from(100));
  EXPECT_NO_THROW(sum->finish());
}

TEST(CudaGradientSum, EmptyBuffer) {
  SLEARN_REQUIRE_GPU(backend);
  const auto context = current_device_context();
  const auto comm = make_single_process_communicator();
  auto sum = cuda::make_cuda_gradient_sum(context, *comm, 0, GradientSumOptions{8, 5.0});
  EXPECT_EQ(sum->gradients().numel(), 0);
  sum->begin_step();
  sum->ready_from(0);
  sum->finish();
  EXPECT_EQ(sum->bytes_reduced(), 0);
}

TEST(CudaGradientSum, ThroughTheBackend) {
  SLEARN_REQUIRE_GPU(backend);
  const auto comm = make_single_process_communicator();
  constexpr std::int64_t kElements = 4099;  // not a multiple of the bucket
  auto sum = backend->make_gradient_sum(*comm, kElements, GradientSumOptions{1024, 5.0});
  Tensor& g = sum->gradients();
  ASSERT_EQ(g.device(), Device::CUDA);
  ASSERT_EQ(g.dtype(), DType::F32);
  ASSERT_EQ(g.numel(), kElements);

  backend->write(g, std::vector<float>(kElements, 5.0f));
  sum->begin_step();
  EXPECT_EQ(gpu_testing::fetch(*backend, g), std::vector<float>(kElements, 0.0f));
  const std::vector<float> values = gpu_testing::random_bf16(kElements, 1.0f, 99u);
  sum->begin_micro_batch();
  backend->write(g, values);
  sum->end_micro_batch();
  sum->ready_from(2048);
  sum->finish();
  EXPECT_EQ(gpu_testing::fetch(*backend, g), values);
  EXPECT_EQ(sum->bytes_reduced(), 0);
}

#ifdef SLEARN_WITH_NCCL

// Plays rank `rank` of `size`: broadcast hands every caller `from_root`, as if rank 0 had sent it.
class ScriptedCommunicator final : public Communicator {
 public:
  ScriptedCommunicator(int rank, int size, std::string from_root)
      : rank_(rank), size_(size), from_root_(std::move(from_root)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(std::span<float>) override { unexpected(); }
  void allreduce_sum(std::span<double>) override { unexpected(); }
  void allreduce_sum(std::span<std::int64_t>) override { unexpected(); }
  std::vector<std::int64_t> allgather(std::span<const std::int64_t>) override { unexpected(); }
  void broadcast(std::string& text, int) override { text = from_root_; }
  bool any(bool) override { unexpected(); }
  void barrier() override { unexpected(); }
  std::unique_ptr<Communicator> split(int, int) override { unexpected(); }
  void allgather(std::span<const float>, std::span<float>) override { unexpected(); }
  void broadcast(std::span<float>, int) override { unexpected(); }
  void broadcast(std::span<std::int32_t>, int) override { unexpected(); }

 private:
  [[noreturn]] static void unexpected() { throw Error("ScriptedCommunicator: only broadcast is scripted"); }
  int rank_, size_;
  std::string from_root_;
};

std::string error_text(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NcclCommunicator, OneRankSumsAndWaits) {
  SLEARN_REQUIRE_GPU(backend);
  const auto context = current_device_context();
  const auto comm = make_single_process_communicator();
  cuda::NcclCommunicator nccl(*comm, context->device(), 30.0);
  EXPECT_EQ(nccl.rank(), 0);
  EXPECT_EQ(nccl.size(), 1);
  constexpr std::int64_t kElements = 3000;
  std::shared_ptr<void> memory = cuda::device_alloc(context, kElements * sizeof(float), "allreduce test");
  Tensor t(memory, memory.get(), DType::F32, Device::CUDA, {kElements}, "allreduce test");
  const std::vector<float> values = gpu_testing::random_bf16(kElements, 2.0f, 5u);
  write_buffer(*context, t, values);
  cudaEvent_t done = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  nccl.allreduce_sum(static_cast<float*>(t.data()), static_cast<std::size_t>(kElements), context->stream());
  CUDA_CHECK(cudaEventRecord(done, context->stream()));
  nccl.wait(done, "the test's allreduce");
  CUDA_CHECK(cudaEventDestroy(done));
  EXPECT_EQ(read_buffer(*context, t), values) << "a sum over one rank";
}

// The NCCL group sum of a sharded model (cuda_group_sum.cpp) over one rank: fp32 and bf16 tensors keep their
// values (bf16-exact inputs), wait() returns, and a host tensor or another dtype is refused by name.
TEST(NcclGroupSum, OneRankKeepsFp32AndBf16ValuesAndRefusesOthers) {
  SLEARN_REQUIRE_GPU(backend);
  const auto context = current_device_context();
  const auto comm = make_single_process_communicator();
  auto sum = cuda::make_nccl_group_sum(context, *comm, 30.0);
  constexpr std::int64_t kElements = 2053;
  const std::vector<float> values = gpu_testing::random_bf16(kElements, 4.0f, 11u);

  std::shared_ptr<void> f32_memory = cuda::device_alloc(context, kElements * sizeof(float), "group sum fp32");
  Tensor f32(f32_memory, f32_memory.get(), DType::F32, Device::CUDA, {kElements}, "partial.f32");
  write_buffer(*context, f32, values);
  sum->sum(f32);
  sum->wait("the test's fp32 sum");
  EXPECT_EQ(read_buffer(*context, f32), values);

  std::vector<std::uint16_t> bits(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) bits[i] = f32_to_bf16(values[i]);
  std::shared_ptr<void> bf16_memory = cuda::device_alloc(context, kElements * 2, "group sum bf16");
  Tensor bf16(bf16_memory, bf16_memory.get(), DType::BF16, Device::CUDA, {kElements}, "partial.bf16");
  CUDA_CHECK(cudaMemcpyAsync(bf16.data(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice, context->stream()));
  sum->sum(bf16);
  sum->sum(bf16);  // two in a row, one wait for both
  sum->wait("the test's bf16 sums");
  std::vector<std::uint16_t> back(bits.size());
  CUDA_CHECK(cudaMemcpyAsync(back.data(), bf16.data(), back.size() * 2, cudaMemcpyDeviceToHost, context->stream()));
  CUDA_CHECK(cudaStreamSynchronize(context->stream()));
  EXPECT_EQ(back, bits);
  sum->wait("nothing pending");  // returns at once

  Tensor host = Tensor::host_f32({4}, "host.partial");
  EXPECT_NE(error_text([&] { sum->sum(host); }).find("'host.partial' is not a device tensor"), std::string::npos);
}

TEST(NcclCommunicator, RankZerosErrorReachesEveryRank) {
  SLEARN_REQUIRE_GPU(backend);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  ScriptedCommunicator comm(1, 2, std::string("E") + "no network interface");
  const std::string message = error_text([&] { cuda::NcclCommunicator nccl(comm, device, 5.0); });
  EXPECT_NE(message.find("rank 1 of 2"), std::string::npos) << message;
  EXPECT_NE(message.find("rank 0 could not create the NCCL id: no network interface"), std::string::npos) << message;
}

TEST(NcclCommunicator, MalformedIdIsAnError) {
  SLEARN_REQUIRE_GPU(backend);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  ScriptedCommunicator comm(1, 2, "I too short");
  const std::string message = error_text([&] { cuda::NcclCommunicator nccl(comm, device, 5.0); });
  EXPECT_NE(message.find("malformed"), std::string::npos) << message;
}

// Rank 1 of 2 joins with a real id whose rank 0 never comes: the bounded initialisation must give up.
TEST(NcclCommunicator, MissingPeerTimesOut) {
  SLEARN_REQUIRE_GPU(backend);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  ncclUniqueId id{};
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ScriptedCommunicator comm(1, 2, std::string("I") + std::string(reinterpret_cast<const char*>(&id), sizeof id));
  const auto start = std::chrono::steady_clock::now();
  const std::string message = error_text([&] { cuda::NcclCommunicator nccl(comm, device, 2.0); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ measured ] the missing peer was reported after %.2f s\n", seconds);
  EXPECT_NE(message.find("rank 1 of 2"), std::string::npos) << message;
  EXPECT_NE(message.find("timed out after 2 s"), std::string::npos) << message;
  EXPECT_LT(seconds, 30.0);
}

#endif  // SLEARN_WITH_NCCL

}  // namespace
}  // namespace slearn
