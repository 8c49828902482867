// Run configuration (slearn_dist run): defaults, every key of every section, nested eval.data, errors for
// unknown keys, wrong types and values out of range, overrides, the judge model check, to_train_config, the
// training sections' defaults matching the training configuration's, the reference in docs/configuration.md
// and the example configurations in configs/.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/run_config.hpp"
#include "slearn/train_config.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

const std::string kMinimal = "model: models/qwen\nrun_dir: runs/a\ndata:\n  path: data/sft.jsonl\n";

// Every key set to a value other than its default.
const std::string kFull = R"(model: /models/qwen1.5-7b-chat
run_dir: runs/full
backend: cpu
threads: 6
log_every_seconds: 5
parallel:
  tensor: 4
data:
  path: data/agri.json
  format: alpaca
  question_field: q
  answer_field: a
  id_field: uid
  instruction_field: instr
  input_field: ctx
  output_field: out
  conversations_field: turns
  on_bad_record: skip
  max_records: 1000
answer:
  max_new_tokens: 300
  temperature: 0.7
  top_p: 0.9
  top_k: 40
  seed: 11
  batch_size: 32
  system_prompt: "You are an agronomist."
  chat_format: chatml
  long_prompt: truncate-left
judge:
  kind: cascade
  rule: numeric
  numeric_tolerance: 0.01
  language: zh
  template_en: "Q {question} R {reference} A {answer}"
  template_zh: "问 {question} 参 {reference} 答 {answer}"
  model: /models/judge
  max_new_tokens: 200
train_on: all
rounds: 3
lora:
  r: 16
  alpha: 32
  dropout: 0.1
  use_rslora: true
  target_modules: [q_proj, v_proj]
optimizer:
  learning_rate: 1e-4
  weight_decay: 0.0
  adam_beta1: 0.8
  adam_beta2: 0.95
  adam_epsilon: 1e-6
  max_grad_norm: 0
  lr_schedule: linear
  warmup_ratio: 0.1
  warmup_steps: 20
train:
  epochs: 3
  global_batch_size: 32
  micro_batch_size: 2
  gradient_checkpointing: true
  seed: 7
  max_steps: 100
checkpoint:
  every_steps: 25
  keep_last: 2
max_length: 1024
train_on_prompt: true
eval:
  before: false
  after: false
  data:
    path: data/agri-test.jsonl
    format: sharegpt
    question_field: eq
    answer_field: ea
    id_field: eid
    instruction_field: ei
    input_field: ein
    output_field: eo
    conversations_field: conv
    on_bad_record: skip
    max_records: 50
)";

template <class F>
std::string error_of(F parse) {
  try {
    parse();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_run_config(yaml, "run.yaml", overrides); });
}

void expect_same_dataset(const DatasetSettings& a, const DatasetSettings& b) {
  EXPECT_EQ(a.path, b.path);
  EXPECT_EQ(a.format, b.format);
  EXPECT_EQ(a.question_field, b.question_field);
  EXPECT_EQ(a.answer_field, b.answer_field);
  EXPECT_EQ(a.id_field, b.id_field);
  EXPECT_EQ(a.instruction_field, b.instruction_field);
  EXPECT_EQ(a.input_field, b.input_field);
  EXPECT_EQ(a.output_field, b.output_field);
  EXPECT_EQ(a.conversations_field, b.conversations_field);
  EXPECT_EQ(a.on_bad_record, b.on_bad_record);
  EXPECT_EQ(a.max_records, b.max_records);
}

void expect_same(const RunConfig& a, const RunConfig& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.run_dir, b.run_dir);
  EXPECT_EQ(a.backend, b.backend);
  EXPECT_EQ(a.threads, b.threads);
  EXPECT_EQ(a.log_every_seconds, b.log_every_seconds);
  EXPECT_EQ(a.parallel.tensor, b.parallel.tensor);
  expect_same_dataset(a.data, b.data);
  EXPECT_EQ(a.answer.max_new_tokens, b.answer.max_new_tokens);
  EXPECT_EQ(a.answer.temperature, b.answer.temperature);
  EXPECT_EQ(a.answer.top_p, b.answer.top_p);
  EXPECT_EQ(a.answer.top_k, b.answer.top_k);
  EXPECT_EQ(a.answer.seed, b.answer.seed);
  EXPECT_EQ(a.answer.batch_size, b.answer.batch_size);
  EXPECT_EQ(a.answer.system_prompt, b.answer.system_prompt);
  EXPECT_EQ(a.answer.chat_format, b.answer.chat_format);
  EXPECT_EQ(a.answer.long_prompt, b.answer.long_prompt);
  EXPECT_EQ(a.judge.kind, b.judge.kind);
  EXPECT_EQ(a.judge.rule, b.judge.rule);
  EXPECT_EQ(a.judge.numeric_tolerance, b.judge.numeric_tolerance);
  EXPECT_EQ(a.judge.language, b.judge.language);
  EXPECT_EQ(a.judge.template_en, b.judge.template_en);
  EXPECT_EQ(a.judge.template_zh, b.judge.template_zh);
  EXPECT_EQ(a.judge.model, b.judge.model);
  EXPECT_EQ(a.judge.max_new_tokens, b.judge.max_new_tokens);
  EXPECT_EQ(a.train_on, b.train_on);
  EXPECT_EQ(a.rounds, b.rounds);
  EXPECT_EQ(a.lora.r, b.lora.r);
  EXPECT_EQ(a.lora.alpha, b.lora.alpha);
  EXPECT_EQ(a.lora.dropout, b.lora.dropout);
  EXPECT_EQ(a.lora.use_rslora, b.lora.use_rslora);
  EXPECT_EQ(a.lora.target_modules, b.lora.target_modules);
  EXPECT_EQ(a.optimizer.learning_rate, b.optimizer.learning_rate);
  EXPECT_EQ(a.optimizer.weight_decay, b.optimizer.weight_decay);
  EXPECT_EQ(a.optimizer.adam_beta1, b.optimizer.adam_beta1);
  EXPECT_EQ(a.optimizer.adam_beta2, b.optimizer.adam_beta2);
  EXPECT_EQ(a.optimizer.adam_epsilon, b.optimizer.adam_epsilon);
  EXPECT_EQ(a.optimizer.max_grad_norm, b.optimizer.max_grad_norm);
  EXPECT_EQ(a.optimizer.lr_schedule, b.optimizer.lr_schedule);
  EXPECT_EQ(a.optimizer.warmup_ratio, b.optimizer.warmup_ratio);
  EXPECT_EQ(a.optimizer.warmup_steps, b.optimizer.warmup_steps);
  EXPECT_EQ(a.train.epochs, b.train.epochs);
  EXPECT_EQ(a.train.global_batch_size, b.train.global_batch_size);
  EXPECT_EQ(a.train.micro_batch_size, b.train.micro_batch_size);
  EXPECT_EQ(a.train.gradient_checkpointing, b.train.gradient_checkpointing);
  EXPECT_EQ(a.train.seed, b.train.seed);
  EXPECT_EQ(a.train.max_steps, b.train.max_steps);
  EXPECT_EQ(a.checkpoint.every_steps, b.checkpoint.every_steps);
  EXPECT_EQ(a.checkpoint.keep_last, b.checkpoint.keep_last);
  EXPECT_EQ(a.max_length, b.max_length);
  EXPECT_EQ(a.train_on_prompt, b.train_on_prompt);
  EXPECT_EQ(a.eval.before, b.eval.before);
  EXPECT_EQ(a.eval.after, b.eval.after);
  expect_same_dataset(a.eval.data, b.eval.data);
}

TEST(RunConfig, MinimalFileTakesTheDefaults) {
  const RunConfig config = parse_run_config(kMinimal, "run.yaml");
  RunConfig expected;
  expected.model = "models/qwen";
  expected.run_dir = "runs/a";
  expected.data.path = "data/sft.jsonl";
  expect_same(config, expected);
  // The documented defaults.
  EXPECT_EQ(config.backend, "auto");
  EXPECT_FALSE(config.threads.has_value());
  EXPECT_EQ(config.log_every_seconds, 30);
  EXPECT_EQ(config.parallel.tensor, 1);
  EXPECT_EQ(config.data.format, "auto");
  EXPECT_EQ(config.data.on_bad_record, "error");
  EXPECT_EQ(config.data.max_records, -1);
  EXPECT_EQ(config.answer.max_new_tokens, 256);
  EXPECT_EQ(config.answer.temperature, 0.0);
  EXPECT_EQ(config.answer.batch_size, "16");
  EXPECT_EQ(config.answer.kv_memory_fraction, 0.9);
  EXPECT_EQ(config.answer.long_prompt, "error");
  EXPECT_EQ(config.judge.kind, "self");
  EXPECT_EQ(config.judge.rule, "auto");
  EXPECT_EQ(config.judge.language, "auto");
  EXPECT_EQ(config.judge.max_new_tokens, 384);
  EXPECT_EQ(config.train_on, "incorrect");
  EXPECT_EQ(config.rounds, 1);
  EXPECT_EQ(config.lora.r, 64);
  EXPECT_EQ(config.lora.alpha, 16.0);
  EXPECT_EQ(config.lora.target_modules.size(), 7u);
  EXPECT_EQ(config.optimizer.learning_rate, 3e-4);
  EXPECT_EQ(config.optimizer.weight_decay, 0.01);
  EXPECT_EQ(config.train.epochs, 5);
  EXPECT_EQ(config.train.global_batch_size, 64);
  EXPECT_EQ(config.max_length, 512);
  EXPECT_FALSE(config.train_on_prompt);
  EXPECT_TRUE(config.eval.before);
  EXPECT_TRUE(config.eval.after);
  EXPECT_EQ(config.eval.data.path, "");  // no evaluation
  EXPECT_EQ(config.eval.data.question_field, "question");
}

TEST(RunConfig, ReadsEveryKeyOfEverySection) {
  const RunConfig c = parse_run_config(kFull, "run.yaml");
  EXPECT_EQ(c.model, "/models/qwen1.5-7b-chat");
  EXPECT_EQ(c.run_dir, "runs/full");
  EXPECT_EQ(c.backend, "cpu");
  EXPECT_EQ(c.threads, 6);
  EXPECT_EQ(c.log_every_seconds, 5);
  EXPECT_EQ(c.parallel.tensor, 4);

  EXPECT_EQ(c.data.path, "data/agri.json");
  EXPECT_EQ(c.data.format, "alpaca");
  EXPECT_EQ(c.data.question_field, "q");
  EXPECT_EQ(c.data.answer_field, "a");
  EXPECT_EQ(c.data.id_field, "uid");
  EXPECT_EQ(c.data.instruction_field, "instr");
  EXPECT_EQ(c.data.input_field, "ctx");
  EXPECT_EQ(c.data.output_field, "out");
  EXPECT_EQ(c.data.conversations_field, "turns");
  EXPECT_EQ(c.data.on_bad_record, "skip");
  EXPECT_EQ(c.data.max_records, 1000);

  EXPECT_EQ(c.answer.max_new_tokens, 300);
  EXPECT_EQ(c.answer.temperature, 0.7);
  EXPECT_EQ(c.answer.top_p, 0.9);
  EXPECT_EQ(c.answer.top_k, 40);
  EXPECT_EQ(c.answer.seed, 11u);
  EXPECT_EQ(c.answer.batch_size, "32");
  EXPECT_EQ(c.answer.system_prompt, "You are an agronomist.");
  EXPECT_EQ(c.answer.chat_format, "chatml");
  EXPECT_EQ(c.answer.long_prompt, "truncate-left");

  EXPECT_EQ(c.judge.kind, "cascade");
  EXPECT_EQ(c.judge.rule, "numeric");
  EXPECT_EQ(c.judge.numeric_tolerance, 0.01);
  EXPECT_EQ(c.judge.language, "zh");
  EXPECT_EQ(c.judge.template_en, "Q {question} R {reference} A {answer}");
  EXPECT_EQ(c.judge.template_zh, "问 {question} 参 {reference} 答 {answer}");
  EXPECT_EQ(c.judge.model, "/models/judge");
  EXPECT_EQ(c.judge.max_new_tokens, 200);

  EXPECT_EQ(c.train_on, "all");
  EXPECT_EQ(c.rounds, 3);
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_EQ(c.lora.alpha, 32.0);
  EXPECT_EQ(c.lora.dropout, 0.1);
  EXPECT_TRUE(c.lora.use_rslora);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.optimizer.learning_rate, 1e-4);
  EXPECT_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_EQ(c.optimizer.adam_beta1, 0.8);
  EXPECT_EQ(c.optimizer.adam_beta2, 0.95);
  EXPECT_EQ(c.optimizer.adam_epsilon, 1e-6);
  EXPECT_EQ(c.optimizer.max_grad_norm, 0.0);
  EXPECT_EQ(c.optimizer.lr_schedule, "linear");
  EXPECT_EQ(c.optimizer.warmup_ratio, 0.1);
  EXPECT_EQ(c.optimizer.warmup_steps, 20);
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_EQ(c.train.global_batch_size, 32);
  EXPECT_EQ(c.train.micro_batch_size, "2");
  EXPECT_TRUE(c.train.gradient_checkpointing);
  EXPECT_EQ(c.train.seed, 7u);
  EXPECT_EQ(c.train.max_steps, 100);
  EXPECT_EQ(c.checkpoint.every_steps, 25);
  EXPECT_EQ(c.checkpoint.keep_last, 2);
  EXPECT_EQ(c.max_length, 1024);
  EXPECT_TRUE(c.train_on_prompt);

  EXPECT_FALSE(c.eval.before);
  EXPECT_FALSE(c.eval.after);
  EXPECT_EQ(c.eval.data.path, "data/agri-test.jsonl");
  EXPECT_EQ(c.eval.data.format, "sharegpt");
  EXPECT_EQ(c.eval.data.question_field, "eq");
  EXPECT_EQ(c.eval.data.answer_field, "ea");
  EXPECT_EQ(c.eval.data.id_field, "eid");
  EXPECT_EQ(c.eval.data.instruction_field, "ei");
  EXPECT_EQ(c.eval.data.input_field, "ein");
  EXPECT_EQ(c.eval.data.output_field, "eo");
  EXPECT_EQ(c.eval.data.conversations_field, "conv");
  EXPECT_EQ(c.eval.data.on_bad_record, "skip");
  EXPECT_EQ(c.eval.data.max_records, 50);
}

TEST(RunConfig, UnknownKeysNameTheKeyLineAndKnownKeys) {
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  data:\n    path: t.jsonl\n    question: q\n"),
            "run.yaml: unknown key \"eval.data.question\" (line 8); known keys in eval.data: path, format, "
            "question_field, answer_field, id_field, instruction_field, input_field, output_field, "
            "conversations_field, on_bad_record, max_records");
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  befor: true\n"),
            "run.yaml: unknown key \"eval.befor\" (line 6); known keys in eval: before, after, data");
  EXPECT_EQ(parse_error("model: m\nepochs: 3\n"),
            "run.yaml: unknown key \"epochs\" (line 2); known top-level keys: model, run_dir, backend, cpu_weights, threads, "
            "log_every_seconds, parallel, data, answer, judge, train_on, rounds, lora, optimizer, train, checkpoint, "
            "max_length, train_on_prompt, eval, report");
  EXPECT_EQ(parse_error(kMinimal + "judge:\n  kind: self\n  temperature: 0\n"),
            "run.yaml: unknown key \"judge.temperature\" (line 7); known keys in judge: kind, rule, "
            "numeric_tolerance, language, template_en, template_zh, model, max_new_tokens");
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  max_tokens: 9\n"),
            "run.yaml: unknown key \"answer.max_tokens\" (line 6); known keys in answer: max_new_tokens, "
            "temperature, top_p, top_k, seed, batch_size, kv_memory_fraction, system_prompt, chat_format, long_prompt");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensr: 2\n"),
            "run.yaml: unknown key \"parallel.tensr\" (line 6); known keys in parallel: tensor");
  EXPECT_EQ(parse_error(kMinimal, {"parallel.tensr=2"}),
            "run.yaml: unknown key \"parallel.tensr\" (--set parallel.tensr=2); known keys in parallel: tensor");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  rank: 4\n"),
            "run.yaml: unknown key \"lora.rank\" (line 6); known keys in lora: r, alpha, dropout, use_rslora, "
            "target_modules");
  // Keys of the training configuration that the run configuration places elsewhere.
  EXPECT_EQ(parse_error(kMinimal + "  max_length: 512\n"),
            "run.yaml: unknown key \"data.max_length\" (line 5); known keys in data: path, format, question_field, "
            "answer_field, id_field, instruction_field, input_field, output_field, conversations_field, "
            "on_bad_record, max_records");
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  data:\n    path: a\n    path: b\n"),
            "run.yaml: key \"eval.data.path\" is given twice (lines 7 and 8)");
}

TEST(RunConfig, WrongTypesNameTheKeyLineAndValue) {
  EXPECT_EQ(parse_error(kMinimal + "rounds: two\n"), "run.yaml: key \"rounds\" (line 5) must be an integer, got \"two\"");
  EXPECT_EQ(parse_error(kMinimal + "parallel: {tensor: two}\n"),
            "run.yaml: key \"parallel.tensor\" (line 5) must be an integer, got \"two\"");
  EXPECT_EQ(parse_error(kMinimal + "parallel: {tensor: \"2\"}\n"),
            "run.yaml: key \"parallel.tensor\" (line 5) must be an integer, got \"2\" (quoted, so a string)");
  EXPECT_EQ(parse_error(kMinimal + "train_on_prompt: maybe\n"),
            "run.yaml: key \"train_on_prompt\" (line 5) must be true or false, got \"maybe\"");
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  temperature: hot\n"),
            "run.yaml: key \"answer.temperature\" (line 6) must be a finite number, got \"hot\"");
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  batch_size: 1.5\n"),
            "run.yaml: key \"answer.batch_size\" (line 6) must be auto or a whole number between 1 and 2147483647, "
            "got \"1.5\"");
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  batch_size: many\n"),
            "run.yaml: key \"answer.batch_size\" (line 6) must be auto or a whole number between 1 and 2147483647, "
            "got \"many\"");
  EXPECT_EQ(parse_run_config(kMinimal + "answer:\n  batch_size: auto\n", "run.yaml").answer.batch_size, "auto");
  EXPECT_EQ(parse_error(kMinimal + "judge:\n  model: [a, b]\n"),
            "run.yaml: key \"judge.model\" (line 6) must be a string, got a list");
  EXPECT_EQ(parse_error(kMinimal + "judge:\n  numeric_tolerance: \"0.1\"\n"),
            "run.yaml: key \"judge.numeric_tolerance\" (line 6) must be a number, got \"0.1\" (quoted, so a string)");
  EXPECT_EQ(parse_error(kMinimal + "  max_records: all\n"),
            "run.yaml: key \"data.max_records\" (line 5) must be an integer, got \"all\"");
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  before: 1\n"),
            "run.yaml: key \"eval.before\" (line 6) must be true or false, got \"1\"");
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  data: data/test.jsonl\n"),
            "run.yaml: key \"eval.data\" (line 6) must be a section (a mapping of keys), got \"data/test.jsonl\"; "
            "known keys in eval.data: path, format, question_field, answer_field, id_field, instruction_field, "
            "input_field, output_field, conversations_field, on_bad_record, max_records");
  EXPECT_EQ(parse_error(kMinimal + "eval:\n  data:\n    max_records: {n: 3}\n"),
            "run.yaml: key \"eval.data.max_records\" (line 7) must be an integer, got a mapping");
  EXPECT_EQ(parse_error(kMinimal + "train:\n  epochs: five\n"),
            "run.yaml: key \"train.epochs\" (line 6) must be an integer, got \"five\"");
  EXPECT_EQ(parse_error(kMinimal + "threads: many\n"),
            "run.yaml: key \"threads\" (line 5) must be an integer or null, got \"many\"");
}

// YAML's "\0" escape puts a NUL into a string, which every path and C string would silently end at ("a\0b" is
// "a"): refused, naming the key; the message shows the NUL escaped rather than printing it.
TEST(RunConfig, NulInAStringIsRefused) {
  EXPECT_EQ(parse_error("model: models/qwen\nrun_dir: \"a\\0b\"\ndata:\n  path: data/sft.jsonl\n"),
            "run.yaml: key \"run_dir\" (line 2) must not contain a NUL character (\\0), got \"a\\0b\"");
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  system_prompt: \"be\\0 brief\"\n"),
            "run.yaml: key \"answer.system_prompt\" (line 6) must not contain a NUL character (\\0), got "
            "\"be\\0 brief\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  target_modules: [q_proj, \"v\\0proj\"]\n"),
            "run.yaml: key \"lora.target_modules\" (line 6) item 2: must not contain a NUL character (\\0), got "
            "\"v\\0proj\"");
  EXPECT_EQ(parse_error(kMinimal, {"data.path=\"d\\0.jsonl\""}),
            "run.yaml: key \"data.path\" (--set data.path=\"d\\0.jsonl\") must not contain a NUL character (\\0), got "
            "\"d\\0.jsonl\"");
  // Other control characters are shown escaped too.
  EXPECT_EQ(parse_error(kMinimal + "rounds: \"\\x01\"\n"),
            "run.yaml: key \"rounds\" (line 5) must be an integer, got \"\\x01\" (quoted, so a string)");
}

// answer.temperature and answer.top_p: NaN and infinity (YAML's .nan, .inf) are refused like any value out of range.
TEST(RunConfig, SamplingValuesMustBeFinite) {
  for (const char* value : {".nan", ".NaN", "nan", ".inf", "-.inf", "inf", "1e999"}) {
    const std::string message = parse_error(kMinimal + "answer:\n  temperature: " + value + "\n");
    EXPECT_EQ(message.rfind("run.yaml: key \"answer.temperature\" (line 6) must be a finite number, got ", 0), 0u)
        << value << ": " << message;
    const std::string top_p = parse_error(kMinimal, {std::string("answer.top_p=") + value});
    EXPECT_EQ(top_p.rfind("run.yaml: key \"answer.top_p\" (--set answer.top_p=", 0), 0u) << value << ": " << top_p;
    EXPECT_NE(top_p.find("must be a finite number"), std::string::npos) << value << ": " << top_p;
  }
}

struct RangeCase {
  std::string override_text;
  std::string message;  // after "run.yaml: key "
};

TEST(RunConfig, ValuesOutOfRange) {
  const std::vector<RangeCase> cases = {
      {"rounds=0", "\"rounds\" (--set rounds=0) must be >= 1, got 0"},
      {"train_on=wrong", "\"train_on\" (--set train_on=wrong) must be one of incorrect, all, got \"wrong\""},
      {"max_length=1", "\"max_length\" (--set max_length=1) must be between 2 and 16777216, got 1"},
      {"log_every_seconds=0", "\"log_every_seconds\" (--set log_every_seconds=0) must be >= 1, got 0"},
      {"backend=tpu", "\"backend\" (--set backend=tpu) must be one of auto, cpu, cuda, got \"tpu\""},
      {"threads=0", "\"threads\" (--set threads=0) must be between 1 and 2147483647, got 0"},
      {"parallel.tensor=0", "\"parallel.tensor\" (--set parallel.tensor=0) must be between 1 and 1024, got 0"},
      {"parallel.tensor=-1", "\"parallel.tensor\" (--set parallel.tensor=-1) must be between 1 and 1024, got -1"},
      {"parallel.tensor=1025", "\"parallel.tensor\" (--set parallel.tensor=1025) must be between 1 and 1024, got 1025"},
      {"data.format=csv", "\"data.format\" (--set data.format=csv) must be one of auto, qa, alpaca, sharegpt, got "
                          "\"csv\""},
      {"data.on_bad_record=warn", "\"data.on_bad_record\" (--set data.on_bad_record=warn) must be one of error, "
                                  "skip, got \"warn\""},
      {"data.max_records=0", "\"data.max_records\" (--set data.max_records=0) must be -1 or >= 1, got 0"},
      {"eval.data.max_records=-5", "\"eval.data.max_records\" (--set eval.data.max_records=-5) must be -1 or >= 1, "
                                   "got -5"},
      {"eval.data.format=xml", "\"eval.data.format\" (--set eval.data.format=xml) must be one of auto, qa, alpaca, "
                               "sharegpt, got \"xml\""},
      {"answer.max_new_tokens=0", "\"answer.max_new_tokens\" (--set answer.max_new_tokens=0) must be between 1 and 16777216, got 0"},
      {"answer.temperature=-0.5", "\"answer.temperature\" (--set answer.temperature=-0.5) must be >= 0, got -0.5"},
      {"answer.top_p=0", "\"answer.top_p\" (--set answer.top_p=0) must be in (0, 1], got 0"},
      {"answer.top_p=1.01", "\"answer.top_p\" (--set answer.top_p=1.01) must be in (0, 1], got 1.01"},
      {"answer.top_k=-1", "\"answer.top_k\" (--set answer.top_k=-1) must be >= 0, got -1"},
      {"answer.seed=-1", "\"answer.seed\" (--set answer.seed=-1) must be >= 0, got -1"},
      {"answer.batch_size=0", "\"answer.batch_size\" (--set answer.batch_size=0) must be auto or a whole number "
                              "between 1 and 2147483647, got \"0\""},
      {"answer.batch_size=2147483648", "\"answer.batch_size\" (--set answer.batch_size=2147483648) must be auto or a "
                                       "whole number between 1 and 2147483647, got \"2147483648\""},
      {"answer.kv_memory_fraction=0", "\"answer.kv_memory_fraction\" (--set answer.kv_memory_fraction=0) must be in "
                                      "(0, 1], got 0"},
      {"answer.chat_format=vicuna", "\"answer.chat_format\" (--set answer.chat_format=vicuna) must be one of auto, "
                                    "chatml, llama2, llama3, got \"vicuna\""},
      {"answer.long_prompt=truncate", "\"answer.long_prompt\" (--set answer.long_prompt=truncate) must be one of "
                                      "error, truncate-left, got \"truncate\""},
      {"judge.kind=peer", "\"judge.kind\" (--set judge.kind=peer) must be one of self, model, rule, cascade, got "
                          "\"peer\""},
      {"judge.rule=fuzzy", "\"judge.rule\" (--set judge.rule=fuzzy) must be one of auto, exact, normalized, choice, "
                           "yesno, numeric, got \"fuzzy\""},
      {"judge.numeric_tolerance=-1e-3", "\"judge.numeric_tolerance\" (--set judge.numeric_tolerance=-1e-3) must be "
                                        ">= 0, got -1e-3"},
      {"judge.language=fr", "\"judge.language\" (--set judge.language=fr) must be one of auto, en, zh, got \"fr\""},
      {"judge.max_new_tokens=0", "\"judge.max_new_tokens\" (--set judge.max_new_tokens=0) must be between 1 and 16777216, got 0"},
      {"lora.r=0", "\"lora.r\" (--set lora.r=0) must be >= 1, got 0"},
      {"optimizer.lr_schedule=step", "\"optimizer.lr_schedule\" (--set optimizer.lr_schedule=step) must be one of "
                                     "cosine, linear, constant, got \"step\""},
      {"train.micro_batch_size=0", "\"train.micro_batch_size\" (--set train.micro_batch_size=0) must be auto or a whole number between 1 and 1073741824, got \"0\""},
      {"checkpoint.keep_last=0", "\"checkpoint.keep_last\" (--set checkpoint.keep_last=0) must be >= 1, got 0"},
  };
  for (const RangeCase& c : cases) EXPECT_EQ(parse_error(kMinimal, {c.override_text}), "run.yaml: key " + c.message);
  EXPECT_EQ(parse_error(kMinimal + "answer:\n  top_p: 2\n"),
            "run.yaml: key \"answer.top_p\" (line 6) must be in (0, 1], got 2");
  // Boundaries that are allowed.
  EXPECT_NO_THROW(parse_run_config(kMinimal, "run.yaml",
                                   {"answer.top_p=1", "answer.top_k=0", "answer.temperature=0", "answer.seed=0",
                                    "answer.batch_size=2147483647", "judge.numeric_tolerance=0", "rounds=1",
                                    "max_length=2", "data.max_records=1", "eval.data.max_records=-1",
                                    "log_every_seconds=1", "parallel.tensor=1024"}));
}

TEST(RunConfig, MissingRequiredAndEmptyKeys) {
  EXPECT_EQ(parse_error("run_dir: r\ndata: {path: d}\n"),
            "run.yaml: missing required key \"model\" (Hugging Face model directory (config.json, safetensors "
            "weights, tokenizer.json))");
  EXPECT_EQ(parse_error("model: m\ndata: {path: d}\n").rfind("run.yaml: missing required key \"run_dir\"", 0), 0u);
  EXPECT_EQ(parse_error("model: m\nrun_dir: r\n").rfind("run.yaml: missing required key \"data.path\"", 0), 0u);
  EXPECT_EQ(parse_error("model: m\nrun_dir: r\neval:\n  data:\n    path: t\n")
                .rfind("run.yaml: missing required key \"data.path\"", 0),
            0u);
  EXPECT_EQ(parse_error("model: m\nrun_dir: r\ndata:\n  path: ''\n"),
            "run.yaml: key \"data.path\" (line 4) must not be empty");
  EXPECT_EQ(parse_error(kMinimal, {"run_dir="}), "run.yaml: key \"run_dir\" (--set run_dir=) must not be empty");
  // eval.data.path is optional, and empty means no evaluation.
  EXPECT_EQ(parse_run_config(kMinimal + "eval:\n  data:\n    path: ''\n", "run.yaml").eval.data.path, "");
  EXPECT_EQ(parse_run_config(kMinimal + "eval:\n  data:\n", "run.yaml").eval.data.path, "");
}

TEST(RunConfig, JudgeModelIsRequiredForKindModel) {
  EXPECT_EQ(parse_error(kMinimal + "judge:\n  kind: model\n"),
            "run.yaml: missing key \"judge.model\": judge.kind (line 6) is \"model\", which needs the judge model "
            "directory");
  EXPECT_EQ(parse_error(kMinimal, {"judge.kind=model"}),
            "run.yaml: missing key \"judge.model\": judge.kind (--set judge.kind=model) is \"model\", which needs the "
            "judge model directory");
  EXPECT_EQ(parse_error(kMinimal + "judge:\n  kind: model\n  model: ''\n"),
            "run.yaml: key \"judge.model\" (line 7) must not be empty when judge.kind is \"model\"");
  const RunConfig c = parse_run_config(kMinimal + "judge:\n  kind: model\n", "run.yaml", {"judge.model=/m/judge"});
  EXPECT_EQ(c.judge.kind, "model");
  EXPECT_EQ(c.judge.model, "/m/judge");
  // The other kinds do without one.
  for (const char* kind : {"self", "rule", "cascade"})
    EXPECT_EQ(parse_run_config(kMinimal, "run.yaml", {std::string("judge.kind=") + kind}).judge.model, "") << kind;
}

TEST(RunConfig, OverridesReachEverySection) {
  const RunConfig c = parse_run_config(
      kMinimal + "rounds: 0\n", "run.yaml",
      {"rounds=2", "eval.data.path=data/test.jsonl", "eval.data.format=qa", "eval.before=false",
       "judge.kind=rule", "judge.rule=choice", "answer.temperature=0.7", "answer.system_prompt=You are a vet: be brief.",
       "lora.r=8", "lora.target_modules=[q_proj,v_proj]", "train.epochs=1", "optimizer.learning_rate=1e-5",
       "checkpoint.every_steps=10", "max_length=256", "train_on_prompt=true", "train_on=all", "threads=3",
       "data.path=other.jsonl", "data.max_records=10", "parallel.tensor=2"});
  EXPECT_EQ(c.rounds, 2);  // the file's invalid 0 is replaced before the checks
  EXPECT_EQ(c.eval.data.path, "data/test.jsonl");
  EXPECT_EQ(c.eval.data.format, "qa");
  EXPECT_FALSE(c.eval.before);
  EXPECT_TRUE(c.eval.after);
  EXPECT_EQ(c.judge.kind, "rule");
  EXPECT_EQ(c.judge.rule, "choice");
  EXPECT_EQ(c.answer.temperature, 0.7);
  EXPECT_EQ(c.answer.system_prompt, "You are a vet: be brief.");
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.train.epochs, 1);
  EXPECT_EQ(c.optimizer.learning_rate, 1e-5);
  EXPECT_EQ(c.checkpoint.every_steps, 10);
  EXPECT_EQ(c.max_length, 256);
  EXPECT_TRUE(c.train_on_prompt);
  EXPECT_EQ(c.train_on, "all");
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.data.path, "other.jsonl");
  EXPECT_EQ(c.data.max_records, 10);
  EXPECT_EQ(c.parallel.tensor, 2);
  // The file's section, replaced by a later override (as --tensor-parallel does, after the other --set).
  EXPECT_EQ(parse_run_config(kMinimal + "parallel: {tensor: 4}\n", "run.yaml", {"parallel.tensor=8", "parallel.tensor=2"})
                .parallel.tensor,
            2);
  // An override can give a required key and fill a nested section that the file leaves empty.
  const RunConfig d = parse_run_config("model: m\nrun_dir: r\neval:\n", "run.yaml", {"data.path=x", "eval.data.path=y"});
  EXPECT_EQ(d.data.path, "x");
  EXPECT_EQ(d.eval.data.path, "y");
}

TEST(RunConfig, BadOverridesNameTheOverride) {
  EXPECT_EQ(parse_error(kMinimal, {"eval.data.paths=x"}),
            "run.yaml: unknown key \"eval.data.paths\" (--set eval.data.paths=x); known keys in eval.data: path, "
            "format, question_field, answer_field, id_field, instruction_field, input_field, output_field, "
            "conversations_field, on_bad_record, max_records");
  EXPECT_EQ(parse_error(kMinimal, {"eval.dat.path=x"}),
            "run.yaml: unknown key \"eval.dat\" (--set eval.dat.path=x); known keys in eval: before, after, data");
  EXPECT_EQ(parse_error(kMinimal, {"eval.data=x"}),
            "run.yaml: --set \"eval.data=x\": \"eval.data\" is a section; set its keys one at a time; known keys in "
            "eval.data: path, format, question_field, answer_field, id_field, instruction_field, input_field, "
            "output_field, conversations_field, on_bad_record, max_records");
  EXPECT_EQ(parse_error(kMinimal, {"judge.kind.x=1"}),
            "run.yaml: --set \"judge.kind.x=1\": \"judge.kind\" is a key, not a section");
  EXPECT_EQ(parse_error(kMinimal, {"rounds=many"}),
            "run.yaml: key \"rounds\" (--set rounds=many) must be an integer, got \"many\"");
}

TEST(RunConfig, SourceTextIsTheEffectiveYaml) {
  const RunConfig c = parse_run_config(kFull + "# a comment\n", "run.yaml", {"rounds=5", "eval.data.max_records=7"});
  EXPECT_NE(c.source_text.find("rounds: 5"), std::string::npos) << c.source_text;
  EXPECT_EQ(c.source_text.find("a comment"), std::string::npos) << c.source_text;
  const RunConfig again = parse_run_config(c.source_text, "saved");
  expect_same(again, c);
  EXPECT_EQ(again.source_text, c.source_text);
}

TEST(RunConfig, ToTrainConfig) {
  const RunConfig run = parse_run_config(kFull, "run.yaml");
  const TrainConfig t = to_train_config(run, "runs/full/round-2");
  EXPECT_EQ(t.model, run.model);
  EXPECT_EQ(t.run_dir, "runs/full/round-2");
  EXPECT_EQ(t.backend, "cpu");
  EXPECT_EQ(t.threads, 6);
  EXPECT_EQ(t.parallel.tensor, 4);  // every stage of a run, training too, splits the model alike
  EXPECT_EQ(t.data.path, "");  // the pipeline passes the selected examples directly
  EXPECT_EQ(t.data.system_prompt, "You are an agronomist.");
  EXPECT_EQ(t.data.chat_format, "chatml");
  EXPECT_EQ(t.data.max_length, 1024);
  EXPECT_TRUE(t.data.train_on_prompt);
  EXPECT_EQ(t.lora.r, 16);
  EXPECT_EQ(t.lora.alpha, 32.0);
  EXPECT_EQ(t.lora.dropout, 0.1);
  EXPECT_TRUE(t.lora.use_rslora);
  EXPECT_EQ(t.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(t.optimizer.learning_rate, 1e-4);
  EXPECT_EQ(t.optimizer.adam_beta2, 0.95);
  EXPECT_EQ(t.optimizer.lr_schedule, "linear");
  EXPECT_EQ(t.optimizer.warmup_steps, 20);
  EXPECT_EQ(t.train.epochs, 3);
  EXPECT_EQ(t.train.global_batch_size, 32);
  EXPECT_EQ(t.train.micro_batch_size, "2");
  EXPECT_TRUE(t.train.gradient_checkpointing);
  EXPECT_EQ(t.train.seed, 7u);
  EXPECT_EQ(t.train.max_steps, 100);
  EXPECT_EQ(t.checkpoint.every_steps, 25);
  EXPECT_EQ(t.checkpoint.keep_last, 2);
  EXPECT_EQ(t.source_text, run.source_text);
  // Defaults carry over as defaults.
  const TrainConfig d = to_train_config(parse_run_config(kMinimal, "run.yaml"), "r/round-1");
  EXPECT_FALSE(d.threads.has_value());
  EXPECT_EQ(d.parallel.tensor, 1);
  EXPECT_EQ(d.data.system_prompt, "");
  EXPECT_EQ(d.data.chat_format, "auto");
  EXPECT_EQ(d.data.max_length, 512);
  EXPECT_FALSE(d.data.train_on_prompt);
  EXPECT_EQ(d.lora.r, 64);
  EXPECT_EQ(d.train.epochs, 5);
}

using slearn::testing::read_file;

// The reference rows of the keys under `prefix` ("lora.").
std::vector<std::string> rows_under(const std::string& reference, const std::string& prefix) {
  std::vector<std::string> rows;
  std::istringstream lines(reference);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("| `" + prefix, 0) == 0) rows.push_back(line);
  return rows;
}

// parallel, lora, optimizer, train and checkpoint come from one table (train_sections) in both configurations, so their
// keys, types, rules, meanings and messages agree by construction. Their defaults are each configuration's
// own members (RunConfig::lora, TrainConfig::lora, ...): both references list the sections, row for row.
TEST(RunConfig, TrainingSectionsHaveTheTrainingDefaults) {
  const std::string run = run_config_reference();
  const std::string train = train_config_reference();
  for (const char* section : {"parallel.", "lora.", "optimizer.", "train.", "checkpoint."}) {
    const auto rows = rows_under(run, section);
    EXPECT_FALSE(rows.empty()) << section;
    EXPECT_EQ(rows, rows_under(train, section)) << section;
  }
}

// docs/configuration.md holds run_config_reference() between its markers. After changing the schema, run
// this test with SLEARN_UPDATE_DOCS=1 to rewrite that part of the file.
TEST(RunConfig, ReferenceInDocsIsCurrent) {
  const auto path = testing::source_dir() / "docs" / "configuration.md";
  const std::string begin = "<!-- BEGIN run_config_reference -->\n";
  const std::string end = "<!-- END run_config_reference -->";
  std::string doc = read_file(path);
  const auto b = doc.find(begin);
  const auto e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << path;
  ASSERT_NE(e, std::string::npos) << path;
  ASSERT_LT(b, e);
  const std::string reference = run_config_reference();
  const std::string current = doc.substr(b + begin.size(), e - b - begin.size());
  if (current != reference && std::getenv("SLEARN_UPDATE_DOCS") != nullptr) {
    doc.replace(b + begin.size(), e - b - begin.size(), reference);
    std::ofstream(path, std::ios::binary) << doc;
    return;
  }
  EXPECT_EQ(current, reference) << "docs/configuration.md is out of date: run this test with SLEARN_UPDATE_DOCS=1";
}

TEST(RunConfig, ReferenceListsEveryKey) {
  const std::string reference = run_config_reference();
  for (const char* key : {"`model`", "`data.path`", "`data.conversations_field`", "`answer.long_prompt`",
                          "`judge.template_zh`", "`train_on`", "`rounds`", "`lora.target_modules`",
                          "`checkpoint.keep_last`", "`max_length`", "`eval.before`", "`eval.data.path`",
                          "`eval.data.max_records`", "`parallel.tensor`"})
    EXPECT_NE(reference.find(key), std::string::npos) << key;
  EXPECT_NE(reference.find("| `model` | string | required |"), std::string::npos) << reference;
  EXPECT_NE(reference.find("| `data.path` | string | required |"), std::string::npos) << reference;
  EXPECT_NE(reference.find("| `eval.data.path` | string | `\"\"` |"), std::string::npos) << reference;
  EXPECT_NE(reference.find("| `train_on` | string | `\"incorrect\"` | incorrect, all |"), std::string::npos)
      << reference;
  EXPECT_NE(reference.find("| `answer.batch_size` | string | `\"16\"` | auto or 1 to 2147483647 |"), std::string::npos) << reference;
}

// The run example in docs/configuration.md (the yaml block after the run section's heading) is valid.
TEST(RunConfig, DocsExampleParses) {
  const std::string doc = read_file(testing::source_dir() / "docs" / "configuration.md");
  const auto section = doc.find("# Run configuration (slearn_dist run)");
  ASSERT_NE(section, std::string::npos);
  const auto b = doc.find("```yaml\n", section);
  ASSERT_NE(b, std::string::npos);
  const auto e = doc.find("```", b + 8);
  ASSERT_NE(e, std::string::npos);
  const RunConfig c = parse_run_config(doc.substr(b + 8, e - b - 8), "docs/configuration.md");
  EXPECT_FALSE(c.model.empty());
}

// The shipped configurations load as they are, with the paper's hyper-parameters.
TEST(RunConfig, ExampleConfigsLoad) {
  struct Example {
    const char* file;
    bool gradient_checkpointing;
    std::int64_t tensor;  // 32B: four ranks share one copy of the weights (docs/operations.md)
  };
  for (const Example& example : {Example{"qwen1.5-7b-chat.yaml", false, 1}, Example{"qwen1.5-14b-chat.yaml", true, 1},
                                 Example{"qwen1.5-32b-chat.yaml", true, 4}, Example{"qwen2.5-7b-instruct.yaml", false, 1}}) {
    SCOPED_TRACE(example.file);
    RunConfig c;
    ASSERT_NO_THROW(c = load_run_config(testing::source_dir() / "configs" / example.file));
    EXPECT_EQ(c.model.rfind("/path/to/", 0), 0u) << c.model;
    EXPECT_EQ(c.data.path.rfind("/path/to/", 0), 0u) << c.data.path;
    EXPECT_EQ(c.train.epochs, 5);
    EXPECT_EQ(c.train.global_batch_size, 64);
    EXPECT_EQ(c.optimizer.learning_rate, 3e-4);
    EXPECT_EQ(c.optimizer.weight_decay, 0.01);
    EXPECT_EQ(c.max_length, 512);
    EXPECT_EQ(c.lora.r, 64);
    EXPECT_EQ(c.lora.alpha, 16.0);
    EXPECT_EQ(c.lora.target_modules, LoraSettings{}.target_modules);
    EXPECT_EQ(c.judge.kind, "self");
    EXPECT_EQ(c.train_on, "incorrect");
    EXPECT_EQ(c.train.gradient_checkpointing, example.gradient_checkpointing);
    EXPECT_EQ(c.parallel.tensor, example.tensor);
  }
}

// Every configuration in configs/ loads: train-*.yaml as training configurations, the others as run ones.
TEST(RunConfig, EveryShippedConfigurationLoads) {
  int train = 0, run = 0;
  for (const auto& entry : std::filesystem::directory_iterator(testing::source_dir() / "configs")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    if (entry.path().filename().string().rfind("train-", 0) == 0) {
      EXPECT_NO_THROW(load_train_config(entry.path()));
      ++train;
    } else {
      EXPECT_NO_THROW(load_run_config(entry.path()));
      ++run;
    }
  }
  EXPECT_GE(train, 2);
  EXPECT_GE(run, 5);
}

TEST(RunConfig, LoadsFiles) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("slearn_run_config_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "run.yaml";
  std::ofstream(path) << kMinimal << "rounds: x\n";
  EXPECT_EQ(error_of([&] { load_run_config(path); }),
            path.string() + ": key \"rounds\" (line 5) must be an integer, got \"x\"");
  EXPECT_EQ(load_run_config(path, {"rounds=4"}).rounds, 4);
  EXPECT_EQ(error_of([&] { load_run_config(dir / "missing.yaml"); }),
            (dir / "missing.yaml").string() + ": cannot read the configuration file (no such file)");
  EXPECT_EQ(error_of([&] { load_run_config(dir); }),
            dir.string() + ": cannot read the configuration file (not a regular file)");
  std::filesystem::create_symlink(dir / "loop.yaml", dir / "loop.yaml");
  EXPECT_EQ(error_of([&] { load_run_config(dir / "loop.yaml"); }),
            (dir / "loop.yaml").string() +
                ": cannot read the configuration file (a symlink loop: too many levels of symbolic links)");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace slearn
