// The training configuration: one table binds each YAML key to its TrainConfig member, with its type, the
// values it accepts and its meaning. Parsing, checking, the defaults shown in the docs and the docs
// themselves all come from that table (yaml_schema does the generic part). The parallel, lora, optimizer,
// train and checkpoint sections are those of train_sections, shared with the run configuration.
#include "slearn/train_config.hpp"

#include <cmath>
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
using yaml_schema::one_of;

yaml_schema::Rule threads_rule() {
  yaml_schema::Rule rule = yaml_schema::int_in_range(1, std::numeric_limits<int>::max());
  rule.description = ">= 1, or null";
  return rule;
}

const Fields<DataSettings>& data_fields() {
  using S = DataSettings;
  static const Fields<S> table = {
      field("path", &S::path, std::nullopt, "JSONL file of question/answer records, one JSON object a line", true),
      field("question_field", &S::question_field, std::nullopt, "record field holding the question (the user turn)"),
      field("answer_field", &S::answer_field, std::nullopt,
            "record field holding the answer (the assistant turn, learned from)"),
      field("id_field", &S::id_field, std::nullopt,
            "record field holding the record's id, a string or an integer; records without it are named by "
            "their line number"),
      field("system_prompt", &S::system_prompt, std::nullopt,
            "system prompt put before every question; empty: no system turn"),
      field("chat_format", &S::chat_format, one_of({"auto", "chatml", "llama2", "llama3"}),
            "prompt format; auto: by model (qwen2: chatml; llama: llama3 when the tokenizer has "
            "`<|start_header_id|>`, else llama2)"),
      field("max_length", &S::max_length, yaml_schema::int_in_range(2, 1 << 24),
            "longest example in tokens; a longer one is cut on the right, and left out when no answer token "
            "remains"),
      field("train_on_prompt", &S::train_on_prompt, std::nullopt,
            "learn from the prompt tokens too (otherwise only from the answer and its end token)"),
  };
  return table;
}

const Fields<TrainConfig>& fields() {
  using D = TrainConfig;
  static const Fields<D> table = [] {
    Fields<D> t = {
        field("model", &D::model, std::nullopt,
              "Hugging Face model directory (config.json, safetensors weights, tokenizer.json)", true),
        field("run_dir", &D::run_dir, std::nullopt,
              "output directory of the run: adapter/, checkpoints/, metrics.jsonl", true),
        field("backend", &D::backend, one_of({"auto", "cpu", "cuda"}),
              "where to compute, for every stage: cpu, cuda (one GPU per rank), or auto (cuda when a GPU is visible)"),
        field("cpu_weights", &D::cpu_weights, one_of({"auto", "f32", "bf16"}),
              "how the cpu backend holds weight matrices: auto (bf16 when the checkpoint stores bf16: exact, half "
              "the bytes a decode step reads; else fp32), f32, or bf16 (rounds an fp32 checkpoint)"),
        field("threads", &D::threads, threads_rule(),
              "CPU threads per rank; null: the cores available, shared among the ranks on the node"),
        field("log_every_steps", &D::log_every_steps, yaml_schema::int_at_least(1),
              "write a line to metrics.jsonl every this many optimizer steps"),
    };
    yaml_schema::add_section(t, "parallel", &D::parallel, train_sections::parallel_fields());
    yaml_schema::add_section(t, "data", &D::data, data_fields());
    train_sections::add_training_sections(t);
    return t;
  }();
  return table;
}

const yaml_schema::Schema& schema() {
  static const yaml_schema::Schema keys = yaml_schema::schema_of(fields());
  return keys;
}

}  // namespace

double LoraSettings::scaling() const {
  const double rank = static_cast<double>(r);
  return use_rslora ? alpha / std::sqrt(rank) : alpha / rank;
}

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  const yaml_schema::Document document(yaml_text, source_name, schema(), overrides);
  TrainConfig config;
  yaml_schema::apply(document, fields(), config);
  for (const auto& [path, value] : {std::pair{"model", &config.model}, std::pair{"run_dir", &config.run_dir},
                                    std::pair{"data.path", &config.data.path}}) {
    if (value->empty()) document.fail(path, "must not be empty");
  }
  config.source_text = document.effective_text();
  return config;
}

TrainConfig load_train_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  return parse_train_config(yaml_schema::read_config_file(path), path.string(), overrides);
}

std::string train_config_reference() { return yaml_schema::reference_table(schema()); }

}  // namespace slearn
