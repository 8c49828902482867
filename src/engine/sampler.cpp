#include <algorithm>
#include <cmath>
#include <numeric>

#include "slearn/error.hpp"
#include "slearn/generate.hpp"

namespace slearn {

std::mt19937_64 sequence_rng(std::uint64_t seed, std::uint64_t index) {
  // splitmix64 of (seed, index): nearby seeds and indices give unrelated streams.
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return std::mt19937_64(z ^ (z >> 31));
}

TokenId sample_token(std::span<const float> logits, const SamplingOptions& options, std::mt19937_64& rng) {
  if (logits.empty()) throw Error("sample_token: empty logits");
  // Written so that NaN fails them (every comparison with NaN is false); an infinite temperature would make
  // every token equally likely, which no caller means.
  if (!(options.temperature >= 0) || !std::isfinite(options.temperature))
    throw InputError("temperature must be a finite number >= 0, got " + std::to_string(options.temperature));
  if (!(options.top_p > 0 && options.top_p <= 1))
    throw InputError("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  if (options.top_k < 0) throw InputError("top_k must be >= 0");
  if (options.temperature == 0.0)
    return static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates sorted by logit, highest first; ties keep the lower id first so the order is deterministic.
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::size_t keep = logits.size();
  if (options.top_k > 0) keep = std::min<std::size_t>(keep, static_cast<std::size_t>(options.top_k));
  auto by_logit = [&](std::int32_t a, std::int32_t b) {
    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)] ||
           (logits[static_cast<std::size_t>(a)] == logits[static_cast<std::size_t>(b)] && a < b);
  };
  if (keep < order.size()) {
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), by_logit);
    // top-k keeps every token tied with the k-th, as torch.topk's threshold comparison does.
    const float kth = logits[static_cast<std::size_t>(order[keep - 1])];
    order.resize(keep);
    for (std::size_t i = 0; i < logits.size(); ++i)
      if (logits[i] == kth && std::find(order.begin(), order.end(), static_cast<std::int32_t>(i)) == order.end())
        order.push_back(static_cast<std::int32_t>(i));
    std::sort(order.begin(), order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }

  const double inv_t = 1.0 / options.temperature;
  const double top = logits[static_cast<std::size_t>(order[0])] * inv_t;
  std::vector<double> probs(order.size());
  double total = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    probs[i] = std::exp(logits[static_cast<std::size_t>(order[i])] * inv_t - top);
    total += probs[i];
  }
  // top-p: the smallest prefix whose probability reaches top_p (at least one token).
  std::size_t count = order.size();
  if (options.top_p < 1.0) {
    double cumulative = 0;
    for (std::size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= options.top_p) {
        count = i + 1;
        break;
      }
    }
  }
  double kept = std::accumulate(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(count), 0.0);
  // A uniform double in [0, 1) from the top 53 bits: the same on every platform, unlike std distributions.
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * kept;
  double acc = 0;
  for (std::size_t i = 0; i < count; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[count - 1];
}

}  // namespace slearn
