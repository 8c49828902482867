// The CPU sampler (rules in slearn/sampling.hpp). Sorting the whole vocabulary for every sampled token is
// what the rules describe but not what they need: top-p and the draw only ever look at a prefix of the
// order, usually a few hundred tokens out of ~10^5. So the order is built lazily: `SortedPrefix` keeps the
// first m candidates sorted and, when a walk needs more, selects the next block with nth_element (linear)
// and sorts only that block, growing m by 8x (64, 512, 4096, ...). The running sums are taken over exactly
// the same tokens in exactly the same order as a full sort would give (the order is a strict total order:
// logit, then id), so the result is bit for bit that of the full-sort definition. Only the total weight,
// which needs every candidate, is summed in id order, in one pass that needs no order at all.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/sampling.hpp"

namespace slearn {
namespace {

// The order of the candidates: higher logit first, then lower id (a strict total order without NaN).
bool comes_before(std::span<const float> logits, std::int32_t a, std::int32_t b) {
  const float la = logits[static_cast<std::size_t>(a)], lb = logits[static_cast<std::size_t>(b)];
  return la > lb || (la == lb && a < b);
}

// The first `size()` entries of `order` are the first candidates of the order, sorted; the rest of
// [0, end) holds the other candidates in no particular order.
class SortedPrefix {
 public:
  SortedPrefix(std::span<const float> logits, std::vector<std::int32_t>& order, std::size_t end)
      : logits_(logits), order_(order), end_(end) {}

  std::size_t size() const { return sorted_; }

  // Sorts at least one more candidate (there must be one left).
  void grow() {
    const std::size_t target = std::min(end_, std::max<std::size_t>(kFirstBlock, sorted_ * 8));
    auto before = [this](std::int32_t a, std::int32_t b) { return comes_before(logits_, a, b); };
    const auto first = order_.begin() + static_cast<std::ptrdiff_t>(sorted_);
    const auto middle = order_.begin() + static_cast<std::ptrdiff_t>(target);
    if (target < end_) std::nth_element(first, middle, order_.begin() + static_cast<std::ptrdiff_t>(end_), before);
    std::sort(first, middle, before);
    sorted_ = target;
  }

 private:
  static constexpr std::size_t kFirstBlock = 64;
  std::span<const float> logits_;
  std::vector<std::int32_t>& order_;
  std::size_t end_, sorted_ = 0;
};

}  // namespace

void check_sampling_options(const SamplingOptions& options) {
  // Written so that NaN fails them (every comparison with NaN is false); an infinite temperature would make
  // every token equally likely, which no caller means.
  if (!(options.temperature >= 0) || !std::isfinite(options.temperature))
    throw InputError("temperature must be a finite number >= 0, got " + std::to_string(options.temperature));
  if (!(options.top_p > 0 && options.top_p <= 1))
    throw InputError("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  if (options.top_k < 0) throw InputError("top_k must be >= 0");
}

TokenId sample_token(std::span<const float> logits, const SamplingOptions& options, std::uint64_t stream,
                     std::uint64_t step) {
  if (logits.empty()) throw Error("sample_token: empty logits");
  if (logits.size() > static_cast<std::size_t>(std::numeric_limits<TokenId>::max()))
    throw Error("sample_token: " + std::to_string(logits.size()) + " logits exceed the token id range");
  check_sampling_options(options);
  const std::size_t n = logits.size();

  // The first token of the order (argmax, lowest id on ties); NaN would break the order.
  std::size_t best = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::isnan(logits[i])) throw Error("sample_token: logit " + std::to_string(i) + " is NaN");
    if (logits[i] > logits[best]) best = i;
  }
  if (options.temperature == 0.0) return static_cast<TokenId>(best);
  const double inv_t = 1.0 / options.temperature;
  const double top = static_cast<double>(logits[best]) * inv_t;
  if (!std::isfinite(top)) return static_cast<TokenId>(best);
  auto weight = [&](std::int32_t id) { return sample_weight(logits[static_cast<std::size_t>(id)], inv_t, top); };

  // Candidates: with top-k, [0, candidates) of `order` holds every token whose logit is >= the k-th's.
  std::vector<std::int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::size_t candidates = n;
  float kth = -std::numeric_limits<float>::infinity();
  if (options.top_k > 0 && static_cast<std::uint64_t>(options.top_k) < n) {
    const auto k = static_cast<std::ptrdiff_t>(options.top_k);
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(),
                     [&](std::int32_t a, std::int32_t b) { return comes_before(logits, a, b); });
    kth = logits[static_cast<std::size_t>(order[static_cast<std::size_t>(k - 1)])];
    // [0, k) are all >= kth already; the tokens tied with the k-th may lie anywhere after.
    candidates = static_cast<std::size_t>(std::partition(order.begin() + k, order.end(), [&](std::int32_t id) {
                   return logits[static_cast<std::size_t>(id)] >= kth;
                 }) - order.begin());
  }
  double total = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (candidates == n || logits[i] >= kth) total += weight(static_cast<std::int32_t>(i));

  SortedPrefix prefix(logits, order, candidates);
  std::size_t count = candidates;  // the kept tokens are order[0, count)
  double kept = total;
  if (options.top_p < 1.0) {
    double cumulative = 0, mass = 0;
    for (std::size_t i = 0; i < candidates; ++i) {
      if (i == prefix.size()) prefix.grow();
      const double w = weight(order[i]);
      cumulative += w / total;
      mass += w;
      if (cumulative >= options.top_p) {
        count = i + 1;
        kept = mass;
        break;
      }
    }
  }

  const double u = sample_uniform(options.seed, stream, step) * kept;
  double acc = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (i == prefix.size()) prefix.grow();
    acc += weight(order[i]);
    if (u < acc) return order[i];
  }
  return order[count - 1];  // sorted: the loop above went through all of [0, count)
}

}  // namespace slearn
