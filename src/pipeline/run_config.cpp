// The run configuration: one table binds each YAML key to its RunConfig member (yaml_schema::Field). The
// training sections and parallel come from the tables the training configuration uses
// (train/train_sections.hpp) and the data set keys from one table placed twice (data, eval.data), so a key
// reads, checks and documents the same wherever it appears.
#include "slearn/run_config.hpp"

#include <charconv>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "slearn/error.hpp"
#include "train/train_sections.hpp"
#include "io/yaml_schema.hpp"

namespace slearn {
namespace {

using yaml_schema::field;
using yaml_schema::Fields;
using yaml_schema::Rule;
using yaml_schema::Value;

Rule threads_rule() {
  Rule rule = yaml_schema::int_in_range(1, std::numeric_limits<int>::max());
  rule.description = ">= 1, or null";
  return rule;
}

// (0, 1]: a nucleus of 1 keeps every token.
Rule probability_above_zero() {
  return {"> 0 and <= 1", [](const Value& v) -> std::optional<std::string> {
            if (const auto* d = std::get_if<double>(&v); d != nullptr && !(*d > 0.0 && *d <= 1.0))
              return "must be in (0, 1]";
            return std::nullopt;
          }};
}

// The keys of a data set; `path_meaning` and `path_required` differ between the SFT set and the eval set.
Fields<DatasetSettings> dataset_fields(const std::string& path_meaning, bool path_required) {
  using S = DatasetSettings;
  using yaml_schema::one_of;
  return {
      field("path", &S::path, std::nullopt, path_meaning, path_required),
      field("format", &S::format, one_of({"auto", "qa", "alpaca", "sharegpt"}),
            "record format; auto: from the fields of the first record (question/answer: qa; instruction/output: "
            "alpaca; conversations: sharegpt)"),
      field("question_field", &S::question_field, std::nullopt, "qa: record field holding the question"),
      field("answer_field", &S::answer_field, std::nullopt, "qa: record field holding the reference answer"),
      field("id_field", &S::id_field, std::nullopt,
            "record field holding the record's id, a string or an integer; records without it are named by "
            "their line (JSONL) or position (JSON array)"),
      field("instruction_field", &S::instruction_field, std::nullopt,
            "alpaca: field holding the instruction (the question, followed by the input when not empty)"),
      field("input_field", &S::input_field, std::nullopt, "alpaca: field holding the optional input"),
      field("output_field", &S::output_field, std::nullopt, "alpaca: field holding the reference answer"),
      field("conversations_field", &S::conversations_field, std::nullopt,
            "sharegpt: field holding the turns; the first human turn is the question, the next gpt turn the "
            "answer"),
      field("on_bad_record", &S::on_bad_record, one_of({"error", "skip"}),
            "a record that cannot be read (invalid JSON, missing or empty field, repeated id): stop with its "
            "line, or skip it and count it"),
      field("max_records", &S::max_records, yaml_schema::int_minus_one_or_at_least(1),
            "read only the first this many good records; -1: all"),
  };
}

Fields<AnswerSettings> answer_fields() {
  using S = AnswerSettings;
  using yaml_schema::int_at_least;
  using yaml_schema::one_of;
  return {
      field("max_new_tokens", &S::max_new_tokens, yaml_schema::int_in_range(1, 1 << 24), "longest answer in tokens"),
      field("temperature", &S::temperature, yaml_schema::float_at_least(0.0),
            "sampling temperature; 0: greedy (the most likely token)"),
      field("top_p", &S::top_p, probability_above_zero(), "nucleus sampling threshold; 1: off"),
      field("top_k", &S::top_k, int_at_least(0), "sample from the k most likely tokens; 0: off"),
      field("seed", &S::seed, int_at_least(0), "seed of the sampling (each question has its own stream)"),
      field("batch_size", &S::batch_size, yaml_schema::auto_or_int_in_range(1, std::numeric_limits<std::int32_t>::max()),
            "questions answered together on one rank; auto: as many as fit in kv_memory_fraction of the free memory"),
      field("kv_memory_fraction", &S::kv_memory_fraction, probability_above_zero(),
            "with batch_size auto: the share of the memory left after the weights that the KV cache and the "
            "activations may take"),
      field("system_prompt", &S::system_prompt, std::nullopt,
            "system turn before every question, when answering and when training; empty: none"),
      field("chat_format", &S::chat_format, one_of({"auto", "chatml", "llama2", "llama3"}),
            "prompt format, when answering and when training; auto: by model (qwen2: chatml; llama: llama3 when "
            "the tokenizer has `<|start_header_id|>`, else llama2)"),
      field("long_prompt", &S::long_prompt, one_of({"error", "truncate-left"}),
            "a question too long for the model's context: stop, or keep its end"),
  };
}

Fields<JudgeSettings> judge_fields() {
  using S = JudgeSettings;
  using yaml_schema::one_of;
  return {
      field("kind", &S::kind, one_of({"self", "model", "rule", "cascade"}),
            "who grades the answers: self (the model being trained, the SLearnLLM method), model (judge.model), "
            "rule (judge.rule alone), cascade (rules where they decide, else the model)"),
      field("rule", &S::rule, one_of({"auto", "exact", "normalized", "choice", "yesno", "numeric"}),
            "the rule for kind rule and cascade; auto: by the reference (a choice letter, yes/no, a number, "
            "else normalized text)"),
      field("numeric_tolerance", &S::numeric_tolerance, yaml_schema::float_at_least(0.0),
            "relative tolerance of the numeric rule"),
      field("language", &S::language, one_of({"auto", "en", "zh"}),
            "language of the judge prompt; auto: Chinese when the question is mostly Han characters"),
      field("template_en", &S::template_en, std::nullopt,
            "English judge prompt with {question}, {reference} and {answer}; empty: the built-in one"),
      field("template_zh", &S::template_zh, std::nullopt,
            "Chinese judge prompt with {question}, {reference} and {answer}; empty: the built-in one"),
      field("model", &S::model, std::nullopt,
            "judge model directory; required for kind model, used by cascade when set (else the model itself)"),
      field("max_new_tokens", &S::max_new_tokens, yaml_schema::int_in_range(1, 1 << 24), "longest judge reply in tokens"),
  };
}

Fields<EvalSettings> eval_fields() {
  using S = EvalSettings;
  Fields<S> table = {
      field("before", &S::before, std::nullopt, "evaluate the base model before training"),
      field("after", &S::after, std::nullopt, "evaluate the model with the trained adapter after the last round"),
  };
  yaml_schema::add_section(table, "data", &S::data,
                           dataset_fields("held-out data set to evaluate on (answered and judged, not trained "
                                          "on); empty: no evaluation",
                                          false));
  return table;
}

Fields<ReportSettings> report_fields() {
  using S = ReportSettings;
  return {
      field("plots", &S::plots, std::nullopt,
            "draw the report's plots (PNG, with matplotlib) at the end of the run; false: report.md has the "
            "tables only, and `slearn_dist report RUN_DIR` draws them later"),
  };
}

const Fields<RunConfig>& fields() {
  using D = RunConfig;
  using yaml_schema::int_at_least;
  using yaml_schema::one_of;
  static const Fields<D> table = [] {
    Fields<D> t = {
        field("model", &D::model, std::nullopt,
              "Hugging Face model directory (config.json, safetensors weights, tokenizer.json)", true),
        field("run_dir", &D::run_dir, std::nullopt,
              "output directory of the run: answers, judgements, one directory a round (round-N) with its "
              "adapter and checkpoints, and the evaluation",
              true),
        field("backend", &D::backend, one_of({"auto", "cpu", "cuda"}),
              "where to compute, for every stage: cpu, cuda (one GPU per rank), or auto (cuda when a GPU is visible)"),
        field("cpu_weights", &D::cpu_weights, one_of({"auto", "f32", "bf16"}),
              "how the cpu backend holds weight matrices: auto (bf16 when the checkpoint stores bf16: exact, half "
              "the bytes a decode step reads; else fp32), f32, or bf16 (rounds an fp32 checkpoint)"),
        field("threads", &D::threads, threads_rule(),
              "CPU threads per rank; null: the cores available, shared among the ranks on the node"),
        field("log_every_seconds", &D::log_every_seconds, int_at_least(1),
              "a progress line every this many seconds when the output is not a terminal"),
    };
    yaml_schema::add_section(t, "parallel", &D::parallel, train_sections::parallel_fields());
    yaml_schema::add_section(t, "data", &D::data,
                             dataset_fields("the domain SFT data set (JSONL or a JSON array): the questions "
                                            "answered and the reference answers",
                                            true));
    yaml_schema::add_section(t, "answer", &D::answer, answer_fields());
    yaml_schema::add_section(t, "judge", &D::judge, judge_fields());
    t.push_back(field("train_on", &D::train_on, one_of({"incorrect", "all"}),
                      "what to train on: the records judged incorrect (SLearnLLM), or all of them (the full-data "
                      "baseline)"));
    t.push_back(field("rounds", &D::rounds, int_at_least(1),
                      "answer, judge and train this many times, each round on what is still incorrect"));
    train_sections::add_training_sections(t);
    t.push_back(field("max_length", &D::max_length, yaml_schema::int_in_range(2, 1 << 24),
                      "longest training example in tokens; a longer one is cut on the right, and left out when no "
                      "answer token remains"));
    t.push_back(field("train_on_prompt", &D::train_on_prompt, std::nullopt,
                      "learn from the prompt tokens too (otherwise only from the answer and its end token)"));
    yaml_schema::add_section(t, "eval", &D::eval, eval_fields());
    yaml_schema::add_section(t, "report", &D::report, report_fields());
    return t;
  }();
  return table;
}

const yaml_schema::Schema& schema() {
  static const yaml_schema::Schema keys = yaml_schema::schema_of(fields());
  return keys;
}

}  // namespace

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides) {
  const yaml_schema::Document document(yaml_text, source_name, schema(), overrides);
  RunConfig config;
  yaml_schema::apply(document, fields(), config);
  for (const auto& [path, value] : {std::pair{"model", &config.model}, std::pair{"run_dir", &config.run_dir},
                                    std::pair{"data.path", &config.data.path}}) {
    if (value->empty()) document.fail(path, "must not be empty");
  }
  if (config.judge.kind == "model" && config.judge.model.empty()) {
    if (document.has("judge.model")) document.fail("judge.model", "must not be empty when judge.kind is \"model\"");
    throw InputError(document.source_name() + ": missing key \"judge.model\": judge.kind " +
                     document.where("judge.kind") + " is \"model\", which needs the judge model directory");
  }
  config.source_text = document.effective_text();
  return config;
}

RunConfig load_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  return parse_run_config(yaml_schema::read_config_file(path), path.string(), overrides);
}

std::string run_config_reference() { return yaml_schema::reference_table(schema()); }

TrainConfig to_train_config(const RunConfig& config, const std::string& round_dir) {
  TrainConfig out;
  out.model = config.model;
  out.run_dir = round_dir;
  out.backend = config.backend;
  out.cpu_weights = config.cpu_weights;
  out.threads = config.threads;
  out.parallel = config.parallel;
  out.data.path.clear();  // the pipeline hands the selected examples to the trainer directly
  out.data.system_prompt = config.answer.system_prompt;
  out.data.chat_format = config.answer.chat_format;
  out.data.max_length = config.max_length;
  out.data.train_on_prompt = config.train_on_prompt;
  out.lora = config.lora;
  out.optimizer = config.optimizer;
  out.train = config.train;
  out.checkpoint = config.checkpoint;
  out.source_text = config.source_text;
  return out;
}

}  // namespace slearn
