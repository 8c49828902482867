#include "pipeline/answer_judge.hpp"

#include <chrono>
#include <numeric>
#include <set>
#include <sstream>

#include "pipeline/progress.hpp"
#include "pipeline/stage_files.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/judge.hpp"

namespace slearn {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<int> assign_by_prompt_length(const std::vector<std::int64_t>& prompt_tokens, int ranks) {
  std::vector<std::size_t> order(prompt_tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return prompt_tokens[a] > prompt_tokens[b]; });
  std::vector<std::int64_t> load(static_cast<std::size_t>(ranks), 0);
  std::vector<int> owner(prompt_tokens.size(), 0);
  for (std::size_t i : order) {
    const auto lightest = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = lightest;
    load[static_cast<std::size_t>(lightest)] += prompt_tokens[i];
  }
  return owner;
}

namespace {

std::vector<TokenId> chat_prompt(const Tokenizer& tokenizer, ChatFormat format, const std::string& system,
                                 const std::string& user) {
  std::vector<ChatMessage> messages;
  if (!system.empty()) messages.push_back({"system", system});
  messages.push_back({"user", user});
  return tokenizer.encode(render_chat(format, messages, true));
}

GenerationOptions generation_options(const AnswerSettings& a, const Tokenizer& tokenizer, ChatFormat format,
                                     const Model& model, std::int64_t max_new_tokens) {
  GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  options.batch_size = a.batch_size;
  options.long_prompt = long_prompt_policy_from_name(a.long_prompt);
  for (auto id : model.config().eos_token_id) options.stop_ids.push_back(static_cast<TokenId>(id));
  if (auto end = tokenizer.token_to_id(chat_end_token(format))) options.stop_ids.push_back(*end);
  if (auto eos = tokenizer.eos_id()) options.stop_ids.push_back(*eos);
  return options;
}

// Runs generation over `todo` (indices into prompts), calling `write` as each finishes.
void generate_indices(Model& model, const std::vector<std::vector<TokenId>>& prompts,
                      const std::vector<std::size_t>& todo, const GenerationOptions& options,
                      StageProgress& progress, const std::function<void(std::size_t, const GenerationResult&)>& write) {
  std::vector<std::vector<TokenId>> batch;
  for (std::size_t i : todo) batch.push_back(prompts[i]);
  std::int64_t done = 0, tokens = 0;
  generate(
      model, batch, options, {},
      [&](std::size_t local, const GenerationResult& result) {
        write(todo[local], result);
        ++done;
        tokens += static_cast<std::int64_t>(result.tokens.size());
        progress.update(done, tokens);
      });
}

}  // namespace

PassResult answer_and_judge(const RunConfig& config, Communicator& comm, Model& model, const Tokenizer& tokenizer,
                            ChatFormat format, const Judge& judge, const std::vector<DatasetRecord>& records,
                            const fs::path& dir, const std::string& label) {
  PassResult result;
  const int rank = comm.rank();
  const bool progress_on = true;
  fs::create_directories(dir);

  auto stage_name = [&](const char* stage) { return label.empty() ? std::string(stage) : label + " " + stage; };
  // ---- answer ----
  auto start = Clock::now();
  std::size_t judged_before = 0;
  std::vector<std::vector<TokenId>> prompts;
  std::vector<std::int64_t> lengths;
  for (const auto& r : records) {
    prompts.push_back(chat_prompt(tokenizer, format, config.answer.system_prompt, r.question));
    lengths.push_back(static_cast<std::int64_t>(prompts.back().size()));
  }
  const std::vector<int> owner = assign_by_prompt_length(lengths, comm.size());
  {
    const auto done = read_stage_shards(dir, "answers");
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < records.size(); ++i)
      if (owner[i] == rank && !done.count(records[i].id)) todo.push_back(i);
    ShardWriter writer(dir, "answers", rank);
    StageProgress progress(dir, stage_name("answer"), static_cast<std::int64_t>(records.size() - done.size()), comm,
                           static_cast<double>(config.log_every_seconds), progress_on);
    const GenerationOptions options =
        generation_options(config.answer, tokenizer, format, model, config.answer.max_new_tokens);
    generate_indices(model, prompts, todo, options, progress, [&](std::size_t i, const GenerationResult& g) {
      writer.append({{"id", records[i].id}, {"question", records[i].question}, {"reference", records[i].answer},
                     {"answer", tokenizer.decode(g.tokens, true)}, {"tokens", g.tokens.size()},
                     {"finish", finish_reason_name(g.finish)}});
    });
    judged_before = read_stage_shards(dir, "judgements").size();  // before any rank can start judging
    comm.barrier();
    progress.finish();
  }
  result.answer_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // ---- judge ----
  start = Clock::now();
  const auto answers = read_stage_shards(dir, "answers");
  {
    const auto judged = read_stage_shards(dir, "judgements");
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (owner[i] != rank || judged.count(records[i].id)) continue;
      if (!answers.count(records[i].id))
        throw Error(dir.string() + ": no answer for record \"" + records[i].id + "\" after the answer stage");
      todo.push_back(i);
    }
    ShardWriter writer(dir, "judgements", rank);
    StageProgress progress(dir, stage_name("judge"), static_cast<std::int64_t>(records.size() - judged_before), comm,
                           static_cast<double>(config.log_every_seconds), progress_on);
    std::vector<std::size_t> for_model;
    std::int64_t done = 0;
    for (std::size_t i : todo) {
      const std::string answer = answers.at(records[i].id).at("answer").get<std::string>();
      if (judge.settings.kind == "rule" || judge.settings.kind == "cascade") {
        const auto decision = rule_judge(judge.settings, records[i].answer, answer);
        if (decision || judge.settings.kind == "rule") {
          const bool incorrect = decision ? decision->incorrect : true;
          writer.append({{"id", records[i].id}, {"score", nullptr}, {"verdict", incorrect ? "incorrect" : "correct"},
                         {"incorrect", incorrect},
                         {"rationale", decision ? "decided by the " + decision->rule + " rule"
                                                : "no rule could decide; counted as incorrect"},
                         {"judged_by", decision ? "rule:" + decision->rule : "rule:undecided"},
                         {"parse_ok", decision.has_value()}});
          progress.update(++done, 0);
          continue;
        }
      }
      for_model.push_back(i);
    }
    if (!for_model.empty()) {
      if (judge.model == nullptr) throw Error("judge: records need a judge model but none is loaded");
      std::vector<std::vector<TokenId>> judge_prompts(records.size());
      for (std::size_t i : for_model) {
        const JudgeLanguage language = judge.settings.language == "zh"   ? JudgeLanguage::Chinese
                                       : judge.settings.language == "en" ? JudgeLanguage::English
                                                                         : detect_language(records[i].question);
        const std::string& custom =
            language == JudgeLanguage::Chinese ? judge.settings.template_zh : judge.settings.template_en;
        const std::string prompt = render_judge_prompt(custom.empty() ? default_judge_template(language) : custom,
                                                       records[i].question, records[i].answer,
                                                       answers.at(records[i].id).at("answer").get<std::string>());
        judge_prompts[i] = chat_prompt(*judge.tokenizer, judge.format, "", prompt);
      }
      AnswerSettings greedy = config.answer;
      greedy.temperature = 0.0;
      const GenerationOptions options =
          generation_options(greedy, *judge.tokenizer, judge.format, *judge.model, judge.settings.max_new_tokens);
      generate_indices(*judge.model, judge_prompts, for_model, options, progress,
                       [&](std::size_t i, const GenerationResult& g) {
                         const std::string reply = judge.tokenizer->decode(g.tokens, true);
                         const ParsedJudgement parsed = parse_judge_reply(reply);
                         const bool incorrect = !parsed.ok || parsed.incorrect.value_or(true);
                         nlohmann::json line{{"id", records[i].id},
                                             {"score", parsed.score ? nlohmann::json(*parsed.score) : nlohmann::json()},
                                             {"verdict", incorrect ? "incorrect" : "correct"},
                                             {"incorrect", incorrect},
                                             {"rationale", parsed.ok ? parsed.rationale : reply},
                                             {"judged_by", judge.settings.kind == "self" ? "self" : "model"},
                                             {"parse_ok", parsed.ok}};
                         if (!parsed.ok) line["parse_problem"] = parsed.problem;
                         writer.append(line);
                       });
    }
    comm.barrier();
    progress.finish();
  }
  result.judge_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // ---- gather: every rank contributes the indices of its own incorrect records ----
  const auto judgements = read_stage_shards(dir, "judgements");
  std::vector<std::int64_t> mine;
  std::vector<std::int64_t> counts(3, 0);  // unparsed, by rule, by model
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (owner[i] != rank) continue;
    const auto it = judgements.find(records[i].id);
    if (it == judgements.end()) throw Error(dir.string() + ": no judgement for record \"" + records[i].id + "\"");
    if (it->second.at("incorrect").get<bool>()) mine.push_back(static_cast<std::int64_t>(i));
    const std::string by = it->second.at("judged_by").get<std::string>();
    counts[0] += !it->second.at("parse_ok").get<bool>() && !by.starts_with("rule");
    counts[1] += by.starts_with("rule");
    counts[2] += !by.starts_with("rule");
  }
  const std::vector<std::int64_t> all = comm.allgather(mine);
  comm.allreduce_sum(std::span<std::int64_t>(counts));
  result.incorrect.assign(records.size(), false);
  for (std::int64_t i : all) result.incorrect[static_cast<std::size_t>(i)] = true;
  result.incorrect_count = static_cast<std::int64_t>(all.size());
  result.unparsed = counts[0];
  result.judged_by_rule = counts[1];
  result.judged_by_model = counts[2];

  // ---- rank 0 merges the shards, in input order ----
  if (rank == 0) {
    std::ostringstream merged_answers, merged_judgements;
    for (const auto& r : records) {
      merged_answers << answers.at(r.id).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
      merged_judgements << judgements.at(r.id).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    }
    write_file_atomically(dir / "answers.jsonl", merged_answers.str());
    write_file_atomically(dir / "judgements.jsonl", merged_judgements.str());
  }
  comm.barrier();
  return result;
}

}  // namespace slearn
