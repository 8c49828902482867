// The CUDA backend's entry points, for make_backend (src/model/cpu_backend.cpp) in builds with
// SLEARN_WITH_CUDA. Everything else of the backend lives in cuda_backend.cpp.
#pragma once

#include <memory>

#include "slearn/backend.hpp"

namespace slearn {

// Visible CUDA devices: 0 when there is no device (cudaErrorNoDevice, a count of 0, or no NVIDIA driver
// installed at all); any other failure (an old driver, a broken install) throws slearn::Error naming the
// CUDA error, so that "auto" refuses instead of falling back to the CPU.
int cuda_device_count();
// The bf16 CUDA backend on this rank's device: cudaSetDevice(choose_local_device(...)) by local rank
// (slearn/device_binding.hpp); InputError when no usable device is visible or the node has more ranks than
// visible devices.
std::unique_ptr<Backend> make_cuda_backend();

}  // namespace slearn
