#include "report/run_data.hpp"

#include <algorithm>
#include <fstream>
#include <functional>

#include "slearn/error.hpp"

namespace slearn::report {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json_file(const fs::path& path, const std::string& missing_means) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw InputError(path.string() + ": missing: " + missing_means);
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot be read");
  json value = json::parse(in, nullptr, false);
  if (value.is_discarded() || !value.is_object())
    throw InputError(path.string() + ": damaged (not a JSON object); it was not written whole by slearn_dist");
  return value;
}

// Calls `handle` with each non-blank line of a JSON-lines file, parsed as an object.
void for_each_line(const fs::path& path, const std::function<void(const json&, std::size_t)>& handle) {
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot be read");
  std::string text;
  std::size_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    json value = json::parse(text, nullptr, false);
    if (value.is_discarded() || !value.is_object())
      throw InputError(path.string() + ":" + std::to_string(line) + ": damaged (not a JSON object)");
    handle(value, line);
  }
}

[[noreturn]] void damaged(const fs::path& path, const std::string& what) {
  throw InputError(path.string() + ": damaged: " + what);
}

double number(const json& object, const char* key, const fs::path& path) {
  if (!object.contains(key) || !object[key].is_number()) damaged(path, std::string("no number '") + key + "'");
  return object[key].get<double>();
}

std::int64_t integer(const json& object, const char* key, const fs::path& path) {
  if (!object.contains(key) || !object[key].is_number_integer())
    damaged(path, std::string("no integer '") + key + "'");
  return object[key].get<std::int64_t>();
}

std::int64_t integer_or(const json& object, const char* key, std::int64_t fallback, const fs::path& path) {
  return object.contains(key) ? integer(object, key, path) : fallback;
}

std::optional<double> number_or_null(const json& object, const char* key, const fs::path& path) {
  if (!object.contains(key) || object[key].is_null()) return std::nullopt;
  return number(object, key, path);
}

TrainingPart read_metrics(const fs::path& path, std::int64_t round) {
  TrainingPart part;
  part.round = round;
  for_each_line(path, [&](const json& line, std::size_t n) {
    const std::string where = path.string() + ":" + std::to_string(n);
    if (!line.contains("step") || !line["step"].is_number_integer() || !line.contains("learning_rate") ||
        !line["learning_rate"].is_number() || !line.contains("tokens") || !line["tokens"].is_number_integer() ||
        !line.contains("loss") || !(line["loss"].is_number() || line["loss"].is_null()))
      throw InputError(where + ": damaged (a metrics line needs step, loss, learning_rate and tokens)");
    part.step.push_back(line["step"].get<std::int64_t>());
    part.loss.push_back(line["loss"].is_null() ? std::nullopt : std::optional<double>(line["loss"].get<double>()));
    part.learning_rate.push_back(line["learning_rate"].get<double>());
    part.tokens += line["tokens"].get<std::int64_t>();
  });
  return part;
}

JudgeSet read_judgements(const fs::path& path, const std::string& name) {
  JudgeSet set;
  set.name = name;
  for_each_line(path, [&](const json& line, std::size_t n) {
    const std::string where = path.string() + ":" + std::to_string(n);
    if (!line.contains("incorrect") || !line["incorrect"].is_boolean())
      throw InputError(where + ": damaged (a judgement needs the boolean 'incorrect')");
    (line["incorrect"].get<bool>() ? set.incorrect : set.correct) += 1;
    if (line.contains("score") && line["score"].is_number()) set.scores.push_back(line["score"].get<double>());
    else if (line.contains("score") && !line["score"].is_null())
      throw InputError(where + ": damaged ('score' is neither a number nor null)");
    else set.unscored += 1;
    if (line.contains("judged_by") && line["judged_by"].is_string()) {
      const std::string by = line["judged_by"].get<std::string>();
      if (std::find(set.judged_by.begin(), set.judged_by.end(), by) == set.judged_by.end())
        set.judged_by.push_back(by);
    }
  });
  return set;
}

std::string fingerprint_part(const std::string& fingerprint, const std::string& part) {
  const std::string spaced = " " + fingerprint;
  const auto at = spaced.find(" " + part + ":");
  if (at == std::string::npos) return {};
  const auto end = spaced.find(' ', at + 1);
  return spaced.substr(at + 1, end == std::string::npos ? std::string::npos : end - at - 1);
}

}  // namespace

std::optional<StageRow> RunData::stage(const std::string& name) const {
  for (const auto& s : stages)
    if (s.stage == name) return s;
  return std::nullopt;
}

std::int64_t RunData::trained_tokens() const {
  std::int64_t total = 0;
  for (const auto& part : training) total += part.tokens;
  return total;
}

RunData read_run(const fs::path& dir, const std::string& role) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw InputError(dir.string() + ": no such " + role + " (expected a finished run's run_dir)");
  if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": not a directory (the " + role + " must be a run_dir)");
  RunData run;
  run.dir = dir;
  const json marker = read_json_file(dir / "run.json", "not a run directory of slearn_dist (the " + role + ")");
  if (!marker.contains("fingerprint") || !marker["fingerprint"].is_string())
    damaged(dir / "run.json", "no 'fingerprint'");
  run.fingerprint = marker["fingerprint"].get<std::string>();
  const fs::path path = dir / "summary.json";
  run.summary = read_json_file(path, "the " + role + " is not a completed run (summary.json is written last)");
  const json& s = run.summary;
  run.records = integer(s, "records", path);
  run.bad_records = integer_or(s, "bad_records", 0, path);
  run.incorrect = integer(s, "incorrect", path);
  run.incorrect_rate = number(s, "incorrect_rate", path);
  run.trained_on = integer(s, "trained_on", path);
  run.skipped_steps = integer_or(s, "skipped_steps", 0, path);
  run.rounds_configured = integer_or(s, "rounds", 1, path);
  run.world_size = integer(s, "world_size", path);
  run.tensor_parallel = integer_or(s, "tensor_parallel", 1, path);
  run.eval_records = integer_or(s, "eval_records", 0, path);
  if (!s.contains("train_on") || !s["train_on"].is_string()) damaged(path, "no string 'train_on'");
  run.train_on = s["train_on"].get<std::string>();
  run.backend = s.contains("backend") && s["backend"].is_string() ? s["backend"].get<std::string>() : "cpu";
  run.accuracy_before = number_or_null(s, "accuracy_before", path);
  run.accuracy_after = number_or_null(s, "accuracy_after", path);
  if (!s.contains("stages") || !s["stages"].is_object()) damaged(path, "no object 'stages'");
  for (const char* name : {"answer", "judge", "train", "eval"}) {
    if (!s["stages"].contains(name)) continue;
    const json& st = s["stages"][name];
    if (!st.is_object()) damaged(path, std::string("stages.") + name + " is not an object");
    const std::string key = std::string("stages.") + name;
    if (!st.contains("wall_seconds") || !st["wall_seconds"].is_number() || !st.contains("device_hours") ||
        !st["device_hours"].is_number())
      damaged(path, key + " needs the numbers wall_seconds and device_hours");
    run.stages.push_back({name, st["wall_seconds"].get<double>(), st["device_hours"].get<double>()});
  }

  // Round 1 lives in the run directory itself, round r > 1 in round-r/ (as many as ran: a round with nothing
  // left wrong is not started).
  for (std::int64_t round = 1; round <= run.rounds_configured; ++round) {
    const fs::path round_dir = round == 1 ? dir : dir / ("round-" + std::to_string(round));
    if (round > 1 && !fs::is_directory(round_dir, ec)) break;
    const fs::path judgements = round_dir / "judgements.jsonl";
    if (!fs::is_regular_file(judgements, ec))
      throw InputError(judgements.string() + ": missing: the " + role + " is not a completed run");
    const JudgeSet set = read_judgements(judgements, "answers");
    run.rounds.push_back({round, set.correct + set.incorrect, set.incorrect});
    if (round == 1) {
      run.judge_sets.push_back(set);
      if (set.incorrect != run.incorrect)
        throw InputError(judgements.string() + ": holds " + std::to_string(set.incorrect) +
                         " incorrect judgements where " + path.string() + " says " + std::to_string(run.incorrect) +
                         ": the " + role + " is inconsistent (a file of another run?)");
    }
    if (fs::is_regular_file(round_dir / "metrics.jsonl", ec))
      run.training.push_back(read_metrics(round_dir / "metrics.jsonl", round));
  }
  for (const char* name : {"before", "after"}) {
    const fs::path judgements = dir / (std::string("eval-") + name) / "judgements.jsonl";
    if (fs::is_regular_file(judgements, ec)) run.judge_sets.push_back(read_judgements(judgements, std::string("eval ") + name));
  }
  return run;
}

std::vector<std::string> differing_inputs(const RunData& a, const RunData& b) {
  std::vector<std::string> out;
  for (const char* part : {"model", "tokenizer", "data", "eval", "judge"})
    if (fingerprint_part(a.fingerprint, part) != fingerprint_part(b.fingerprint, part)) out.emplace_back(part);
  return out;
}

}  // namespace slearn::report
