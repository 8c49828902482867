#include "slearn/report.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "report/plots_py.hpp"  // generated from src/report/plots.py: kPlotScript
#include "report/python_runner.hpp"
#include "report/run_data.hpp"
#include "slearn/error.hpp"
#include "util/atomic_file.hpp"

namespace slearn {

namespace fs = std::filesystem;
using nlohmann::json;
using report::RunData;

namespace {

// report.json marks a report directory as one this code wrote, and lists what it holds: only such a
// directory, holding nothing else, is ever replaced.
constexpr const char* kManifest = "report.json";
constexpr const char* kWrittenBy = "slearn_dist report";

std::string format(const char* spec, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, spec, value);
  return buffer;
}
std::string percent(std::optional<double> v) { return v ? format("%.1f%%", 100.0 * *v) : "-"; }
std::string hours(double v) { return format("%.4g", v); }
std::string seconds(double v) { return format("%.2f", v); }
std::string points(double v) { return format("%+.1f", 100.0 * v) + " points"; }
std::string ratio(double a, double b) { return b > 0 ? format("%.2f", a / b) : "-"; }
std::string count(std::int64_t v) { return std::to_string(v); }

struct Plot {
  std::string kind, file, title;
};

// The name of an entry of `dir` that no report wrote (empty if none): with no valid report.json, any entry;
// with one, an entry it does not list (or a temporary of an atomic write a report was killed in).
std::string foreign_entry(const fs::path& dir) {
  std::set<std::string> ours;
  std::ifstream in(dir / kManifest);
  const json manifest = in ? json::parse(in, nullptr, false) : json();
  if (manifest.is_object() && manifest.value("written_by", "") == kWrittenBy && manifest.contains("files") &&
      manifest["files"].is_array()) {
    ours.insert(kManifest);
    for (const auto& f : manifest["files"])
      if (f.is_string()) ours.insert(f.get<std::string>());
  }
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_symlink() || entry.is_directory()) return name;
    if (!ours.count(name) && !(is_atomic_temporary(name) && !ours.empty())) return name;
  }
  return {};
}

// Refuses a report directory that holds anything a report did not write: it is not ours to replace.
void check_replaceable(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  if (fs::is_symlink(fs::symlink_status(dir, ec)) || !fs::is_directory(dir, ec))
    throw InputError(dir.string() + " exists and is not a directory a report wrote; nothing is touched: move it "
                     "aside or choose another --out");
  const std::string foreign = foreign_entry(dir);
  if (!foreign.empty())
    throw InputError(dir.string() + " holds " + foreign + ", which slearn_dist report did not write; nothing "
                     "there is touched: move it aside or choose another --out");
}

// Temporaries of a report killed while it wrote (report.tmp.PID, report.old.tmp.PID), when every file in them
// is a report's: removed, as the run removes its own.
void remove_leftovers(const fs::path& out_dir) {
  std::error_code ec;
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if ((name.starts_with("report.tmp.") || name.starts_with("report.old.tmp.")) && !entry.is_symlink() &&
        entry.is_directory() && fs::exists(entry.path() / kManifest) && foreign_entry(entry.path()).empty())
      leftovers.push_back(entry.path());
  }
  for (const auto& path : leftovers) fs::remove_all(path, ec);
}

std::vector<Plot> plots_for(const RunData& run) {
  std::vector<Plot> plots;
  bool trained = false;
  for (const auto& part : run.training) trained = trained || !part.step.empty();
  if (trained) plots.push_back({"training", "training.png", "Training loss and learning rate"});
  if (run.accuracy_before || run.accuracy_after || run.rounds.size() > 1)
    plots.push_back({"accuracy", "accuracy.png", "Accuracy before and after"});
  if (!run.stages.empty()) plots.push_back({"stages", "stages.png", "Time per stage"});
  bool judged = false;
  for (const auto& set : run.judge_sets) judged = judged || set.correct + set.incorrect > 0;
  if (judged) plots.push_back({"judge", "judge.png", "Judge scores"});
  return plots;
}

json stages_json(const RunData& run) {
  json out = json::array();
  for (const auto& s : run.stages)
    out.push_back({{"stage", s.stage}, {"wall_seconds", s.wall_seconds}, {"device_hours", s.device_hours}});
  return out;
}

json optional_json(std::optional<double> v) { return v ? json(*v) : json(); }

// The numbers behind the plots, kept beside them (series.json) so that a reader can check or redraw them.
json series_for(const RunData& run, const RunData* baseline, const std::vector<Plot>& plots, const std::string& title) {
  json training = json::array();
  for (const auto& part : run.training) {
    json loss = json::array();
    for (const auto& l : part.loss) loss.push_back(optional_json(l));
    training.push_back({{"round", part.round}, {"step", part.step}, {"loss", loss},
                        {"learning_rate", part.learning_rate}});
  }
  json rounds = json::array();
  for (const auto& r : run.rounds)
    rounds.push_back({{"round", r.round}, {"answered", r.answered}, {"incorrect", r.incorrect}});
  json judge = json::array();
  for (const auto& set : run.judge_sets)
    judge.push_back({{"name", set.name}, {"scores", set.scores}, {"correct", set.correct},
                     {"incorrect", set.incorrect}, {"unscored", set.unscored}, {"judged_by", set.judged_by}});
  json plot_list = json::array();
  for (const auto& p : plots) plot_list.push_back({{"kind", p.kind}, {"file", p.file}});
  return {{"title", title},
          {"unit", run.unit()},
          {"training", training},
          {"accuracy", {{"before", optional_json(run.accuracy_before)},
                        {"after", optional_json(run.accuracy_after)},
                        {"baseline_after", baseline ? optional_json(baseline->accuracy_after) : json()},
                        {"eval_records", run.eval_records}}},
          {"rounds", rounds},
          {"stages", stages_json(run)},
          {"baseline_stages", baseline ? stages_json(*baseline) : json()},
          {"judge", judge},
          {"plots", plot_list}};
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

std::string devices(const RunData& run) {
  std::string out = count(run.world_size) + (run.backend == "cuda" ? " GPU(s), cuda" : " rank(s), cpu");
  if (run.tensor_parallel > 1)
    out += ", " + count(run.tensor_parallel) + " x " + count(run.world_size / run.tensor_parallel) + " (tensor x data)";
  return out;
}

void table1(std::ostringstream& md, const RunData& run) {
  md << "## Table 1: records, incorrect answers and cost\n\n"
     << "| quantity | value |\n| --- | ---: |\n"
     << "| records | " << run.records << " |\n";
  if (run.bad_records > 0) md << "| bad records (left out) | " << run.bad_records << " |\n";
  md << "| incorrect | " << run.incorrect << " |\n"
     << "| incorrect rate | " << percent(run.incorrect_rate) << " |\n"
     << "| trained on | " << run.trained_on << " (train_on: " << run.train_on << ") |\n";
  if (run.skipped_steps > 0) md << "| skipped training steps (non-finite) | " << run.skipped_steps << " |\n";
  // The model judge against the rule where both graded (summary.json's judge_quality, docs/judging.md).
  const auto quality = run.summary.find("judge_quality");
  if (quality != run.summary.end() && quality->is_object()) {
    const json& q = *quality;
    md << "| judge agrees with the " << q.at("rule").get<std::string>() << " rule | "
       << percent(q.at("agreement").get<double>()) << " (" << q.at("agree").get<std::int64_t>() << " of "
       << q.at("compared").get<std::int64_t>() << ") |\n"
       << "| judge false positives (rule: correct) | " << percent(q.at("false_positive_rate").get<double>()) << " ("
       << q.at("false_positive").get<std::int64_t>() << " of " << q.at("rule_correct").get<std::int64_t>() << ") |\n"
       << "| judge false negatives (rule: incorrect) | " << percent(q.at("false_negative_rate").get<double>())
       << " (" << q.at("false_negative").get<std::int64_t>() << " of " << q.at("rule_incorrect").get<std::int64_t>()
       << ") |\n"
       << "| unparseable judge replies (of those) | " << q.at("unparseable").get<std::int64_t>() << " |\n";
  }
  md << "| devices | " << devices(run) << " |\n\n";
  md << "| stage | wall seconds | " << run.unit() << " |\n| --- | ---: | ---: |\n";
  double total_seconds = 0, total_hours = 0;
  for (const char* name : {"answer", "judge", "train", "eval"}) {
    if (const auto st = run.stage(name)) {
      md << "| " << name << " | " << seconds(st->wall_seconds) << " | " << hours(st->device_hours) << " |\n";
      total_seconds += st->wall_seconds;
      total_hours += st->device_hours;
    } else {
      md << "| " << name << " | not run | not run |\n";
    }
  }
  md << "| total | " << seconds(total_seconds) << " | " << hours(total_hours) << " |\n\n"
     << run.unit() << ": ranks x wall seconds / 3600, the unit of the paper's tables"
     << (run.backend == "cuda" ? " (one GPU per rank)" : " (CPU ranks)") << ". From `summary.json`";
  if (run.rounds_configured > 1) md << "; answer, judge and train summed over the rounds";
  md << ".\n\n";
  if (run.rounds.size() > 1 || run.rounds_configured > 1) {
    md << "| round | answered | incorrect | trained on |\n| ---: | ---: | ---: | ---: |\n";
    for (const auto& r : run.rounds)
      md << "| " << r.round << " | " << r.answered << " | " << r.incorrect << " | "
         << (run.train_on == "all" ? r.answered : r.incorrect) << " |\n";
    md << "\nRound 1 answers every record; round r answers the records still wrong after round r-1"
       << (static_cast<std::int64_t>(run.rounds.size()) < run.rounds_configured
               ? " (" + count(static_cast<std::int64_t>(run.rounds.size())) + " of the " +
                     count(run.rounds_configured) + " rounds configured ran: none was left wrong, or none to train)"
               : "")
       << ".\n\n";
  }
}

void table2(std::ostringstream& md, const RunData& run) {
  md << "## Table 2: accuracy before and after\n\n";
  if (!run.accuracy_before && !run.accuracy_after) {
    md << "No validation set was evaluated (`eval.data.path` unset, or `eval.before`/`eval.after` off): "
          "there is no accuracy to show.\n\n";
    return;
  }
  md << "| | accuracy |\n| --- | ---: |\n"
     << "| before training | " << percent(run.accuracy_before) << " |\n"
     << "| after training | " << percent(run.accuracy_after) << " |\n";
  if (run.accuracy_before && run.accuracy_after)
    md << "| change | " << points(*run.accuracy_after - *run.accuracy_before) << " |\n";
  md << "\nOn the validation set (" << run.eval_records << " records: `eval-before/`, `eval-after/`)";
  if (run.rounds_configured > 1) md << ", before the first round and after the last";
  md << ".\n\n";
}

void side_by_side(std::ostringstream& md, const RunData& run, const RunData& base, const std::string& run_label,
                  const std::string& base_label) {
  const auto train = run.stage("train"), base_train = base.stage("train");
  const double hours_run = train ? train->device_hours : 0, hours_base = base_train ? base_train->device_hours : 0;
  md << "## Side by side: this run and the full-data baseline\n\n"
     << "| | this run | baseline |\n| --- | ---: | ---: |\n"
     << "| run directory | `" << run_label << "` | `" << base_label << "` |\n"
     << "| train_on | " << run.train_on << " | " << base.train_on << " |\n"
     << "| trained-on records" << (run.rounds_configured > 1 || base.rounds_configured > 1 ? " (round 1)" : "")
     << " | " << run.trained_on << " | " << base.trained_on << " |\n"
     << "| training tokens (metrics.jsonl) | " << run.trained_tokens() << " | " << base.trained_tokens() << " |\n"
     << "| train wall seconds | " << (train ? seconds(train->wall_seconds) : "not run") << " | "
     << (base_train ? seconds(base_train->wall_seconds) : "not run") << " |\n"
     << "| train " << run.unit() << " | " << (train ? hours(hours_run) : "not run") << " | "
     << (base_train ? hours(hours_base) : "not run") << " |\n"
     << "| training cost / baseline's (" << run.unit() << ") | " << ratio(hours_run, hours_base) << " | "
     << ratio(hours_base, hours_base) << " |\n"
     << "| training cost / baseline's (tokens) | "
     << ratio(static_cast<double>(run.trained_tokens()), static_cast<double>(base.trained_tokens())) << " | "
     << ratio(static_cast<double>(base.trained_tokens()), static_cast<double>(base.trained_tokens())) << " |\n"
     << "| accuracy before | " << percent(run.accuracy_before) << " | " << percent(base.accuracy_before) << " |\n"
     << "| accuracy after | " << percent(run.accuracy_after) << " | " << percent(base.accuracy_after) << " |\n"
     << "| accuracy after, difference from baseline | "
     << (run.accuracy_after && base.accuracy_after ? points(*run.accuracy_after - *base.accuracy_after) : "-")
     << " | - |\n\n"
     << "The same model, tokenizer, data, validation set and judge (their `run.json` fingerprints agree). "
        "The paper's claim holds when the accuracy after is close to the baseline's at a clearly lower training "
        "cost. Tokens through the model measure training work independently of the machine's load; "
        "device-hours are what it cost here.\n\n";
}

void plot_sections(std::ostringstream& md, const RunData& run, const RunData* baseline, const std::vector<Plot>& plots,
                   const std::optional<std::string>& plot_error, const std::string& rerun, bool drawn) {
  md << "## Plots\n\n";
  if (!drawn && !plots.empty()) {
    md << "Not drawn: the run's configuration says `report.plots: false`. `" << rerun << "` draws them.\n\n";
    return;
  }
  if (plot_error) {
    md << "**The plots were not drawn**: " << *plot_error << ". The tables above are complete; once that is "
       << "fixed, `" << rerun << "` draws them.\n\n";
    return;
  }
  if (plots.empty()) md << "Nothing to plot.\n\n";
  for (const auto& plot : plots) {
    std::string title = plot.title;
    const report::JudgeSet* first = nullptr;
    std::int64_t scored = 0, judged = 0;
    for (const auto& set : run.judge_sets) {
      if (!first) first = &set;
      scored += static_cast<std::int64_t>(set.scores.size());
      judged += set.correct + set.incorrect;
    }
    if (plot.kind == "judge" && scored == 0) title = "Judge verdicts";
    md << "### " << title << "\n\n![" << title << "](" << plot.file << ")\n\n";
    if (plot.kind == "training") {
      std::int64_t steps = 0;
      std::optional<double> last;
      for (const auto& part : run.training) {
        steps += static_cast<std::int64_t>(part.step.size());
        for (const auto& l : part.loss)
          if (l) last = l;
      }
      md << "The training loss (per learned answer token) and the learning rate at each optimizer step, from `"
         << (run.training.size() > 1 ? "metrics.jsonl` and `round-N/metrics.jsonl" : "metrics.jsonl") << "`: "
         << steps << " steps, " << run.trained_tokens() << " tokens";
      if (last) md << ", last loss " << format("%.4g", *last);
      md << "." << (run.training.size() > 1 ? " Later rounds continue the step count; a dotted line marks where "
                                               "each round begins." : "")
         << "\n\n";
    } else if (plot.kind == "accuracy") {
      md << "Validation accuracy before and after training"
         << (baseline && baseline->accuracy_after ? ", and the baseline's after training" : "") << ".";
      if (run.rounds.size() > 1)
        md << " Right: each round's share of its own questions answered correctly (round 1: every record; round "
              "r: those still wrong after round r-1, answered with the adapter trained so far). The validation "
              "set is evaluated only before the first round and after the last, so there is no per-round "
              "validation accuracy.";
      md << "\n\n";
    } else if (plot.kind == "stages") {
      md << "Wall seconds and " << run.unit() << " of each stage, from `summary.json`"
         << (baseline ? ", beside the baseline's" : "") << ".\n\n";
    } else if (plot.kind == "judge") {
      std::vector<std::string> by;
      for (const auto& set : run.judge_sets)
        for (const auto& b : set.judged_by)
          if (std::find(by.begin(), by.end(), b) == by.end()) by.push_back(b);
      if (scored == 0)
        md << "The judge wrote no scores: every one of the " << judged << " judgements in `judgements.jsonl`, "
           << "`eval-before/` and `eval-after/` has `score: null` (judged by " << join(by, ", ")
           << "), so there is no score histogram. The plot shows the verdicts instead: correct and incorrect "
              "answers of each set.\n\n";
      else
        md << "The judge's scores (0-10) from `judgements.jsonl`, `eval-before/` and `eval-after/`: " << scored
           << " of " << judged << " judgements carry a score (judged by " << join(by, ", ")
           << "); the others were decided without one and are not counted.\n\n";
    }
  }
}

std::string markdown(const RunData& run, const RunData* baseline, const std::vector<Plot>& plots,
                     const std::optional<std::string>& plot_error, const ReportOptions& options) {
  std::string rerun = "slearn_dist report " + options.run_dir.string();
  if (baseline) rerun += " --baseline " + options.baseline_dir.string();
  if (!options.out_dir.empty()) rerun += " --out " + options.out_dir.string();
  std::ostringstream md;
  md << "# Run report: `" << options.run_dir.string() << "`\n\n"
     << "The self-learning run (`train_on: " << run.train_on << "`, " << run.rounds_configured
     << (run.rounds_configured == 1 ? " round" : " rounds") << ", " << devices(run)
     << ") in the form of the paper's Tables 1 and 2. Every number is read from the run directory "
        "(`summary.json`, `metrics.jsonl`, `judgements.jsonl`); `series.json` holds the numbers the plots draw. "
        "Written by `" << rerun << "`.\n\n";
  table1(md, run);
  table2(md, run);
  if (baseline) side_by_side(md, run, *baseline, options.run_dir.string(), options.baseline_dir.string());
  plot_sections(md, run, baseline, plots, plot_error, rerun, options.plots);
  return md.str();
}

bool is_png(const fs::path& path) {
  static const std::string signature = "\x89PNG\r\n\x1a\n";
  std::ifstream in(path, std::ios::binary);
  std::string head(signature.size(), '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  std::error_code ec;
  return in && head == signature && fs::file_size(path, ec) > 1000;
}

void write_manifest(const fs::path& dir, const std::vector<std::string>& files) {
  write_file_atomically(dir / kManifest, json{{"written_by", kWrittenBy}, {"files", files}}.dump(2) + "\n");
}

}  // namespace

ReportResult write_report(const ReportOptions& options) {
  const RunData run = report::read_run(options.run_dir, "run directory");
  std::optional<RunData> baseline;
  if (!options.baseline_dir.empty()) {
    baseline = report::read_run(options.baseline_dir, "baseline");
    if (baseline->train_on != "all")
      throw InputError((options.baseline_dir / "summary.json").string() + ": train_on is " + baseline->train_on +
                       ", not all: a baseline is the full-data run (slearn_dist run --set train_on=all)");
    const auto differ = report::differing_inputs(run, *baseline);
    if (!differ.empty())
      throw InputError(options.baseline_dir.string() + " was run with another " + join(differ, ", ") + " than " +
                       options.run_dir.string() + " (run.json fingerprints differ): not a baseline of this run");
  }
  const fs::path out_dir = options.out_dir.empty() ? options.run_dir : options.out_dir;
  ReportResult result;
  result.dir = out_dir / "report";
  result.markdown = result.dir / "report.md";
  check_replaceable(result.dir);
  fs::create_directories(out_dir);
  remove_leftovers(out_dir);

  const std::vector<Plot> plots = plots_for(run);
  const RunData* base = baseline ? &*baseline : nullptr;
  replace_directory_atomically(result.dir, [&](const fs::path& tmp) {
    std::vector<std::string> files = {"report.md", "series.json"};
    for (const auto& p : plots) files.push_back(p.file);
    write_manifest(tmp, files);  // first: a report killed from here on leaves a temporary known to be ours
    write_file_atomically(tmp / "series.json",
                          series_for(run, base, plots, options.run_dir.string()).dump(1) + "\n");
    if (!plots.empty() && options.plots) result.plot_error = report::run_plot_script(options.python, kPlotScript, tmp / "series.json", tmp);
    for (const auto& p : plots)
      if (options.plots && !result.plot_error && !is_png(tmp / p.file))
        result.plot_error = "the plot script did not write a valid " + p.file;
    files = {"report.md", "series.json"};
    if (result.plot_error) {
      // What a failed script left in the temporary directory (half a set of plots, a temporary of its own):
      // not shown, so not kept; report.md says why there are no plots.
      std::vector<fs::path> partial;
      for (const auto& entry : fs::directory_iterator(tmp))
        if (entry.path().filename() != kManifest && entry.path().filename() != "series.json") partial.push_back(entry.path());
      for (const auto& path : partial) fs::remove_all(path);
    }
    for (const auto& p : plots) {
      if (result.plot_error || !options.plots) continue;
      files.push_back(p.file);
      result.plots.push_back(result.dir / p.file);
    }
    write_file_atomically(tmp / "report.md", markdown(run, base, plots, result.plot_error, options));
    write_manifest(tmp, files);
  });
  return result;
}

}  // namespace slearn
