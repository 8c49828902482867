// The bucket plan every gradient sum shares (slearn/gradient_sum.hpp): the host's and the cuda backend's.
#include "slearn/gradient_sum.hpp"

#include <algorithm>
#include <string>

#include "slearn/error.hpp"

namespace slearn {

std::vector<std::pair<std::int64_t, std::int64_t>> gradient_buckets(std::int64_t elements,
                                                                    std::int64_t bucket_elements) {
  if (elements < 0 || bucket_elements < 1)
    throw Error("gradient buckets: " + std::to_string(elements) + " elements in buckets of " +
                std::to_string(bucket_elements));
  std::vector<std::pair<std::int64_t, std::int64_t>> buckets;
  for (std::int64_t end = elements; end > 0; end -= bucket_elements)
    buckets.emplace_back(std::max<std::int64_t>(0, end - bucket_elements), end);
  return buckets;
}

}  // namespace slearn
