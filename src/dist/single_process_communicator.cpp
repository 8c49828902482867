#include "slearn/communicator.hpp"

namespace slearn {
namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(std::span<float>) override {}
  void allreduce_sum(std::span<double>) override {}
  void allreduce_sum(std::span<std::int64_t>) override {}
  std::vector<std::int64_t> allgather(std::span<const std::int64_t> values) override {
    return {values.begin(), values.end()};
  }
  void broadcast(std::string&, int) override {}
  bool any(bool flag) override { return flag; }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

}  // namespace slearn
