// The training configuration: one table binds each YAML key to its TrainConfig member, with its type, the
// values it accepts and its meaning. Parsing, checking, the defaults shown in the docs and the docs
// themselves all come from that table (yaml_schema does the generic part).
#include "slearn/train_config.hpp"

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

#include "slearn/error.hpp"
#include "train/yaml_schema.hpp"

namespace slearn {
namespace {

using yaml_schema::Kind;
using yaml_schema::Rule;
using yaml_schema::Value;

struct Field {
  yaml_schema::Key key;
  std::function<void(TrainConfig&, const Value&)> set;
};

template <class T>
constexpr Kind kind_of() {
  if constexpr (std::is_same_v<T, std::string>) return Kind::String;
  else if constexpr (std::is_same_v<T, bool>) return Kind::Bool;
  else if constexpr (std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::uint64_t>) return Kind::Int;
  else if constexpr (std::is_same_v<T, double>) return Kind::Float;
  else if constexpr (std::is_same_v<T, std::vector<std::string>>) return Kind::StringList;
  else {
    static_assert(std::is_same_v<T, std::optional<int>>, "unsupported member type");
    return Kind::OptionalInt;
  }
}

template <class T>
Value to_value(const T& member) {
  if constexpr (std::is_same_v<T, std::uint64_t>) return Value(static_cast<std::int64_t>(member));
  else if constexpr (std::is_same_v<T, std::optional<int>>)
    return member ? Value(static_cast<std::int64_t>(*member)) : Value(std::monostate{});
  else return Value(member);
}

// The rules of each key keep the values in range of the member's type (seed >= 0, threads <= INT_MAX).
template <class T>
T from_value(const Value& value) {
  if constexpr (std::is_same_v<T, std::uint64_t>) return static_cast<std::uint64_t>(std::get<std::int64_t>(value));
  else if constexpr (std::is_same_v<T, std::optional<int>>) {
    if (std::holds_alternative<std::monostate>(value)) return std::nullopt;
    return static_cast<int>(std::get<std::int64_t>(value));
  } else return std::get<T>(value);
}

// A key bound to the member `access` returns.
template <class T, class Access>
Field bind(std::string path, Access access, std::optional<Rule> rule, std::string meaning, bool required = false) {
  TrainConfig defaults;
  Field field;
  field.key = {std::move(path), kind_of<T>(), required, to_value<T>(access(defaults)), std::move(rule),
               std::move(meaning)};
  field.set = [access](TrainConfig& config, const Value& value) { access(config) = from_value<T>(value); };
  return field;
}

template <class T>
Field top(std::string path, T TrainConfig::*member, std::optional<Rule> rule, std::string meaning,
          bool required = false) {
  return bind<T>(std::move(path), [member](TrainConfig& c) -> T& { return c.*member; }, std::move(rule),
                 std::move(meaning), required);
}

template <class S, class T>
Field in(std::string path, S TrainConfig::*section, T S::*member, std::optional<Rule> rule, std::string meaning,
         bool required = false) {
  return bind<T>(std::move(path), [section, member](TrainConfig& c) -> T& { return c.*section.*member; },
                 std::move(rule), std::move(meaning), required);
}

Rule threads_rule() {
  Rule rule = yaml_schema::int_in_range(1, std::numeric_limits<int>::max());
  rule.description = ">= 1, or null";
  return rule;
}

const std::vector<Field>& fields() {
  using yaml_schema::float_at_least;
  using yaml_schema::float_greater_than;
  using yaml_schema::float_in_half_open;
  using yaml_schema::int_at_least;
  using yaml_schema::int_minus_one_or_at_least;
  using yaml_schema::one_of;
  using yaml_schema::subset_of;
  using D = TrainConfig;
  static const std::vector<Field> table = {
      top("model", &D::model, std::nullopt,
          "Hugging Face model directory (config.json, safetensors weights, tokenizer.json)", true),
      top("run_dir", &D::run_dir, std::nullopt,
          "output directory of the run: adapter/, checkpoints/, metrics.jsonl", true),
      top("backend", &D::backend, one_of({"auto", "cpu", "cuda"}),
          "where to compute; auto: cuda when built and a GPU is present, else cpu"),
      top("threads", &D::threads, threads_rule(),
          "CPU threads per rank; null: the cores available, shared among the ranks on the node"),
      top("log_every_steps", &D::log_every_steps, int_at_least(1),
          "write a line to metrics.jsonl every this many optimizer steps"),

      in("data.path", &D::data, &DataSettings::path, std::nullopt,
         "JSONL file of question/answer records, one JSON object a line", true),
      in("data.question_field", &D::data, &DataSettings::question_field, std::nullopt,
         "record field holding the question (the user turn)"),
      in("data.answer_field", &D::data, &DataSettings::answer_field, std::nullopt,
         "record field holding the answer (the assistant turn, learned from)"),
      in("data.id_field", &D::data, &DataSettings::id_field, std::nullopt,
         "record field holding the record's id, a string or an integer; records without it are named by "
         "their line number"),
      in("data.system_prompt", &D::data, &DataSettings::system_prompt, std::nullopt,
         "system prompt put before every question; empty: no system turn"),
      in("data.chat_format", &D::data, &DataSettings::chat_format, one_of({"auto", "chatml", "llama2", "llama3"}),
         "prompt format; auto: by model (qwen2: chatml; llama: llama3 when the tokenizer has "
         "`<|start_header_id|>`, else llama2)"),
      in("data.max_length", &D::data, &DataSettings::max_length, int_at_least(2),
         "longest example in tokens; a longer one is cut on the right, and left out when no answer token "
         "remains"),
      in("data.train_on_prompt", &D::data, &DataSettings::train_on_prompt, std::nullopt,
         "learn from the prompt tokens too (otherwise only from the answer and its end token)"),

      in("lora.r", &D::lora, &LoraSettings::r, int_at_least(1), "rank of the LoRA matrices"),
      in("lora.alpha", &D::lora, &LoraSettings::alpha, float_greater_than(0.0),
         "LoRA alpha: the update B A x is scaled by alpha / r (alpha / sqrt(r) with use_rslora)"),
      in("lora.dropout", &D::lora, &LoraSettings::dropout, float_in_half_open(0.0, 1.0),
         "dropout on the input of the LoRA branch while training"),
      in("lora.use_rslora", &D::lora, &LoraSettings::use_rslora, std::nullopt,
         "rank-stabilized LoRA: scale by alpha / sqrt(r)"),
      in("lora.target_modules", &D::lora, &LoraSettings::target_modules,
         subset_of({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
         "the linear layers of every decoder layer that get an adapter"),

      in("optimizer.learning_rate", &D::optimizer, &OptimizerSettings::learning_rate, float_greater_than(0.0),
         "peak learning rate of AdamW"),
      in("optimizer.weight_decay", &D::optimizer, &OptimizerSettings::weight_decay, float_at_least(0.0),
         "AdamW's decoupled weight decay"),
      in("optimizer.adam_beta1", &D::optimizer, &OptimizerSettings::adam_beta1, float_in_half_open(0.0, 1.0),
         "AdamW's decay rate of the first moment"),
      in("optimizer.adam_beta2", &D::optimizer, &OptimizerSettings::adam_beta2, float_in_half_open(0.0, 1.0),
         "AdamW's decay rate of the second moment"),
      in("optimizer.adam_epsilon", &D::optimizer, &OptimizerSettings::adam_epsilon, float_greater_than(0.0),
         "AdamW's epsilon"),
      in("optimizer.max_grad_norm", &D::optimizer, &OptimizerSettings::max_grad_norm, float_at_least(0.0),
         "clip the global gradient norm to this; 0: no clipping"),
      in("optimizer.lr_schedule", &D::optimizer, &OptimizerSettings::lr_schedule,
         one_of({"cosine", "linear", "constant"}), "learning rate after the warmup: cosine or linear decay, or constant"),
      in("optimizer.warmup_ratio", &D::optimizer, &OptimizerSettings::warmup_ratio, float_in_half_open(0.0, 1.0),
         "linear warmup over this fraction of the total steps (when warmup_steps is -1)"),
      in("optimizer.warmup_steps", &D::optimizer, &OptimizerSettings::warmup_steps, int_minus_one_or_at_least(0),
         "linear warmup over this many steps; -1: use warmup_ratio"),

      in("train.epochs", &D::train, &TrainSettings::epochs, int_at_least(1), "passes over the data"),
      in("train.global_batch_size", &D::train, &TrainSettings::global_batch_size, int_at_least(1),
         "examples per optimizer step, over all ranks"),
      in("train.micro_batch_size", &D::train, &TrainSettings::micro_batch_size, int_at_least(1),
         "examples per forward/backward pass on one rank; gradients accumulate up to the global batch"),
      in("train.gradient_checkpointing", &D::train, &TrainSettings::gradient_checkpointing, std::nullopt,
         "recompute each layer's activations in the backward pass, to save memory"),
      in("train.seed", &D::train, &TrainSettings::seed, int_at_least(0),
         "seed of the data order, the LoRA initialization and dropout"),
      in("train.max_steps", &D::train, &TrainSettings::max_steps, int_minus_one_or_at_least(1),
         "stop after this many optimizer steps; -1: run all epochs"),

      in("checkpoint.every_steps", &D::checkpoint, &CheckpointSettings::every_steps, int_at_least(1),
         "save a checkpoint every this many optimizer steps"),
      in("checkpoint.keep_last", &D::checkpoint, &CheckpointSettings::keep_last, int_at_least(1),
         "checkpoints kept; older ones are deleted"),
  };
  return table;
}

const yaml_schema::Schema& schema() {
  static const yaml_schema::Schema keys = [] {
    yaml_schema::Schema out;
    for (const Field& field : fields()) out.push_back(field.key);
    return out;
  }();
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
  for (const Field& field : fields()) {
    if (document.has(field.key.path)) field.set(config, document.value(field.key.path));
  }
  for (const auto& [path, value] : {std::pair{"model", &config.model}, std::pair{"run_dir", &config.run_dir},
                                    std::pair{"data.path", &config.data.path}}) {
    if (value->empty()) document.fail(path, "must not be empty");
  }
  config.source_text = document.effective_text();
  return config;
}

TrainConfig load_train_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error))
    throw InputError(path.string() + ": cannot read the configuration file (" +
                     (std::filesystem::exists(path, error) ? "not a regular file" : "no such file") + ")");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open the configuration file");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": cannot read the configuration file");
  return parse_train_config(text.str(), path.string(), overrides);
}

std::string train_config_reference() { return yaml_schema::reference_table(schema()); }

}  // namespace slearn
