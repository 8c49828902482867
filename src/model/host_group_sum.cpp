// The host path of GroupSum (slearn/group_sum.hpp): a host fp32 tensor is summed in place over the group's
// Communicator; any other (a device tensor, bf16) is staged through an fp32 host buffer kept between calls.
// Every sum is done when sum() returns, so wait() has nothing to wait for.
#include <span>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/communicator.hpp"
#include "slearn/group_sum.hpp"

namespace slearn {
namespace {

class HostGroupSum final : public GroupSum {
 public:
  HostGroupSum(Backend& backend, Communicator& group) : backend_(backend), group_(group) {}

  void sum(Tensor& partial) override {
    const auto count = static_cast<std::size_t>(partial.numel());
    if (partial.device() == Device::CPU && partial.dtype() == DType::F32) {
      group_.allreduce_sum(std::span<float>(partial.f32(), count));
      return;
    }
    staging_.resize(count);
    backend_.to_host(partial, staging_);
    group_.allreduce_sum(std::span<float>(staging_));
    backend_.write(partial, staging_);
  }
  void wait(const char* /*what*/) override {}

 private:
  Backend& backend_;
  Communicator& group_;
  std::vector<float> staging_;
};

}  // namespace

std::unique_ptr<GroupSum> make_host_group_sum(Backend& backend, Communicator& group) {
  return std::make_unique<HostGroupSum>(backend, group);
}

}  // namespace slearn
