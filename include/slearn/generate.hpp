// Batched generation with continuous batching: up to `batch_size` sequences (or, with
// batch_size_auto, as many as fit in memory) share one forward per step; a
// finished sequence's slot is refilled from the queue at once, its prompt prefilled in the same forward as
// the other sequences' decode steps. Each sequence's result depends only on its own prompt, options and
// index, never on what it was batched with: a sampled token is a counter-based draw keyed by the sequence's
// stream id and step (slearn/sampling.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "slearn/backend.hpp"
#include "slearn/sampling.hpp"

namespace slearn {

class Model;

// What to do with a prompt that leaves no room for a new token in the model's context.
enum class LongPromptPolicy {
  Error,         // stop with an InputError naming the prompt (the default)
  TruncateLeft,  // keep the last (context - max_new_tokens) tokens, at least one; the count cut is reported
};
LongPromptPolicy long_prompt_policy_from_name(std::string_view name);  // "error" | "truncate-left"

struct GenerationOptions {
  std::int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  std::vector<TokenId> stop_ids;  // generation ends after emitting any of these (the stop id is kept)
  std::int32_t batch_size = 8;
  // Instead of batch_size: as many sequences as fit in kv_memory_fraction of the backend's free memory
  // (Model::sequences_that_fit), never more than there are prompts.
  bool batch_size_auto = false;
  double kv_memory_fraction = 0.9;
  LongPromptPolicy long_prompt = LongPromptPolicy::Error;
  // Asked before every forward step (optional): when it returns true, generation returns at once. Sequences
  // not finished by then are left incomplete and on_finished is not called for them, so a caller that wrote
  // each finished one out loses no finished work (a stop on request takes at most one step).
  std::function<bool()> should_stop;
  // The random stream of each prompt (optional; by default its index in `prompts`). A caller that generates a
  // subset of a larger list (one rank's shard, what is left after a resume) passes each prompt's index in the
  // whole list, so sampled answers do not depend on how the list was split.
  std::vector<std::uint64_t> stream_ids;
};

enum class FinishReason { Stop, Length, Context };
std::string_view finish_reason_name(FinishReason reason);

struct GenerationResult {
  std::vector<TokenId> tokens;  // the generated tokens only
  FinishReason finish = FinishReason::Length;
  std::int64_t prompt_tokens = 0;     // after truncation
  std::int64_t truncated_tokens = 0;  // cut from the front of the prompt
};

struct GenerationProgress {
  std::size_t finished = 0, total = 0;
  std::int64_t prompt_tokens = 0, generated_tokens = 0;
};

// Results come back in prompt order. `on_progress` (optional) is called after every step; `on_finished`
// (optional) as soon as a sequence is done, with its prompt index, so a caller can write it out at once.
std::vector<GenerationResult> generate(
    Model& model, const std::vector<std::vector<TokenId>>& prompts, const GenerationOptions& options,
    const std::function<void(const GenerationProgress&)>& on_progress = {},
    const std::function<void(std::size_t, const GenerationResult&)>& on_finished = {});

}  // namespace slearn
