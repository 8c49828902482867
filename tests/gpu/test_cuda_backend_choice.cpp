// When the GPU tests run, skip or fail, and what `auto` picks: the rules of gpu_test_util.hpp and
// make_backend, checked on whatever machine this is (these tests never skip). Without a device: `auto` is
// the CPU backend, `cuda` an InputError, a GPU test skips and under SLEARN_EXPECT_GPU=1 fails; with one:
// both give the CUDA backend and GPU tests run; with a broken CUDA install (cuda_device_count() throws):
// `auto` refuses with that error and GPU tests fail.
#include <gtest/gtest-spi.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <optional>

#include "gpu_test_util.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

using namespace gpu_testing;

// cuda_device_count(), or the message it threw.
struct DeviceCount {
  int count = 0;
  std::string error;
};
DeviceCount probe() {
  DeviceCount result;
  try {
    result.count = cuda_device_count();
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}

// Sets or removes an environment variable for the scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(CudaBackendChoice, AutoFollowsTheDeviceCountAndRefusesABrokenInstall) {
  const DeviceCount found = probe();
  if (!found.error.empty()) {
    // A CUDA failure other than "no device": auto must refuse with it, never fall back to the CPU.
    try {
      auto chosen = make_backend("auto");
      ADD_FAILURE() << "cuda_device_count() threw \"" << found.error << "\" but auto chose " << chosen->name();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(found.error), std::string::npos)
          << "auto refused with \"" << e.what() << "\", not with the CUDA error \"" << found.error << "\"";
    }
    std::printf("[ measured ] CUDA is broken here: %s\n", found.error.c_str());
    return;
  }
  ASSERT_GE(found.count, 0);
  auto chosen = make_backend("auto");
  if (found.count > 0) {
    EXPECT_EQ(chosen->name(), "cuda");
    EXPECT_EQ(make_backend("cuda")->name(), "cuda");
  } else {
    EXPECT_EQ(chosen->name(), "cpu");
    EXPECT_THROW(make_backend("cuda"), InputError);
  }
  std::printf("[ measured ] %d CUDA device(s) visible; auto chose %s\n", found.count,
              std::string(chosen->name()).c_str());
}

TEST(CudaBackendChoice, SkipOnlyWithoutADeviceAndNeverUnderExpectGpu) {
  // The decision itself, for every case (pure function).
  EXPECT_EQ(decide_gpu_test(0, "", false).verdict, GpuVerdict::Skip);
  EXPECT_EQ(decide_gpu_test(0, "", true).verdict, GpuVerdict::Fail);
  EXPECT_NE(decide_gpu_test(0, "", true).reason.find("SLEARN_EXPECT_GPU=1"), std::string::npos);
  EXPECT_EQ(decide_gpu_test(1, "", false).verdict, GpuVerdict::Run);
  EXPECT_EQ(decide_gpu_test(8, "", true).verdict, GpuVerdict::Run);
  const std::string driver = "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version";
  for (const bool expected : {false, true}) {
    const GpuDecision broken = decide_gpu_test(0, driver, expected);
    EXPECT_EQ(broken.verdict, GpuVerdict::Fail);
    EXPECT_NE(broken.reason.find(driver), std::string::npos) << broken.reason;
  }

  // The environment switch: exactly "1" turns it on.
  {
    ScopedEnv on("SLEARN_EXPECT_GPU", "1");
    EXPECT_TRUE(gpu_expected());
  }
  for (const char* value : {"0", "", "yes"}) {
    ScopedEnv off("SLEARN_EXPECT_GPU", value);
    EXPECT_FALSE(gpu_expected()) << "SLEARN_EXPECT_GPU=" << value;
  }
  {
    ScopedEnv unset("SLEARN_EXPECT_GPU", nullptr);
    EXPECT_FALSE(gpu_expected());
  }

  // What open_gpu_backend does on this machine, both ways.
  const DeviceCount found = probe();
  for (const bool expected : {false, true}) {
    ScopedEnv env("SLEARN_EXPECT_GPU", expected ? "1" : nullptr);
    std::unique_ptr<Backend> backend;
    const GpuDecision decision = open_gpu_backend(backend);
    if (!found.error.empty()) {
      EXPECT_EQ(decision.verdict, GpuVerdict::Fail) << decision.reason;
    } else if (found.count > 0) {
      EXPECT_EQ(decision.verdict, GpuVerdict::Run) << decision.reason;
      ASSERT_NE(backend, nullptr);
      EXPECT_EQ(backend->name(), "cuda");
    } else {
      EXPECT_EQ(decision.verdict, expected ? GpuVerdict::Fail : GpuVerdict::Skip) << decision.reason;
      EXPECT_EQ(backend, nullptr);
    }
  }
}

// The macro as a test body uses it: where there is no usable GPU, under SLEARN_EXPECT_GPU=1 it fails.
void require_gpu_body() {
  SLEARN_REQUIRE_GPU(backend);
  ASSERT_NE(backend, nullptr);
}

TEST(CudaBackendChoice, RequireGpuFailsUnderExpectGpuWithoutAUsableDevice) {
  const DeviceCount found = probe();
  ScopedEnv env("SLEARN_EXPECT_GPU", "1");
  if (found.error.empty() && found.count > 0) {
    require_gpu_body();  // a device: the body runs and passes
    return;
  }
  EXPECT_FATAL_FAILURE(require_gpu_body(), found.error.empty() ? "SLEARN_EXPECT_GPU=1" : "unusable");
}

// The exit status of this very binary (main.cpp) running one GPU test: 77 ("Skipped" for ctest) only when
// that test skipped and SLEARN_EXPECT_GPU is not 1.
int run_self(const std::string& environment, const std::string& filter) {
  char path[PATH_MAX];
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (length <= 0) return -1;
  path[length] = '\0';
  const std::string command =
      environment + " '" + std::string(path) + "' --gtest_filter=" + filter + " > /dev/null 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(CudaBackendChoice, MainReportsSkipsOnlyWithoutExpectGpu) {
  const DeviceCount found = probe();
  const std::string gpu_test = "CudaOps.UploadAndToHostRoundTripBf16Values";
  const int plain = run_self("env -u SLEARN_EXPECT_GPU", gpu_test);
  const int expected = run_self("env SLEARN_EXPECT_GPU=1", gpu_test);
  if (!found.error.empty()) {
    EXPECT_EQ(plain, 1);
    EXPECT_EQ(expected, 1);
  } else if (found.count > 0) {
    EXPECT_EQ(plain, 0);
    EXPECT_EQ(expected, 0);
  } else {
    EXPECT_EQ(plain, 77);
    EXPECT_EQ(expected, 1);
  }
  // A run where every selected test passes without a GPU is a plain success either way.
  const std::string everywhere = "CudaBackendChoice.SkipOnlyWithoutADeviceAndNeverUnderExpectGpu";
  EXPECT_EQ(run_self("env -u SLEARN_EXPECT_GPU", everywhere), 0);
  EXPECT_EQ(run_self("env SLEARN_EXPECT_GPU=1", everywhere), 0);
}

}  // namespace
}  // namespace slearn
