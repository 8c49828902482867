// HostGradientSum (host_gradient_sum.hpp).
//
// Each micro-batch's gradient is computed alone (its buffer zeroed first) and added into double sums, which
// the allreduce adds in double too: float sums grouped by rank would round differently for each world size,
// and Adam would carry the difference into the adapter. So the adapter is the same for 1, 2 or 4 ranks (up to
// the order MPI adds the doubles in, which the final rounding to fp32 almost always hides).
//
// The buckets are summed when finish() is called: a host backward has no stream to overlap with, and
// ready_from only checks its argument.
#include "dist/host_gradient_sum.hpp"

#include <algorithm>
#include <vector>

#include "slearn/error.hpp"

namespace slearn {

namespace {

class HostGradientSum final : public GradientSum {
 public:
  HostGradientSum(Communicator& comm, std::int64_t elements, const GradientSumOptions& options)
      : comm_(comm),
        gradients_(Tensor::host_f32({elements}, "gradients")),
        sums_(static_cast<std::size_t>(elements), 0.0),
        buckets_(gradient_buckets(elements, options.bucket_elements)) {}

  Tensor& gradients() override { return gradients_; }
  void begin_step() override {
    std::fill(sums_.begin(), sums_.end(), 0.0);
    bytes_ = 0;
  }
  void begin_micro_batch() override { std::fill_n(gradients_.f32(), gradients_.numel(), 0.0f); }
  void end_micro_batch() override {
    const float* g = gradients_.f32();
    double* sum = sums_.data();
    const std::int64_t n = gradients_.numel();
    for (std::int64_t k = 0; k < n; ++k) sum[k] += g[k];
  }
  void ready_from(std::int64_t begin) override {
    if (begin < 0 || begin > gradients_.numel())
      throw Error("gradient sum: ready_from(" + std::to_string(begin) + ") outside the buffer");
  }
  void finish() override {
    for (const auto& [begin, end] : buckets_) {
      comm_.allreduce_sum(std::span<double>(sums_.data() + begin, static_cast<std::size_t>(end - begin)));
      bytes_ += (end - begin) * static_cast<std::int64_t>(sizeof(double));
    }
    float* g = gradients_.f32();
    for (std::size_t k = 0; k < sums_.size(); ++k) g[k] = static_cast<float>(sums_[k]);
  }
  std::int64_t bytes_reduced() const override { return comm_.size() > 1 ? bytes_ : 0; }

 private:
  Communicator& comm_;
  Tensor gradients_;
  std::vector<double> sums_;
  std::vector<std::pair<std::int64_t, std::int64_t>> buckets_;
  std::int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<GradientSum> make_host_gradient_sum(Communicator& comm, std::int64_t elements,
                                                    const GradientSumOptions& options) {
  return std::make_unique<HostGradientSum>(comm, elements, options);
}

}  // namespace slearn
