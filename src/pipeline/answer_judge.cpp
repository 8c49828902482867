#include "pipeline/answer_judge.hpp"

#include <chrono>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

#include "pipeline/progress.hpp"
#include "pipeline/stage_files.hpp"
#include "slearn/error.hpp"
#include "slearn/generate.hpp"
#include "slearn/judge.hpp"
#include "slearn/stop.hpp"
#include "util/trace.hpp"

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

// The judge's prompt for one record and its answer, in the judge model's chat format.
std::vector<TokenId> judge_prompt(const Judge& judge, const DatasetRecord& record, const std::string& answer) {
  const JudgeLanguage language = judge.settings.language == "zh"   ? JudgeLanguage::Chinese
                                 : judge.settings.language == "en" ? JudgeLanguage::English
                                                                   : detect_language(record.question);
  const std::string& custom = language == JudgeLanguage::Chinese ? judge.settings.template_zh : judge.settings.template_en;
  const std::string prompt =
      render_judge_prompt(custom.empty() ? default_judge_template(language) : custom, record.question, record.answer, answer);
  return chat_prompt(*judge.tokenizer, judge.format, "", prompt);
}

GenerationOptions generation_options(const AnswerSettings& a, const Tokenizer& tokenizer, ChatFormat format,
                                     const Model& model, std::int64_t max_new_tokens) {
  GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  if (a.batch_size == "auto") {
    options.batch_size_auto = true;
    options.kv_memory_fraction = a.kv_memory_fraction;
  } else {
    options.batch_size = static_cast<std::int32_t>(std::stol(a.batch_size));  // checked by the schema
  }
  options.long_prompt = long_prompt_policy_from_name(a.long_prompt);
  for (auto id : model.config().eos_token_id) options.stop_ids.push_back(static_cast<TokenId>(id));
  if (auto end = tokenizer.token_to_id(chat_end_token(format))) options.stop_ids.push_back(*end);
  if (auto eos = tokenizer.eos_id()) options.stop_ids.push_back(*eos);
  return options;
}

// A stop on request while answering or judging. The ranks have different amounts of work here, so no
// collective can be placed inside it: each rank stops on its own, before its next generation step or record,
// and all of them meet at the collective that ends the stage anyway (agree_to_stop instead of a barrier).
// A rank that saw the signal leaves a marker file in the stage directory; the others look for it (at most
// twice a second) and stop too, so a signal that reached one rank only does not wait for the others to
// finish their share.
//
// The ranks of a tensor group work on the same records in lockstep (each generation step is collective
// over the group), so there the decision is agreed over the group each time it is asked: all of its ranks
// ask at the same points and stop at the same one.
class StageStop {
 public:
  StageStop(fs::path marker, Communicator* tensor_group) : marker_(std::move(marker)), group_(tensor_group) {}

  // Whether to stop now; once true, stays true.
  bool operator()() {
    if (group_ != nullptr) {
      if (stopped_) return true;
      stopped_ = group_->any(look());
      return stopped_;
    }
    return look();
  }
  bool stopped() const { return stopped_; }

 private:
  // This rank's own view: a signal, or another rank's marker.
  bool look() {
    if (stopped_) return true;
    if (stop_requested()) {
      stopped_ = true;
      std::ofstream(marker_) << signal_name(which_signal()) << '\n';  // best effort: the signal stops this rank anyway
      return true;
    }
    const auto now = Clock::now();
    if (now - last_look_ >= std::chrono::milliseconds(500)) {
      last_look_ = now;
      stopped_ = fs::exists(marker_);
    }
    return stopped_;
  }

  fs::path marker_;
  Communicator* group_;
  bool stopped_ = false;
  Clock::time_point last_look_ = Clock::now();
};

// Collective, at the end of a stage on every rank: when any rank stopped, all throw StopRequested. The
// records finished so far are already in the shards (flushed one by one).
void end_stage(Communicator& comm, StageStop& stop, StageProgress& progress, const fs::path& dir,
               const std::string& shard, const std::string& stage, std::size_t total) {
  if (!agree_to_stop(comm, stop.stopped())) return;
  progress.interrupt();
  // Every rank is past its last write once the agreement returned, so the shards are complete here.
  const std::size_t saved = read_stage_shards(dir, shard).size();
  if (comm.rank() == 0) {
    std::error_code ignored;
    fs::remove(dir / kStopMarker, ignored);
  }
  throw_agreed_stop(comm, stage, std::to_string(saved) + " of " + std::to_string(total) + " " + shard + " saved");
}

// Runs generation over `todo` (indices into prompts), calling `write` as each finishes, until `stop` says so.
void generate_indices(Model& model, const std::vector<std::vector<TokenId>>& prompts,
                      const std::vector<std::size_t>& todo, GenerationOptions options, StageProgress& progress,
                      StageStop& stop, const std::function<void(std::size_t, const GenerationResult&)>& write) {
  options.should_stop = [&stop] { return stop(); };
  std::vector<std::vector<TokenId>> batch;
  for (std::size_t i : todo) {
    batch.push_back(prompts[i]);
    options.stream_ids.push_back(i);  // the record's own stream: the same sample on any rank, after any resume
  }
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

PassResult answer_and_judge(const RunConfig& config, Communicator& comm, const Mesh& mesh, Model& model,
                            const Tokenizer& tokenizer, ChatFormat format, const Judge& judge,
                            const std::vector<DatasetRecord>& records, const fs::path& dir, const std::string& label,
                            bool show_progress) {
  PassResult result;
  // The records are shared among the data-parallel groups; a tensor group's first rank writes and counts.
  const int rank = mesh.data_rank;
  const bool writer_rank = mesh.tensor_rank == 0;
  Communicator& data_group = mesh.tensor == 1 ? comm : *mesh.data_group;
  const bool progress_on = show_progress;
  fs::create_directories(dir);
  StageStop stop(dir / kStopMarker, mesh.tensor > 1 ? mesh.tensor_group.get() : nullptr);

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
  const std::vector<int> owner = assign_by_prompt_length(lengths, mesh.data);
  {
    const TraceRange trace(stage_name("answer"));
    const auto done = read_stage_shards(dir, "answers");
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < records.size(); ++i)
      if (owner[i] == rank && !done.count(records[i].id)) todo.push_back(i);
    // A tensor group's ranks must see the same records done: all have read them before the first writes.
    if (mesh.tensor > 1) mesh.tensor_group->barrier();
    std::optional<ShardWriter> writer;
    if (writer_rank) writer.emplace(dir, "answers", rank);
    StageProgress progress(dir, stage_name("answer"), static_cast<std::int64_t>(records.size() - done.size()),
                           data_group, static_cast<double>(config.log_every_seconds), progress_on, writer_rank);
    const GenerationOptions options =
        generation_options(config.answer, tokenizer, format, model, config.answer.max_new_tokens);
    generate_indices(model, prompts, todo, options, progress, stop, [&](std::size_t i, const GenerationResult& g) {
      if (writer) writer->append({{"id", records[i].id}, {"question", records[i].question}, {"reference", records[i].answer},
                     {"answer", tokenizer.decode(g.tokens, true)}, {"tokens", g.tokens.size()},
                     {"finish", finish_reason_name(g.finish)}});
    });
    judged_before = read_stage_shards(dir, "judgements").size();  // before any rank can start judging
    end_stage(comm, stop, progress, dir, "answers", stage_name("answer"), records.size());  // in place of a barrier
    progress.finish();
  }
  result.answer_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // ---- judge ----
  start = Clock::now();
  const auto answers = read_stage_shards(dir, "answers");
  {
    const TraceRange trace(stage_name("judge"));
    const auto judged = read_stage_shards(dir, "judgements");
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (owner[i] != rank || judged.count(records[i].id)) continue;
      if (!answers.count(records[i].id))
        throw Error(dir.string() + ": no answer for record \"" + records[i].id + "\" after the answer stage");
      todo.push_back(i);
    }
    if (mesh.tensor > 1) mesh.tensor_group->barrier();  // as for the answers
    std::optional<ShardWriter> writer;
    if (writer_rank) writer.emplace(dir, "judgements", rank);
    StageProgress progress(dir, stage_name("judge"), static_cast<std::int64_t>(records.size() - judged_before),
                           data_group, static_cast<double>(config.log_every_seconds), progress_on, writer_rank);
    std::vector<std::size_t> for_model;
    std::int64_t done = 0;
    for (std::size_t i : todo) {
      if (stop()) break;
      const std::string answer = answers.at(records[i].id).at("answer").get<std::string>();
      if (judge.settings.kind == "rule" || judge.settings.kind == "cascade") {
        const auto decision = rule_judge(judge.settings, records[i].answer, answer);
        if (decision || judge.settings.kind == "rule") {
          const bool incorrect = decision ? decision->incorrect : true;
          if (writer) writer->append({{"id", records[i].id}, {"score", nullptr}, {"verdict", incorrect ? "incorrect" : "correct"},
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
    if (!for_model.empty() && !stop()) {
      if (judge.model == nullptr) throw Error("judge: records need a judge model but none is loaded");
      std::vector<std::vector<TokenId>> judge_prompts(records.size());
      for (std::size_t i : for_model)
        judge_prompts[i] = judge_prompt(judge, records[i], answers.at(records[i].id).at("answer").get<std::string>());
      AnswerSettings greedy = config.answer;
      greedy.temperature = 0.0;
      const GenerationOptions options =
          generation_options(greedy, *judge.tokenizer, judge.format, *judge.model, judge.settings.max_new_tokens);
      generate_indices(*judge.model, judge_prompts, for_model, options, progress, stop,
                       [&](std::size_t i, const GenerationResult& g) {
                         const std::string reply = judge.tokenizer->decode(g.tokens, true);
                         const ParsedJudgement parsed = parse_judge_reply(reply);
                         const bool incorrect = !parsed.ok || parsed.incorrect.value_or(true);
                         nlohmann::json line{{"id", records[i].id},
                                             {"score", parsed.score ? nlohmann::json(*parsed.score) : nlohmann::json()},
                                             {"verdict", incorrect ? "incorrect" : "correct"},
                                             {"incorrect", incorrect},
                                             {"rationale", parsed.ok ? parsed.rationale : reply},
                                             {"reply", reply},
                                             {"judged_by", judge.settings.kind == "self" ? "self" : "model"},
                                             {"parse_ok", parsed.ok}};
                         if (!parsed.ok) line["parse_problem"] = parsed.problem;
                         // The rule's verdict beside the model's, where the rule can decide (judge quality).
                         // A cascade sends the model only what its rule cannot decide: nothing to compare.
                         if (judge.settings.kind != "cascade") {
                           const auto rule = rule_judge(judge.settings, records[i].answer,
                                                        answers.at(records[i].id).at("answer").get<std::string>());
                           line["rule_verdict"] = rule ? nlohmann::json(rule->incorrect ? "incorrect" : "correct")
                                                       : nlohmann::json();
                         }
                         if (writer) writer->append(line);
                       });
    }
    end_stage(comm, stop, progress, dir, "judgements", stage_name("judge"), records.size());  // in place of a barrier
    progress.finish();
  }
  result.judge_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // ---- gather: every rank contributes the indices of its own incorrect records ----
  const auto judgements = read_stage_shards(dir, "judgements");
  std::vector<std::int64_t> mine;
  // unparsed, by rule, by model; then the judge quality: compared, agree, false positive, false negative,
  // rule correct, rule incorrect, unparseable among the compared
  std::vector<std::int64_t> counts(10, 0);
  for (std::size_t i = 0; i < records.size() && writer_rank; ++i) {
    if (owner[i] != rank) continue;
    const auto it = judgements.find(records[i].id);
    if (it == judgements.end()) throw Error(dir.string() + ": no judgement for record \"" + records[i].id + "\"");
    if (it->second.at("incorrect").get<bool>()) mine.push_back(static_cast<std::int64_t>(i));
    const std::string by = it->second.at("judged_by").get<std::string>();
    counts[0] += !it->second.at("parse_ok").get<bool>() && !by.starts_with("rule");
    counts[1] += by.starts_with("rule");
    counts[2] += !by.starts_with("rule");
    const auto rule = it->second.find("rule_verdict");
    if (rule != it->second.end() && rule->is_string()) {
      const bool model_incorrect = it->second.at("incorrect").get<bool>();
      const bool rule_incorrect = rule->get<std::string>() == "incorrect";
      counts[3] += 1;
      counts[4] += model_incorrect == rule_incorrect;
      counts[5] += model_incorrect && !rule_incorrect;
      counts[6] += !model_incorrect && rule_incorrect;
      counts[7] += !rule_incorrect;
      counts[8] += rule_incorrect;
      counts[9] += !it->second.at("parse_ok").get<bool>();
    }
  }
  const std::vector<std::int64_t> all = comm.allgather(mine);
  comm.allreduce_sum(std::span<std::int64_t>(counts));
  result.incorrect.assign(records.size(), false);
  for (std::int64_t i : all) result.incorrect[static_cast<std::size_t>(i)] = true;
  result.incorrect_count = static_cast<std::int64_t>(all.size());
  result.unparsed = counts[0];
  result.judged_by_rule = counts[1];
  result.judged_by_model = counts[2];
  result.quality = {counts[3], counts[4], counts[5], counts[6], counts[7], counts[8], counts[9]};

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

void check_prompt_lengths(const RunConfig& config, const Tokenizer& tokenizer, ChatFormat format, const Model& model,
                          const DatasetSettings& settings, const Dataset& data, bool for_training) {
  const bool refuse_long = long_prompt_policy_from_name(config.answer.long_prompt) == LongPromptPolicy::Error;
  const std::int64_t context = model.config().context_length();
  const std::string with = config.answer.system_prompt.empty() ? "" : ", with the system prompt";
  // "data.jsonl:7: record "x"" (the line), or "data.json: array element 7: record "x"".
  auto where = [&](const DatasetRecord& r) {
    return settings.path + (data.json_array ? ": array element " : ":") + std::to_string(r.line) + ": record \"" +
           r.id + "\"";
  };
  std::int64_t shortest = std::numeric_limits<std::int64_t>::max();
  const DatasetRecord* shortest_record = nullptr;
  for (const auto& r : data.records) {
    // The same tokens the answer stage generates from, and the training examples start with.
    const auto length = static_cast<std::int64_t>(
        chat_prompt(tokenizer, format, config.answer.system_prompt, r.question).size());
    if (length < shortest) shortest = length, shortest_record = &r;
    if (!refuse_long || length < context) continue;
    throw InputError(where(r) + ": the question's prompt is " + std::to_string(length) + " tokens (in the chat format" +
                     with + "), which leaves no room for an answer in the model's context of " +
                     std::to_string(context) + " tokens; shorten the question, or set answer.long_prompt: " +
                     "truncate-left to keep its end");
  }
  // A record whose prompt fills max_length is left out of training; when that is every record, the run would
  // answer and judge everything only to find nothing to train on.
  if (for_training && shortest_record != nullptr && shortest >= config.max_length)
    throw InputError(settings.path + ": no record can be trained on: every question's prompt fills max_length (" +
                     std::to_string(config.max_length) + " tokens), leaving no room for an answer (the shortest, record \"" +
                     shortest_record->id + "\" at " + (data.json_array ? "array element " : "line ") +
                     std::to_string(shortest_record->line) + ", is " + std::to_string(shortest) +
                     " tokens in the chat format" + with + "); raise max_length");
}

void check_judge_prompt_lengths(const RunConfig& config, const Judge& judge, const DatasetSettings& settings,
                                const Dataset& data) {
  if (judge.model == nullptr || judge.tokenizer == nullptr) return;  // rule judge: no prompt
  if (long_prompt_policy_from_name(config.answer.long_prompt) != LongPromptPolicy::Error) return;
  const std::int64_t context = judge.model->config().context_length();
  const std::int64_t answer_room = config.answer.max_new_tokens;
  for (const auto& r : data.records) {
    // The prompt with an empty answer, plus the longest answer the answer stage can write.
    const auto length = static_cast<std::int64_t>(judge_prompt(judge, r, "").size());
    if (length + answer_room < context) continue;
    throw InputError(settings.path + (data.json_array ? ": array element " : ":") + std::to_string(r.line) +
                     ": record \"" + r.id + "\": the judge prompt (judge.kind " + judge.settings.kind + ") is " +
                     std::to_string(length) + " tokens before the answer; with an answer of up to " +
                     "answer.max_new_tokens (" + std::to_string(answer_room) + ") tokens it would not fit the " +
                     (judge.settings.kind == "model" ? "judge" : "answering") + " model's context of " +
                     std::to_string(context) + " tokens; lower answer.max_new_tokens, shorten the record, use a "
                     "judge model with a longer context (judge.kind: model, judge.model), a shorter judge template "
                     "(judge.template_en, judge.template_zh), or judge.kind: rule");
  }
}

}  // namespace slearn
