// slearn_dist generate: batched generation from a Hugging Face model directory; one JSON line per prompt.
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "cli/commands.hpp"
#include "cli/jsonl.hpp"
#include "slearn/backend.hpp"
#include "slearn/chat_format.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/lora.hpp"
#include "slearn/model.hpp"
#include "slearn/threads.hpp"
#include "slearn/tokenizer.hpp"

namespace slearn::cli {
namespace {

struct GenerateOptions {
  std::string model_dir;
  std::string adapter_dir;
  std::vector<std::string> prompts;
  std::string prompts_file;
  std::vector<std::string> prompt_ids;
  bool chat = false;
  std::string chat_format;
  std::string system;
  std::int64_t max_new_tokens = 256;
  double temperature = 0.0;
  double top_p = 1.0;
  std::int64_t top_k = 0;
  std::uint64_t seed = 0;
  std::string batch_size = "8";  // or "auto"
  std::optional<int> threads;
  std::string backend = "auto";
  std::string cpu_weights = "auto";
  std::string long_prompt = "error";
  bool ignore_eos = false;
  bool quiet = false;
};

std::vector<TokenId> parse_id_list(const std::string& text) {
  std::vector<TokenId> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    try {
      std::size_t used = 0;
      long value = std::stol(item, &used);
      if (used != item.size() || value < 0 || value > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(static_cast<TokenId>(value));
    } catch (const std::exception&) {
      throw InputError("--prompt-ids: \"" + item + "\" is not a token id (expected e.g. 1,2,3)");
    }
  }
  if (ids.empty()) throw InputError("--prompt-ids: no ids given");
  return ids;
}

// A prompt as the user gave it: text (encoded with the tokenizer, chat-formatted with --chat) or ids.
struct PromptInput {
  std::optional<std::string> text;
  std::vector<TokenId> ids;
  std::string source;  // where the ids came from, for messages: "--prompt-ids 1,2,3" or "prompts.jsonl:4"
};

std::vector<PromptInput> collect_prompts(const GenerateOptions& o) {
  std::vector<PromptInput> inputs;
  for (const auto& text : o.prompts) inputs.push_back({text, {}, {}});
  for (const auto& list : o.prompt_ids) inputs.push_back({std::nullopt, parse_id_list(list), "--prompt-ids " + list});
  if (!o.prompts_file.empty()) {
    std::ifstream file(o.prompts_file);
    if (!file) throw InputError(o.prompts_file + ": cannot open the prompts file");
    for_each_json_line(file, o.prompts_file, [&](const nlohmann::json& record, std::size_t line) {
      const std::string where = o.prompts_file + ":" + std::to_string(line) + ": ";
      if (auto it = record.find("prompt"); it != record.end() && it->is_string()) {
        inputs.push_back({it->get<std::string>(), {}, {}});
      } else if (auto ids = record.find("ids"); ids != record.end() && ids->is_array()) {
        PromptInput input;
        input.source = o.prompts_file + ":" + std::to_string(line);
        for (const auto& id : *ids) {
          // get<TokenId> would wrap a larger integer into some other id without a word.
          if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX)
            throw InputError(where + "\"ids\" must hold token ids (integers from 0 to 2147483647)");
          input.ids.push_back(id.get<TokenId>());
        }
        inputs.push_back(std::move(input));
      } else {
        throw InputError(where + "expected {\"prompt\": \"...\"} or {\"ids\": [...]}");
      }
    });
  }
  if (inputs.empty()) throw InputError("no prompts: give --prompt, --prompt-ids or --prompts FILE.jsonl");
  return inputs;
}

void add_unique(std::vector<TokenId>& ids, std::int64_t id) {
  if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<TokenId>(id));
}

// A double as the user would write it: 0.7, -1, nan, inf.
std::string shown(double value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

// The sampling options, checked before anything is loaded. A NaN passes every "<" and ">" test, and an infinite
// temperature flattens the distribution to uniform, so each is refused by name rather than sampling noise.
void check_sampling(const GenerateOptions& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0)
    throw InputError("--temperature must be a finite number >= 0 (0 is greedy), got " + shown(o.temperature));
  if (!std::isfinite(o.top_p) || !(o.top_p > 0 && o.top_p <= 1))
    throw InputError("--top-p must be a number in (0, 1] (1 keeps every token), got " + shown(o.top_p));
  if (o.top_k < 0) throw InputError("--top-k must be >= 0 (0 keeps every token), got " + std::to_string(o.top_k));
}

// Prompt ids the model has no embedding for would fail inside the forward; named here instead. (Text prompts
// are encoded into ids check_tokenizer_fits_vocab has already checked.)
void check_prompt_ids(const PromptInput& input, std::int64_t vocab_size, const std::filesystem::path& dir) {
  for (const TokenId id : input.ids)
    if (id >= vocab_size)
      throw InputError(input.source + ": token id " + std::to_string(id) + " is out of range for the model (" +
                       (dir / "config.json").string() + " has vocab_size " + std::to_string(vocab_size) + ")");
}

int run_generate(const GenerateOptions& o) {
  check_sampling(o);
  const ThreadPlan plan = plan_threads(o.threads);
  apply_thread_plan(plan);
  const std::filesystem::path dir(o.model_dir);

  auto backend = make_backend(o.backend, cpu_weights_from_name(o.cpu_weights));
  const auto load_start = std::chrono::steady_clock::now();
  // The model first, as run does: a model directory that cannot be read is reported as that.
  Model model = Model::load(dir, *backend);
  std::optional<LoraAdapter> adapter;
  if (!o.adapter_dir.empty()) {
    adapter.emplace(LoraAdapter::load(o.adapter_dir, model.config(), *backend));
    model.set_adapter(&*adapter);
  }
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  std::optional<Tokenizer> tokenizer;
  // With an error_code (exists() without one throws for a symlink loop); a loop goes to from_dir, which names it.
  std::error_code error;
  if (std::filesystem::exists(dir / "tokenizer.json", error) || error == std::errc::too_many_symbolic_link_levels) {
    tokenizer.emplace(Tokenizer::from_dir(dir));
    check_tokenizer_fits_vocab(*tokenizer, model.config().vocab_size, dir / "tokenizer.json");
  }

  std::optional<ChatFormat> format;
  if (o.chat) {
    if (!tokenizer) throw InputError(dir.string() + ": --chat needs tokenizer.json in the model directory");
    format = o.chat_format.empty() ? default_chat_format(model.config().model_type, *tokenizer)
                                   : chat_format_from_name(o.chat_format);
  }

  std::vector<std::vector<TokenId>> prompts;
  for (PromptInput& input : collect_prompts(o)) {
    if (!input.text) {
      check_prompt_ids(input, model.config().vocab_size, dir);
      prompts.push_back(std::move(input.ids));
      continue;
    }
    if (!tokenizer) throw InputError(dir.string() + ": text prompts need tokenizer.json (or use --prompt-ids)");
    if (format) {
      std::vector<ChatMessage> messages;
      if (!o.system.empty()) messages.push_back({"system", o.system});
      messages.push_back({"user", *input.text});
      prompts.push_back(tokenizer->encode(render_chat(*format, messages, true)));
    } else {
      prompts.push_back(tokenizer->encode(*input.text, true));
    }
  }

  GenerationOptions options;
  options.max_new_tokens = o.max_new_tokens;
  options.sampling = {o.temperature, o.top_k, o.top_p, o.seed};
  if (o.batch_size == "auto") {
    options.batch_size_auto = true;
  } else {
    std::int32_t batch = 0;
    const char* last = o.batch_size.data() + o.batch_size.size();
    const auto [end, parse_error] = std::from_chars(o.batch_size.data(), last, batch);
    if (parse_error != std::errc() || end != last || batch < 1)
      throw InputError("--batch-size must be auto or a whole number >= 1, got \"" + o.batch_size + "\"");
    options.batch_size = batch;
  }
  options.long_prompt = long_prompt_policy_from_name(o.long_prompt);
  if (!o.ignore_eos) {
    const GenerationDefaults defaults = load_generation_defaults(dir);
    for (auto id : defaults.eos_token_id) add_unique(options.stop_ids, id);
    if (defaults.eos_token_id.empty())
      for (auto id : model.config().eos_token_id) add_unique(options.stop_ids, id);
    if (format && tokenizer)
      if (auto end = tokenizer->token_to_id(chat_end_token(*format))) add_unique(options.stop_ids, *end);
  }

  const auto start = std::chrono::steady_clock::now();
  const std::vector<GenerationResult> results = generate(model, prompts, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::int64_t generated = 0, prompt_tokens = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const GenerationResult& r = results[i];
    generated += static_cast<std::int64_t>(r.tokens.size());
    prompt_tokens += r.prompt_tokens;
    nlohmann::json line{{"ids", r.tokens}};
    if (tokenizer) line["text"] = tokenizer->decode(r.tokens, true);
    std::cout << line.dump() << '\n';
    if (r.truncated_tokens > 0 && !o.quiet)
      std::cerr << "slearn_dist: prompt " << i << ": cut " << r.truncated_tokens << " tokens from the front\n";
  }
  std::cout.flush();
  if (!o.quiet)
    std::cerr << "slearn_dist: " << results.size() << " prompts, " << prompt_tokens << " prompt + " << generated
              << " generated tokens in " << seconds << " s (" << static_cast<double>(generated) / seconds
              << " generated tok/s); model loaded in " << load_seconds << " s; backend " << backend->name()
              << ", " << plan.describe() << "\n";
  return 0;
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a Hugging Face model directory");
  sub->add_option("--model", o->model_dir, "Model directory (config.json, safetensors, tokenizer.json)")->required();
  sub->add_option("--adapter", o->adapter_dir, "PEFT LoRA adapter directory to apply");
  sub->add_option("--prompt", o->prompts, "A prompt text (repeatable)");
  sub->add_option("--prompts", o->prompts_file, "JSONL file of {\"prompt\": text} or {\"ids\": [...]} records");
  sub->add_option("--prompt-ids", o->prompt_ids, "A prompt as comma-separated token ids (repeatable)");
  sub->add_flag("--chat", o->chat, "Wrap each prompt in the model's chat format with the generation prompt");
  sub->add_option("--chat-format", o->chat_format, "Override the chat format: chatml, llama2 or llama3");
  sub->add_option("--system", o->system, "System prompt (with --chat)");
  sub->add_option("--max-new-tokens", o->max_new_tokens, "Most tokens to generate per prompt")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 24))  // sums with prompt lengths stay exact
      ->capture_default_str();
  sub->add_option("--temperature", o->temperature, "Sampling temperature; 0 is greedy")->capture_default_str();
  sub->add_option("--top-p", o->top_p, "Nucleus sampling threshold")->capture_default_str();
  sub->add_option("--top-k", o->top_k, "Keep the k most likely tokens; 0 keeps all")->capture_default_str();
  sub->add_option("--seed", o->seed, "Sampling seed: the same seed gives the same text")->capture_default_str();
  sub->add_option("--batch-size", o->batch_size,
                  "Sequences decoded together; auto: as many as fit in 90% of the free memory")->capture_default_str();
  sub->add_option("--threads", o->threads, "CPU threads (default: this rank's share of the cores)");
  sub->add_option("--backend", o->backend, "cpu, cuda or auto")->capture_default_str();
  sub->add_option("--cpu-weights", o->cpu_weights,
                  "cpu backend: auto (the checkpoint's bf16, else fp32), f32 or bf16 weight matrices")
      ->capture_default_str();
  sub->add_option("--long-prompt", o->long_prompt,
                  "A prompt that fills the context: error, or truncate-left (keep its last tokens)")
      ->capture_default_str();
  sub->add_flag("--ignore-eos", o->ignore_eos, "Do not stop at end-of-sequence tokens (benchmarks, tests)");
  sub->add_flag("--quiet", o->quiet, "No statistics on stderr");
  return [o]() { return run_generate(*o); };
}

}  // namespace slearn::cli
