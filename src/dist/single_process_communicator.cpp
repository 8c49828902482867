#include <algorithm>
#include <string>

#include "slearn/communicator.hpp"
#include "slearn/error.hpp"

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
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleProcess>(); }
  void allgather(std::span<const float> values, std::span<float> out) override {
    if (out.size() != values.size())
      throw Error("allgather: " + std::to_string(out.size()) + " places for " + std::to_string(values.size()) +
                  " values of one rank");
    std::copy(values.begin(), values.end(), out.begin());
  }
  void broadcast(std::span<float>, int root) override { check_root(root); }
  void broadcast(std::span<std::int32_t>, int root) override { check_root(root); }

 private:
  static void check_root(int root) {
    if (root != 0) throw Error("broadcast: root " + std::to_string(root) + " is not a rank (there is 1)");
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

}  // namespace slearn
