#include <algorithm>
#include <deque>
#include <string>

#include "dist/vocab_parallel.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/model.hpp"

namespace slearn {

LongPromptPolicy long_prompt_policy_from_name(std::string_view name) {
  if (name == "error") return LongPromptPolicy::Error;
  if (name == "truncate-left") return LongPromptPolicy::TruncateLeft;
  throw InputError("unknown long-prompt policy \"" + std::string(name) + "\" (expected error or truncate-left)");
}

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Context: return "context";
  }
  return "unknown";
}

namespace {

struct Active {
  std::size_t index;   // into prompts
  std::int32_t slot;
  std::int32_t next_position;  // where the next token goes
  std::vector<TokenId> pending; // tokens to feed in the next forward (the prompt, then one token at a time)
  std::uint64_t stream;         // the record's random stream (its draw at step s: sample_uniform(seed, stream, s))
};

}  // namespace

std::vector<GenerationResult> generate(Model& model, const std::vector<std::vector<TokenId>>& prompts,
                                       const GenerationOptions& options,
                                       const std::function<void(const GenerationProgress&)>& on_progress,
                                       const std::function<void(std::size_t, const GenerationResult&)>& on_finished) {
  if (!options.batch_size_auto && options.batch_size <= 0) throw InputError("batch size must be at least 1");
  if (options.batch_size_auto && !(options.kv_memory_fraction > 0 && options.kv_memory_fraction <= 1))
    throw InputError("kv_memory_fraction must be in (0, 1]");
  if (options.max_new_tokens <= 0) throw InputError("max_new_tokens must be at least 1");
  check_sampling_options(options.sampling);
  // A tensor-parallel model: every rank of its group runs this with the same prompts and options, and picks
  // the same tokens from the same gathered candidates (vocab_parallel_sample: no rank holds a full row), so
  // the ranks never diverge; every decision that could differ between them (the batch size that fits, a stop
  // request) is agreed over the group first.
  const TensorParallel& tp = model.tensor_parallel();
  if (tp.size > 1 && options.sampling.temperature > 0 && options.sampling.top_k == 0)
    throw InputError("sampling (temperature " + std::to_string(options.sampling.temperature) +
                     ") on a tensor-parallel model needs top_k > 0: without it the nucleus needs the whole "
                     "vocabulary's weights summed in one order, which no rank holds");
  if (!options.stream_ids.empty() && options.stream_ids.size() != prompts.size())
    throw Error("generate: " + std::to_string(options.stream_ids.size()) + " stream ids for " +
                std::to_string(prompts.size()) + " prompts");
  const std::int64_t context = model.config().context_length();
  std::vector<GenerationResult> results(prompts.size());
  std::vector<std::span<const TokenId>> inputs(prompts.size());

  std::int64_t longest = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    std::span<const TokenId> prompt(prompts[i]);
    if (prompt.empty()) throw InputError("prompt " + std::to_string(i) + " is empty");
    if (static_cast<std::int64_t>(prompt.size()) >= context) {
      if (options.long_prompt == LongPromptPolicy::Error)
        throw InputError("prompt " + std::to_string(i) + " has " + std::to_string(prompt.size()) +
                         " tokens, which leaves no room in the model's context of " + std::to_string(context) +
                         " (use the truncate-left policy to cut it)");
      const auto keep = static_cast<std::size_t>(std::max<std::int64_t>(1, context - options.max_new_tokens));
      results[i].truncated_tokens = static_cast<std::int64_t>(prompt.size() - keep);
      prompt = prompt.subspan(prompt.size() - keep);
    }
    inputs[i] = prompt;
    results[i].prompt_tokens = static_cast<std::int64_t>(prompt.size());
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(prompt.size()));
  }
  if (prompts.empty()) return results;

  const auto capacity = static_cast<std::int32_t>(std::min(context, longest + options.max_new_tokens));
  std::int32_t batch =
      options.batch_size_auto ? model.sequences_that_fit(capacity, longest, options.kv_memory_fraction) : options.batch_size;
  if (tp.size > 1 && options.batch_size_auto) {  // the smallest rank's choice, on every rank of the group
    const std::int64_t mine[] = {batch};
    const std::vector<std::int64_t> all = tp.group->allgather(mine);
    batch = static_cast<std::int32_t>(*std::min_element(all.begin(), all.end()));
  }
  const auto slots = static_cast<std::int32_t>(std::min<std::size_t>(static_cast<std::size_t>(batch), prompts.size()));
  KVCache cache = model.make_cache(slots, capacity);

  std::deque<std::int32_t> free_slots;
  for (std::int32_t s = 0; s < slots; ++s) free_slots.push_back(s);
  std::vector<Active> active;
  std::size_t next = 0;
  GenerationProgress progress;
  progress.total = prompts.size();

  std::vector<TokenId> tokens, chosen;
  std::vector<SequenceChunk> chunks;
  std::vector<std::uint64_t> streams, steps;
  std::vector<float> local_logits;  // a sharded model's slice of the logits, on the host
  while (next < prompts.size() || !active.empty()) {
    const bool stop = options.should_stop && options.should_stop();
    if (tp.size > 1 ? tp.group->any(stop) : stop) break;
    while (!free_slots.empty() && next < prompts.size()) {
      Active a{next, free_slots.front(), 0, std::vector<TokenId>(inputs[next].begin(), inputs[next].end()),
               options.stream_ids.empty() ? next : options.stream_ids[next]};
      progress.prompt_tokens += static_cast<std::int64_t>(a.pending.size());
      free_slots.pop_front();
      active.push_back(std::move(a));
      ++next;
    }
    tokens.clear();
    chunks.clear();
    for (const Active& a : active) {
      chunks.push_back({a.slot, a.next_position, static_cast<std::int32_t>(a.pending.size())});
      tokens.insert(tokens.end(), a.pending.begin(), a.pending.end());
    }
    // The logits stay on the backend's device; only the chosen ids come back.
    const Tensor& logits = model.forward_logits(tokens, chunks, cache, Model::Logits::LastOfEachChunk);
    streams.clear();
    steps.clear();
    for (const Active& a : active) {
      streams.push_back(a.stream);
      steps.push_back(results[a.index].tokens.size());
    }
    chosen.resize(active.size());
    if (tp.size == 1) {
      model.backend().sample(logits, options.sampling, streams, steps, chosen);
    } else {
      local_logits.resize(static_cast<std::size_t>(logits.numel()));
      model.backend().to_host(logits, local_logits);
      const VocabShard shard{model.local_vocab_first(), model.local_vocab_size(), model.config().vocab_size};
      vocab_parallel_sample(local_logits, shard, options.sampling, streams, steps, chosen, *tp.group);
    }

    std::vector<Active> still_running;
    for (std::size_t r = 0; r < active.size(); ++r) {
      Active& a = active[r];
      GenerationResult& result = results[a.index];
      a.next_position += static_cast<std::int32_t>(a.pending.size());
      const TokenId token = chosen[r];
      result.tokens.push_back(token);
      ++progress.generated_tokens;
      bool done = true;
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end())
        result.finish = FinishReason::Stop;
      else if (static_cast<std::int64_t>(result.tokens.size()) >= options.max_new_tokens)
        result.finish = FinishReason::Length;
      else if (a.next_position + 1 >= capacity)
        result.finish = FinishReason::Context;  // the new token took the last position of the context
      else
        done = false;
      if (done) {
        free_slots.push_back(a.slot);
        ++progress.finished;
        if (on_finished) on_finished(a.index, result);
      } else {
        a.pending.assign(1, token);
        still_running.push_back(std::move(a));
      }
    }
    active = std::move(still_running);
    if (on_progress) on_progress(progress);
  }
  return results;
}

}  // namespace slearn
