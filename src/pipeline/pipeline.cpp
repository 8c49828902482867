#include "slearn/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "pipeline/answer_judge.hpp"
#include "pipeline/progress.hpp"
#include "pipeline/stage_files.hpp"
#include "slearn/backend.hpp"
#include "slearn/checkpoint.hpp"
#include "slearn/error.hpp"
#include "slearn/input_check.hpp"
#include "slearn/lora.hpp"
#include "slearn/mesh.hpp"
#include "slearn/model.hpp"
#include "slearn/sft_data.hpp"
#include "slearn/threads.hpp"
#include "slearn/trainer.hpp"
#include "util/atomic_file.hpp"
#include "util/run_dir.hpp"
#include "util/trace.hpp"

namespace slearn {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

ChatFormat chat_format_for(const std::string& name, const Model& model, const Tokenizer& tokenizer) {
  return name == "auto" ? default_chat_format(model.config().model_type, tokenizer) : chat_format_from_name(name);
}

// The parts of a run's fingerprint, in the order a refusal names them: everything whose change would mix the
// outputs of two different runs in one directory.
std::vector<std::pair<std::string, std::string>> run_fingerprint_parts(const RunConfig& config, bool separate_judge) {
  return {{"model", fingerprint_model(config.model)},
          {"tokenizer", fingerprint_tokenizer(config.model)},
          {"data", fingerprint_file(config.data.path)},
          {"eval", config.eval.data.path.empty() ? "-" : fingerprint_file(config.eval.data.path)},
          {"judge", separate_judge ? fingerprint_model(config.judge.model) + "+" + fingerprint_tokenizer(config.judge.model)
                                   : "-"},
          {"config", fingerprint_text(config.source_text)}};
}

std::string join_fingerprint(const std::vector<std::pair<std::string, std::string>>& parts) {
  std::string out;
  for (const auto& [key, value] : parts) out += (out.empty() ? "" : " ") + key + ":" + value;
  return out;
}

// What a run directory holds at its top level that a run wrote: the only names --force removes.
bool is_run_output(const std::string& name) {
  static const std::set<std::string> names = {
      "run.json", "run_config.yaml", "train_config.yaml", "summary.json", "incorrect.jsonl", "answers.jsonl",
      "judgements.jsonl", "metrics.jsonl", "adapter", "checkpoints", "eval-before", "eval-after", "report",
      kStopMarker};
  std::string base = name;
  if (const auto tmp = name.find(".tmp."); tmp != std::string::npos && is_atomic_temporary(name)) base = name.substr(0, tmp);
  if (names.count(base)) return true;
  if (base.starts_with(".progress.")) return true;
  if (base.starts_with("round-") && base.size() > 6 &&
      std::all_of(base.begin() + 6, base.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return true;
  for (const char* shard : {"answers.rank-", "judgements.rank-"})
    if (base.starts_with(shard) && base.ends_with(".jsonl")) return true;
  return false;
}

// A run directory belongs to one run: its configuration, model, tokenizer, data, evaluation data and judge.
// Refuses another unless forced, and refuses anything that is not a run directory of ours (a non-empty one
// without run.json, or with a run.json we cannot read): nothing in it is ours to resume into or delete. With
// --force, also refuses a run_dir that is or holds one of the run's inputs. Only reads (an input check).
// check_run_dir_usable comes before (first of the input checks, and again in the lock).
void check_run_dir(const RunConfig& config, const PipelineOptions& options, const std::string& fingerprint) {
  const fs::path dir(config.run_dir);
  if (!fs::exists(dir)) return;
  const fs::path marker = dir / "run.json";
  if (options.force)
    refuse_clearing_inputs(dir, {{"model directory", config.model}, {"judge model directory", config.judge.model},
                                 {"data file", config.data.path}, {"evaluation data file", config.eval.data.path},
                                 {"configuration file", options.config_path}},
                           "--force");
  refuse_foreign_run_dir(dir, "run.json", "run directory");
  if (!fs::exists(marker)) return;
  std::ifstream in(marker);
  const auto json = nlohmann::json::parse(in, nullptr, false);
  if (!json.is_object() || !json.contains("fingerprint") || !json["fingerprint"].is_string())
    throw InputError(marker.string() + ": unreadable (not a run.json written by slearn_dist): this run directory "
                     "can be neither resumed nor cleared by --force; move it aside or use another run_dir");
  const std::string previous = json["fingerprint"].get<std::string>();
  if (options.force || previous == fingerprint) return;
  auto piece = [](const std::string& f, const std::string& part) {
    const auto at = (" " + f).find(" " + part + ":");
    return at == std::string::npos ? std::string() : f.substr(at, f.find(' ', at) - at);
  };
  std::string what;
  for (const char* part : {"model", "tokenizer", "data", "eval", "judge", "config"})
    if (piece(previous, part) != piece(fingerprint, part)) what += std::string(what.empty() ? "" : ", ") + part;
  throw InputError(config.run_dir + " was started with another " + (what.empty() ? "run" : what) +
                   " (fingerprint differs); use a new run_dir or pass --force to start over");
}

// Takes the run directory: locks it (rank 0, for the run's life), checks it again under the lock, empties it of
// a previous run's outputs with --force, and marks it as this run's. Only once every input passed its checks,
// so a bad input leaves a previous run's files as they were. Collective; a failure is agreed by all ranks.
std::optional<RunDirLock> claim_run_dir(const RunConfig& config, Communicator& comm, const PipelineOptions& options,
                                        const std::string& fingerprint) {
  const fs::path run_dir(config.run_dir);
  const fs::path marker = run_dir / "run.json";
  std::optional<RunDirLock> lock;
  check_on_all_ranks(comm, [&] {
    if (comm.rank() != 0) return;
    lock.emplace(run_dir);
    check_run_dir(config, options, fingerprint);  // again: another run may have taken it since the first look
    std::vector<fs::path> leftovers;
    for (const auto& entry : fs::directory_iterator(run_dir)) {
      const std::string name = entry.path().filename().string();
      if (!is_run_output(name)) continue;  // never ours to remove, whatever --force says
      if (options.force && name != "run.json") {
        leftovers.push_back(entry.path());
        continue;
      }
      // Temporaries of atomic writes cut short by a kill (files, and adapter directories): never complete,
      // never read. Stop markers of a stopped run: this run has not been asked to stop.
      if (is_atomic_temporary(entry.path()) || name == kStopMarker) {
        leftovers.push_back(entry.path());
      } else if (entry.is_directory()) {
        // Checkpoint saves cut short leave <name>.tmp beside the checkpoints (see checkpoint.hpp).
        auto leftover = [](const fs::path& path) {
          return is_atomic_temporary(path) || path.filename() == kStopMarker ||
                 (path.parent_path().filename() == "checkpoints" && path.extension() == ".tmp");
        };
        for (auto it = fs::recursive_directory_iterator(entry.path()); it != fs::recursive_directory_iterator(); ++it) {
          if (leftover(it->path())) {
            leftovers.push_back(it->path());
            if (it->is_directory()) it.disable_recursion_pending();
          }
        }
      }
    }
    for (const auto& path : leftovers) fs::remove_all(path);
    write_file_atomically(marker, nlohmann::json{{"fingerprint", fingerprint}}.dump(2) + "\n");
    write_file_atomically(run_dir / "run_config.yaml", config.source_text);
  });
  comm.barrier();
  return lock;
}

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw Error(path.string() + ": cannot read");
  return bytes;
}

std::vector<QaRecord> qa_records(const std::vector<DatasetRecord>& records) {
  std::vector<QaRecord> out;
  for (const auto& r : records) out.push_back({r.id, r.question, r.answer});
  return out;
}

// summary.json's judge_quality: null when no record was graded by the model and the rule both.
nlohmann::json judge_quality_json(const JudgeQuality& q, const JudgeSettings& settings) {
  if (q.compared == 0) return nullptr;
  return {{"rule", settings.rule},
          {"compared", q.compared},
          {"agree", q.agree},
          {"agreement", q.agreement()},
          {"false_positive", q.false_positive},
          {"false_negative", q.false_negative},
          {"rule_correct", q.rule_correct},
          {"rule_incorrect", q.rule_incorrect},
          {"false_positive_rate", q.false_positive_rate()},
          {"false_negative_rate", q.false_negative_rate()},
          {"unparseable", q.unparseable}};
}

std::string table(const PipelineSummary& s, const std::vector<StageTime>& stages) {
  std::ostringstream out;
  char line[160];
  out << "\n";
  std::snprintf(line, sizeof line, "%-22s %12s\n", "records", std::to_string(s.records).c_str());
  out << line;
  std::snprintf(line, sizeof line, "%-22s %12lld (%.1f%%)\n", "incorrect", static_cast<long long>(s.incorrect),
                100.0 * s.incorrect_rate);
  out << line;
  std::snprintf(line, sizeof line, "%-22s %12lld\n", "trained on", static_cast<long long>(s.trained_on));
  out << line;
  if (s.skipped_steps > 0) {
    std::snprintf(line, sizeof line, "%-22s %12lld (non-finite, train.nan_policy skip_step)\n", "skipped steps",
                  static_cast<long long>(s.skipped_steps));
    out << line;
  }
  std::string devices = std::to_string(s.world_size) + (s.backend == "cuda" ? " GPU(s), cuda" : " rank(s), cpu");
  if (s.tensor_parallel > 1)
    devices += ", " + std::to_string(s.tensor_parallel) + " x " + std::to_string(s.world_size / s.tensor_parallel) +
               " (tensor x data)";
  std::snprintf(line, sizeof line, "%-22s %12s\n", "devices", devices.c_str());
  out << line;
  const char* unit = s.backend == "cuda" ? "GPU-hours" : "device-hours";
  for (const auto& st : stages) {
    std::snprintf(line, sizeof line, "%-22s %10.2f s %10.5f %s\n", ("time: " + st.stage).c_str(), st.seconds,
                  st.device_hours, unit);
    out << line;
  }
  const JudgeQuality& q = s.judge_quality;
  if (q.compared > 0) {
    std::snprintf(line, sizeof line, "%-22s %11.1f%% (%lld of %lld the rule graded too)\n", "judge agrees w/ rule",
                  100.0 * q.agreement(), static_cast<long long>(q.agree), static_cast<long long>(q.compared));
    out << line;
    std::snprintf(line, sizeof line, "%-22s %5.1f%% / %.1f%%, %lld unparseable\n", "judge false pos/neg",
                  100.0 * q.false_positive_rate(), 100.0 * q.false_negative_rate(),
                  static_cast<long long>(q.unparseable));
    out << line;
  }
  auto pct = [](std::optional<double> v) { return v ? std::to_string(100.0 * *v).substr(0, 5) + "%" : std::string("-"); };
  std::snprintf(line, sizeof line, "%-22s %12s\n", "accuracy before", pct(s.accuracy_before).c_str());
  out << line;
  std::snprintf(line, sizeof line, "%-22s %12s\n", "accuracy after", pct(s.accuracy_after).c_str());
  out << line;
  return out.str();
}

}  // namespace

PipelineSummary run_pipeline(const RunConfig& config, Communicator& comm, const PipelineOptions& options) {
  const int world = comm.size();
  apply_thread_plan(plan_threads(config.threads));

  // Every input is read and checked before the run directory is touched: the model, tokenizer, data sets,
  // prompt lengths and the run directory's owner. A bad one (even with --force) leaves a previous run's files
  // as they were; under MPI the ranks agree, so it is one line for the job and no rank waits for the others.
  std::unique_ptr<Backend> backend;
  std::optional<Mesh> mesh_slot;  // world = T x D (parallel.tensor)
  std::optional<Model> model_slot, judge_model;  // judge_model: kind model, or cascade with judge.model
  std::optional<Tokenizer> tokenizer_slot, judge_tokenizer;
  std::optional<Dataset> data_slot, eval;
  ChatFormat format{};
  const bool separate_judge =
      config.judge.kind == "model" || (config.judge.kind == "cascade" && !config.judge.model.empty());
  std::string fingerprint;
  Judge judge{config.judge, nullptr, nullptr, format};
  check_on_all_ranks(comm, [&] {
    check_run_dir_usable(config.run_dir);  // first: a run_dir that cannot be used is the cheapest thing to find
    backend = make_training_backend(config.backend, config.cpu_weights);  // every stage runs on it: answer, judge, train, eval
    // Each tensor group shares one copy of the model (and of the judge model), a slice on each of its ranks.
    mesh_slot.emplace(make_mesh(comm, static_cast<int>(config.parallel.tensor)));
    const TensorParallel tp{mesh_slot->tensor_group.get(), mesh_slot->tensor_rank, mesh_slot->tensor};
    if (tp.size > 1 && config.answer.temperature > 0 && config.answer.top_k == 0)
      throw InputError("answer.temperature " + std::to_string(config.answer.temperature) + " with answer.top_k 0 "
                       "cannot be sampled on a tensor-parallel model (parallel.tensor " + std::to_string(tp.size) +
                       "): no rank holds a whole row of logits; set answer.top_k (e.g. 50) or parallel.tensor 1");
    model_slot.emplace(Model::load(config.model, *backend, tp));
    tokenizer_slot.emplace(Tokenizer::from_dir(config.model));
    check_tokenizer_fits_vocab(*tokenizer_slot, model_slot->config().vocab_size, fs::path(config.model) / "tokenizer.json");
    format = chat_format_for(config.answer.chat_format, *model_slot, *tokenizer_slot);
    data_slot.emplace(load_dataset(config.data));
    check_prompt_lengths(config, *tokenizer_slot, format, *model_slot, config.data, *data_slot, true);
    // Each round trains on at most every record: the bound holds for the run whatever the judge decides.
    training_steps(config.train, static_cast<std::int64_t>(data_slot->records.size()), config.data.path);
    if (!config.eval.data.path.empty()) {
      eval.emplace(load_dataset(config.eval.data));
      check_prompt_lengths(config, *tokenizer_slot, format, *model_slot, config.eval.data, *eval, false);
    }
    if (separate_judge) {
      judge_model.emplace(Model::load(config.judge.model, *backend, tp));
      judge_tokenizer.emplace(Tokenizer::from_dir(config.judge.model));
      check_tokenizer_fits_vocab(*judge_tokenizer, judge_model->config().vocab_size,
                                 fs::path(config.judge.model) / "tokenizer.json");
    }
    // The grading model: the answering model itself (self), another model (model, cascade with judge.model).
    judge = Judge{config.judge, nullptr, nullptr, format};
    if (config.judge.kind == "self" || (config.judge.kind == "cascade" && config.judge.model.empty())) {
      judge.model = &*model_slot;
      judge.tokenizer = &*tokenizer_slot;
    } else if (separate_judge) {
      judge.model = &*judge_model;
      judge.tokenizer = &*judge_tokenizer;
      judge.format = default_chat_format(judge_model->config().model_type, *judge_tokenizer);
    }
    check_judge_prompt_lengths(config, judge, config.data, *data_slot);
    if (eval) check_judge_prompt_lengths(config, judge, config.eval.data, *eval);
    fingerprint = join_fingerprint(run_fingerprint_parts(config, separate_judge));
    check_run_dir(config, options, fingerprint);
  });
  const std::optional<RunDirLock> lock = claim_run_dir(config, comm, options, fingerprint);  // held to the end
  const fs::path run_dir(config.run_dir);
  Model& model = *model_slot;
  const Mesh& mesh = *mesh_slot;
  const Tokenizer& tokenizer = *tokenizer_slot;
  const Dataset& data = *data_slot;

  PipelineSummary summary;
  summary.world_size = world;
  summary.tensor_parallel = mesh.tensor;
  summary.backend = std::string(backend->name());
  summary.records = static_cast<std::int64_t>(data.records.size());
  summary.bad_records = static_cast<std::int64_t>(data.bad.size());
  std::map<std::string, double> seconds;
  auto evaluate = [&](const std::string& name) -> double {
    const PassResult pass = answer_and_judge(config, comm, mesh, model, tokenizer, format, judge, eval->records,
                                             run_dir / ("eval-" + name), "eval " + name,
                                             options.show_progress);
    seconds["eval"] += pass.answer_seconds + pass.judge_seconds;
    return 1.0 - static_cast<double>(pass.incorrect_count) / static_cast<double>(eval->records.size());
  };
  if (eval && config.eval.before) summary.accuracy_before = evaluate("before");

  std::vector<DatasetRecord> pending = data.records;  // round r answers what round r-1 got wrong
  std::optional<LoraAdapter> adapter;
  std::string adapter_dir;
  for (std::int64_t round = 1; round <= config.rounds && !pending.empty(); ++round) {
    const fs::path dir = round == 1 ? run_dir : run_dir / ("round-" + std::to_string(round));
    const std::string label = config.rounds > 1 ? "round " + std::to_string(round) : "";
    model.set_adapter(adapter ? &*adapter : nullptr);
    const PassResult pass = answer_and_judge(config, comm, mesh, model, tokenizer, format, judge, pending, dir,
                                             label, options.show_progress);
    seconds["answer"] += pass.answer_seconds;
    seconds["judge"] += pass.judge_seconds;
    std::vector<DatasetRecord> wrong;
    for (std::size_t i = 0; i < pending.size(); ++i)
      if (pass.incorrect[i]) wrong.push_back(pending[i]);
    if (round == 1) {
      summary.judge_quality = pass.quality;
      summary.unparseable_replies = pass.unparsed;
      summary.incorrect = static_cast<std::int64_t>(wrong.size());
      summary.incorrect_rate = static_cast<double>(wrong.size()) / static_cast<double>(std::max<std::size_t>(1, pending.size()));
    }
    if (comm.rank() == 0) {
      std::ostringstream out;
      for (const auto& r : wrong) out << r.original.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
      write_file_atomically(dir / "incorrect.jsonl", out.str());
    }
    if (comm.rank() == 0)
      log_line(comm, (label.empty() ? std::string() : label + ": ") + std::to_string(wrong.size()) + " of " +
                       std::to_string(pending.size()) + " answered incorrectly (" + std::to_string(pass.judged_by_rule) +
                       " judged by rule, " + std::to_string(pass.judged_by_model) + " by model, " +
                       std::to_string(pass.unparsed) + " unparseable judge replies counted as incorrect)");

    const std::vector<DatasetRecord>& selected = config.train_on == "all" ? pending : wrong;
    if (round == 1) summary.trained_on = static_cast<std::int64_t>(selected.size());
    if (selected.empty()) break;
    const auto train_start = Clock::now();
    const TraceRange train_trace(label.empty() ? "train" : label + " train");
    TrainConfig train_config = to_train_config(config, dir.string());
    ExampleStats stats;
    const auto examples = build_examples(qa_records(selected), tokenizer, format, train_config.data, stats);
    std::ostringstream ids;
    for (const auto& r : selected) ids << r.id << '\n';
    TrainRunOptions train_options;
    train_options.show_progress = options.show_progress;
    train_options.initial_adapter = adapter_dir;
    train_options.stage = label.empty() ? "train" : label + " train";
    train_options.inject_nan_at_step = options.inject_nan_at_step;
    model.set_adapter(nullptr);
    const TrainResult trained =
        train_lora_on_examples(model, examples, fingerprint_text(ids.str()), train_config, comm,
                               mesh.tensor == 1 ? comm : *mesh.data_group, train_options);
    summary.skipped_steps += trained.skipped_steps;
    seconds["train"] += std::chrono::duration<double>(Clock::now() - train_start).count();
    adapter_dir = (dir / "adapter").string();
    adapter.emplace(LoraAdapter::load_for(model, adapter_dir, *backend));
    pending = wrong;
  }
  if (comm.rank() == 0 && !adapter_dir.empty() && fs::path(adapter_dir) != run_dir / "adapter") {
    // The last round's adapter as the run's: replaced whole, so a kill never leaves half a copy.
    replace_directory_atomically(run_dir / "adapter", [&](const fs::path& tmp) {
      for (const auto& entry : fs::directory_iterator(adapter_dir))
        write_file_atomically(tmp / entry.path().filename(), read_file_bytes(entry.path()));
    });
  }
  model.set_adapter(adapter ? &*adapter : nullptr);
  if (eval && config.eval.after && adapter) summary.accuracy_after = evaluate("after");

  for (const char* stage : {"answer", "judge", "train", "eval"})
    if (seconds.count(stage)) summary.stages.push_back({stage, seconds[stage], world * seconds[stage] / 3600.0});
  if (comm.rank() == 0) {
    nlohmann::json stages = nlohmann::json::object();
    for (const auto& st : summary.stages) stages[st.stage] = {{"wall_seconds", st.seconds}, {"device_hours", st.device_hours}};
    auto optional_number = [](std::optional<double> v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
    nlohmann::json json{{"records", summary.records},
                        {"bad_records", summary.bad_records},
                        {"incorrect", summary.incorrect},
                        {"incorrect_rate", summary.incorrect_rate},
                        {"trained_on", summary.trained_on},
                        {"skipped_steps", summary.skipped_steps},
                        {"train_on", config.train_on},
                        {"rounds", config.rounds},
                        {"backend", summary.backend},
                        {"devices", summary.world_size},
                        {"world_size", world},
                        {"tensor_parallel", mesh.tensor},
                        {"data_parallel", mesh.data},
                        {"stages", stages},
                        {"accuracy_before", optional_number(summary.accuracy_before)},
                        {"accuracy_after", optional_number(summary.accuracy_after)},
                        {"eval_records", eval ? static_cast<std::int64_t>(eval->records.size()) : 0},
                        {"unparseable_judge_replies", summary.unparseable_replies},
                        {"judge_quality", judge_quality_json(summary.judge_quality, config.judge)}};
    write_file_atomically(run_dir / "summary.json", json.dump(2) + "\n");
    std::printf("%s", table(summary, summary.stages).c_str());
    std::fflush(stdout);
  }
  comm.barrier();
  return summary;
}

}  // namespace slearn
