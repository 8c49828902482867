// Training configuration: defaults, every key read from YAML, overrides, the exact error messages
// (unknown keys, wrong types, values out of range, missing keys), the effective YAML, and the generated
// reference in docs/configuration.md.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "slearn/error.hpp"
#include "slearn/train_config.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

const std::string kMinimal = "model: models/qwen\nrun_dir: runs/a\ndata:\n  path: data/train.jsonl\n";

// Every key set to a value other than its default.
const std::string kFull = R"(model: /models/qwen2.5-0.5b-instruct
run_dir: runs/full
backend: cpu
threads: 8
log_every_steps: 5
parallel:
  tensor: 2
data:
  path: data/qa.jsonl
  question_field: q
  answer_field: a
  id_field: uid
  system_prompt: "You are a careful doctor."
  chat_format: chatml
  max_length: 1024
  train_on_prompt: true
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
)";

// The message of the InputError `parse` throws ("" when it throws none).
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
  return error_of([&] { parse_train_config(yaml, "run.yaml", overrides); });
}

void expect_same(const TrainConfig& a, const TrainConfig& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.run_dir, b.run_dir);
  EXPECT_EQ(a.backend, b.backend);
  EXPECT_EQ(a.threads, b.threads);
  EXPECT_EQ(a.log_every_steps, b.log_every_steps);
  EXPECT_EQ(a.parallel.tensor, b.parallel.tensor);
  EXPECT_EQ(a.data.path, b.data.path);
  EXPECT_EQ(a.data.question_field, b.data.question_field);
  EXPECT_EQ(a.data.answer_field, b.data.answer_field);
  EXPECT_EQ(a.data.id_field, b.data.id_field);
  EXPECT_EQ(a.data.system_prompt, b.data.system_prompt);
  EXPECT_EQ(a.data.chat_format, b.data.chat_format);
  EXPECT_EQ(a.data.max_length, b.data.max_length);
  EXPECT_EQ(a.data.train_on_prompt, b.data.train_on_prompt);
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
}

TEST(TrainConfig, MinimalFileTakesTheDefaults) {
  const TrainConfig config = parse_train_config(kMinimal, "run.yaml");
  TrainConfig expected;
  expected.model = "models/qwen";  // relative paths stay as written
  expected.run_dir = "runs/a";
  expected.data.path = "data/train.jsonl";
  expect_same(config, expected);
  EXPECT_EQ(config.lora.r, 64);
  EXPECT_EQ(config.lora.target_modules.size(), 7u);
  EXPECT_EQ(config.optimizer.learning_rate, 3e-4);
  EXPECT_EQ(config.train.seed, 42u);
  EXPECT_FALSE(config.threads.has_value());
  EXPECT_EQ(config.parallel.tensor, 1);  // the whole model on every rank
}

TEST(TrainConfig, ReadsEveryKey) {
  const TrainConfig c = parse_train_config(kFull, "run.yaml");
  EXPECT_EQ(c.model, "/models/qwen2.5-0.5b-instruct");
  EXPECT_EQ(c.run_dir, "runs/full");
  EXPECT_EQ(c.backend, "cpu");
  EXPECT_EQ(c.threads, 8);
  EXPECT_EQ(c.log_every_steps, 5);
  EXPECT_EQ(c.parallel.tensor, 2);
  EXPECT_EQ(c.data.path, "data/qa.jsonl");
  EXPECT_EQ(c.data.question_field, "q");
  EXPECT_EQ(c.data.answer_field, "a");
  EXPECT_EQ(c.data.id_field, "uid");
  EXPECT_EQ(c.data.system_prompt, "You are a careful doctor.");
  EXPECT_EQ(c.data.chat_format, "chatml");
  EXPECT_EQ(c.data.max_length, 1024);
  EXPECT_TRUE(c.data.train_on_prompt);
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
}

TEST(TrainConfig, LoraScaling) {
  LoraSettings lora;
  lora.r = 16;
  lora.alpha = 32;
  EXPECT_DOUBLE_EQ(lora.scaling(), 2.0);
  lora.use_rslora = true;
  EXPECT_DOUBLE_EQ(lora.scaling(), 8.0);
  EXPECT_DOUBLE_EQ(LoraSettings{}.scaling(), 0.25);
}

// parallel.tensor: an integer from 1 to 1024 (the world size and the model's shape are checked where the ranks
// and the model are known, not here).
TEST(TrainConfig, ParallelSection) {
  EXPECT_EQ(parse_train_config(kMinimal + "parallel: {tensor: 4}\n", "run.yaml").parallel.tensor, 4);
  EXPECT_EQ(parse_train_config(kMinimal + "parallel:\n  tensor: 1024\n", "run.yaml").parallel.tensor, 1024);
  EXPECT_EQ(parse_train_config(kMinimal + "parallel:\n", "run.yaml").parallel.tensor, 1);  // an empty section
  EXPECT_EQ(parse_error(kMinimal + "parallel: {tensor: 0}\n"),
            "run.yaml: key \"parallel.tensor\" (line 5) must be between 1 and 1024, got 0");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensor: -1\n"),
            "run.yaml: key \"parallel.tensor\" (line 6) must be between 1 and 1024, got -1");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensor: 1025\n"),
            "run.yaml: key \"parallel.tensor\" (line 6) must be between 1 and 1024, got 1025");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensor: two\n"),
            "run.yaml: key \"parallel.tensor\" (line 6) must be an integer, got \"two\"");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensor: 2.5\n"),
            "run.yaml: key \"parallel.tensor\" (line 6) must be an integer, got \"2.5\"");
  EXPECT_EQ(parse_error(kMinimal + "parallel:\n  tensr: 2\n"),
            "run.yaml: unknown key \"parallel.tensr\" (line 6); known keys in parallel: tensor");
  EXPECT_EQ(parse_error(kMinimal + "parallel: 4\n"),
            "run.yaml: key \"parallel\" (line 5) must be a section (a mapping of keys), got \"4\"; known keys in "
            "parallel: tensor");
  // --set (and so --tensor-parallel, which is parallel.tensor=T after the other --set) replaces the file's value.
  EXPECT_EQ(parse_train_config(kMinimal + "parallel: {tensor: 4}\n", "run.yaml", {"parallel.tensor=2"}).parallel.tensor,
            2);
  EXPECT_EQ(parse_train_config(kMinimal, "run.yaml", {"parallel.tensor=8", "parallel.tensor=2"}).parallel.tensor, 2);
  EXPECT_EQ(parse_error(kMinimal, {"parallel.tensor=0"}),
            "run.yaml: key \"parallel.tensor\" (--set parallel.tensor=0) must be between 1 and 1024, got 0");
  EXPECT_EQ(parse_error(kMinimal, {"parallel.tensr=2"}),
            "run.yaml: unknown key \"parallel.tensr\" (--set parallel.tensr=2); known keys in parallel: tensor");
  // The effective YAML keeps it, so a checkpoint's copy of the configuration reads back the same T.
  const TrainConfig c = parse_train_config(kMinimal, "run.yaml", {"parallel.tensor=4"});
  EXPECT_EQ(parse_train_config(c.source_text, "checkpoint").parallel.tensor, 4);
}

TEST(TrainConfig, UnknownKeysNameTheKeyLineAndKnownKeys) {
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  alpha: 8\n  rank: 4\n"),
            "run.yaml: unknown key \"lora.rank\" (line 7); known keys in lora: r, alpha, dropout, use_rslora, "
            "target_modules");
  EXPECT_EQ(parse_error("model: m\nepoch: 3\n"),
            "run.yaml: unknown key \"epoch\" (line 2); known top-level keys: model, run_dir, backend, cpu_weights, threads, "
            "log_every_steps, parallel, data, lora, optimizer, train, checkpoint");
  EXPECT_EQ(parse_error(kMinimal + "train:\n  epochs: 2\n  batch: {size: 3}\n"),
            "run.yaml: unknown key \"train.batch\" (line 7); known keys in train: epochs, global_batch_size, "
            "micro_batch_size, memory_fraction, gradient_checkpointing, seed, max_steps, nan_policy");
}

TEST(TrainConfig, WrongTypesNameTheKeyLineAndValue) {
  const std::string yaml = kMinimal + "lora:\n  r: 8\ntrain:\n  seed: 1\n  max_steps: 3\n\n  global_batch_size: 8\n"
                                      "  epochs: five\n";
  EXPECT_EQ(parse_error(yaml), "run.yaml: key \"train.epochs\" (line 12) must be an integer, got \"five\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  r: 8.5\n"), "run.yaml: key \"lora.r\" (line 6) must be an integer, got \"8.5\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  r: \"8\"\n"),
            "run.yaml: key \"lora.r\" (line 6) must be an integer, got \"8\" (quoted, so a string)");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  r:\n"), "run.yaml: key \"lora.r\" (line 6) must be an integer, got null");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  alpha: [1]\n"),
            "run.yaml: key \"lora.alpha\" (line 6) must be a number, got a list");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  alpha: .inf\n"),
            "run.yaml: key \"lora.alpha\" (line 6) must be a finite number, got \".inf\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  alpha: nan\n"),
            "run.yaml: key \"lora.alpha\" (line 6) must be a finite number, got \"nan\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  use_rslora: yes please\n"),
            "run.yaml: key \"lora.use_rslora\" (line 6) must be true or false, got \"yes please\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  target_modules: q_proj\n"),
            "run.yaml: key \"lora.target_modules\" (line 6) must be a list of strings, got \"q_proj\"");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  target_modules: [q_proj, [v_proj]]\n"),
            "run.yaml: key \"lora.target_modules\" (line 6) must be a list of strings, but item 2 is a list");
  EXPECT_EQ(parse_error(kMinimal + "threads: many\n"),
            "run.yaml: key \"threads\" (line 5) must be an integer or null, got \"many\"");
  EXPECT_EQ(parse_error(kMinimal + "backend: {name: cpu}\n"),
            "run.yaml: key \"backend\" (line 5) must be a string, got a mapping");
  EXPECT_EQ(parse_error(kMinimal + "lora: 5\n"),
            "run.yaml: key \"lora\" (line 5) must be a section (a mapping of keys), got \"5\"; known keys in lora: r, "
            "alpha, dropout, use_rslora, target_modules");
  EXPECT_EQ(parse_error(kMinimal + "train:\n  seed: 99999999999999999999\n"),
            "run.yaml: key \"train.seed\" (line 6) is out of range, got \"99999999999999999999\"");
}

TEST(TrainConfig, ScalarForms) {
  const TrainConfig c = parse_train_config(
      kMinimal + "threads: ~\nlora:\n  alpha: 8\n  dropout: .25\n  use_rslora: True\noptimizer:\n  learning_rate: 2E-5\n"
                 "  adam_beta2: +0.5\n  warmup_steps: -1\ntrain:\n  epochs: +2\n",
      "run.yaml");
  EXPECT_FALSE(c.threads.has_value());
  EXPECT_EQ(c.lora.alpha, 8.0);
  EXPECT_EQ(c.lora.dropout, 0.25);
  EXPECT_TRUE(c.lora.use_rslora);
  EXPECT_EQ(c.optimizer.learning_rate, 2e-5);
  EXPECT_EQ(c.optimizer.adam_beta2, 0.5);
  EXPECT_EQ(c.optimizer.warmup_steps, -1);
  EXPECT_EQ(c.train.epochs, 2);
  // A string key takes any scalar as text; empty sections are allowed.
  const TrainConfig e = parse_train_config("model: m\nrun_dir: r\ndata:\n  path: 123\n  system_prompt: ''\nlora:\n",
                                           "run.yaml");
  EXPECT_EQ(e.data.path, "123");
  EXPECT_EQ(e.data.system_prompt, "");
  EXPECT_EQ(e.lora.r, 64);
  const TrainConfig f =
      parse_train_config(kMinimal + "lora:\n  target_modules:\n    - q_proj\n    - o_proj\n", "run.yaml");
  EXPECT_EQ(f.lora.target_modules, (std::vector<std::string>{"q_proj", "o_proj"}));
}

TEST(TrainConfig, MissingRequiredKeys) {
  EXPECT_EQ(parse_error("run_dir: r\ndata: {path: d}\n"),
            "run.yaml: missing required key \"model\" (Hugging Face model directory (config.json, safetensors "
            "weights, tokenizer.json))");
  EXPECT_EQ(parse_error("model: m\ndata: {path: d}\n").rfind("run.yaml: missing required key \"run_dir\"", 0), 0u);
  EXPECT_EQ(parse_error("model: m\nrun_dir: r\n").rfind("run.yaml: missing required key \"data.path\"", 0), 0u);
  EXPECT_EQ(parse_error("model: m\nrun_dir: r\ndata:\n").rfind("run.yaml: missing required key \"data.path\"", 0), 0u);
  EXPECT_EQ(parse_error("").rfind("run.yaml: missing required key \"model\"", 0), 0u);
  EXPECT_EQ(parse_error("model: ''\nrun_dir: r\ndata: {path: d}\n"),
            "run.yaml: key \"model\" (line 1) must not be empty");
}

TEST(TrainConfig, MalformedDocuments) {
  EXPECT_EQ(parse_error("model: [a,\nrun_dir: b\n").rfind("run.yaml: invalid YAML (line ", 0), 0u);
  EXPECT_EQ(parse_error("- model\n- run_dir\n"),
            "run.yaml: must be a mapping of keys (such as \"model: DIR\"), got a list");
  EXPECT_EQ(parse_error(kMinimal + "model: other\n"), "run.yaml: key \"model\" is given twice (lines 1 and 5)");
  EXPECT_EQ(parse_error(kMinimal + "data:\n  path: 123\n"), "run.yaml: key \"data\" is given twice (lines 3 and 5)");
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  r: 4\n  r: 8\n"), "run.yaml: key \"lora.r\" is given twice (lines 6 and 7)");
  EXPECT_EQ(parse_error(kMinimal + "---\nmodel: x\n"),
            "run.yaml: holds 2 YAML documents (separated by ---); expected one");
}

struct RangeCase {
  std::string override_text;
  std::string message;  // after "run.yaml: key "
};

TEST(TrainConfig, ValuesOutOfRange) {
  const std::vector<RangeCase> cases = {
      {"lora.r=0", "\"lora.r\" (--set lora.r=0) must be >= 1, got 0"},
      {"lora.alpha=0", "\"lora.alpha\" (--set lora.alpha=0) must be > 0, got 0"},
      {"lora.dropout=1", "\"lora.dropout\" (--set lora.dropout=1) must be in [0, 1), got 1"},
      {"lora.dropout=-0.1", "\"lora.dropout\" (--set lora.dropout=-0.1) must be in [0, 1), got -0.1"},
      {"lora.target_modules=[]", "\"lora.target_modules\" (--set lora.target_modules=[]) must name at least one of "
                                 "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, got []"},
      {"lora.target_modules=[q_proj,qkv_proj]",
       "\"lora.target_modules\" (--set lora.target_modules=[q_proj,qkv_proj]) may only hold q_proj, k_proj, v_proj, "
       "o_proj, gate_proj, up_proj, down_proj; \"qkv_proj\" is not one of them, got [q_proj, qkv_proj]"},
      {"lora.target_modules=[v_proj,q_proj,v_proj]",
       "\"lora.target_modules\" (--set lora.target_modules=[v_proj,q_proj,v_proj]) names \"v_proj\" twice, got "
       "[v_proj, q_proj, v_proj]"},
      {"optimizer.learning_rate=-1e-4", "\"optimizer.learning_rate\" (--set optimizer.learning_rate=-1e-4) must be "
                                        "> 0, got -1e-4"},
      {"optimizer.weight_decay=-0.5", "\"optimizer.weight_decay\" (--set optimizer.weight_decay=-0.5) must be >= 0, "
                                      "got -0.5"},
      {"optimizer.adam_beta1=1", "\"optimizer.adam_beta1\" (--set optimizer.adam_beta1=1) must be in [0, 1), got 1"},
      {"optimizer.adam_beta2=1.5", "\"optimizer.adam_beta2\" (--set optimizer.adam_beta2=1.5) must be in [0, 1), "
                                   "got 1.5"},
      {"optimizer.adam_epsilon=0", "\"optimizer.adam_epsilon\" (--set optimizer.adam_epsilon=0) must be > 0, got 0"},
      {"optimizer.max_grad_norm=-1", "\"optimizer.max_grad_norm\" (--set optimizer.max_grad_norm=-1) must be >= 0, "
                                     "got -1"},
      {"optimizer.lr_schedule=step", "\"optimizer.lr_schedule\" (--set optimizer.lr_schedule=step) must be one of "
                                     "cosine, linear, constant, got \"step\""},
      {"optimizer.warmup_ratio=1", "\"optimizer.warmup_ratio\" (--set optimizer.warmup_ratio=1) must be in [0, 1), "
                                   "got 1"},
      {"optimizer.warmup_steps=-2", "\"optimizer.warmup_steps\" (--set optimizer.warmup_steps=-2) must be -1 or "
                                    ">= 0, got -2"},
      {"train.epochs=0", "\"train.epochs\" (--set train.epochs=0) must be between 1 and 1000000, got 0"},
      {"train.global_batch_size=0", "\"train.global_batch_size\" (--set train.global_batch_size=0) must be between 1 and 1073741824, got 0"},
      {"train.micro_batch_size=-4", "\"train.micro_batch_size\" (--set train.micro_batch_size=-4) must be auto or a whole number between 1 and 1073741824, got \"-4\""},
      {"train.seed=-1", "\"train.seed\" (--set train.seed=-1) must be >= 0, got -1"},
      {"train.max_steps=0", "\"train.max_steps\" (--set train.max_steps=0) must be -1 or >= 1, got 0"},
      {"data.max_length=1", "\"data.max_length\" (--set data.max_length=1) must be between 2 and 16777216, got 1"},
      {"data.chat_format=vicuna", "\"data.chat_format\" (--set data.chat_format=vicuna) must be one of auto, chatml, "
                                  "llama2, llama3, got \"vicuna\""},
      {"backend=tpu", "\"backend\" (--set backend=tpu) must be one of auto, cpu, cuda, got \"tpu\""},
      {"threads=0", "\"threads\" (--set threads=0) must be between 1 and 2147483647, got 0"},
      {"threads=4294967296", "\"threads\" (--set threads=4294967296) must be between 1 and 2147483647, got 4294967296"},
      {"log_every_steps=0", "\"log_every_steps\" (--set log_every_steps=0) must be >= 1, got 0"},
      {"checkpoint.keep_last=0", "\"checkpoint.keep_last\" (--set checkpoint.keep_last=0) must be >= 1, got 0"},
      {"checkpoint.every_steps=0", "\"checkpoint.every_steps\" (--set checkpoint.every_steps=0) must be >= 1, got 0"},
  };
  for (const RangeCase& c : cases) EXPECT_EQ(parse_error(kMinimal, {c.override_text}), "run.yaml: key " + c.message);
  // The same checks apply to values in the file, named by line.
  EXPECT_EQ(parse_error(kMinimal + "lora:\n  r: 0\n"), "run.yaml: key \"lora.r\" (line 6) must be >= 1, got 0");
  // Boundaries that are allowed.
  EXPECT_NO_THROW(parse_train_config(kMinimal, "run.yaml",
                                     {"lora.dropout=0", "optimizer.weight_decay=0", "optimizer.adam_beta1=0",
                                      "optimizer.max_grad_norm=0", "optimizer.warmup_ratio=0",
                                      "optimizer.warmup_steps=0", "train.max_steps=1", "data.max_length=2",
                                      "train.seed=0", "threads=1"}));
}

TEST(TrainConfig, OverridesApplyBeforeChecks) {
  const TrainConfig c = parse_train_config(
      kMinimal + "lora:\n  r: 0\n", "run.yaml",
      {"lora.r=16", "data.path=x.jsonl", "lora.target_modules=[q_proj,v_proj]", "threads=4",
       "optimizer.learning_rate=1e-5", "train.gradient_checkpointing=true", "checkpoint.keep_last=1",
       "data.system_prompt=You are a doctor: be brief.", "data.question_field=\"prompt\"", "model = other"});
  EXPECT_EQ(c.lora.r, 16);  // the file's invalid 0 is replaced before the checks
  EXPECT_EQ(c.data.path, "x.jsonl");
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.threads, 4);
  EXPECT_EQ(c.optimizer.learning_rate, 1e-5);
  EXPECT_TRUE(c.train.gradient_checkpointing);
  EXPECT_EQ(c.checkpoint.keep_last, 1);
  EXPECT_EQ(c.data.system_prompt, "You are a doctor: be brief.");
  EXPECT_EQ(c.data.question_field, "prompt");
  EXPECT_EQ(c.model, "other");
  // threads back to null; the last override of a key wins; a key can be given only by an override.
  const TrainConfig d = parse_train_config("model: m\nrun_dir: r\nthreads: 3\n", "run.yaml",
                                           {"threads=null", "data.path=a", "data.path=b", "data.system_prompt="});
  EXPECT_FALSE(d.threads.has_value());
  EXPECT_EQ(d.data.path, "b");
  EXPECT_EQ(d.data.system_prompt, "");
  // An override fills an empty section.
  EXPECT_EQ(parse_train_config("model: m\nrun_dir: r\ndata:\n", "run.yaml", {"data.path=x"}).data.path, "x");
}

TEST(TrainConfig, BadOverridesNameTheOverride) {
  EXPECT_EQ(parse_error(kMinimal, {"lora.rank=16"}),
            "run.yaml: unknown key \"lora.rank\" (--set lora.rank=16); known keys in lora: r, alpha, dropout, "
            "use_rslora, target_modules");
  EXPECT_EQ(parse_error(kMinimal, {"lorra.r=16"}),
            "run.yaml: unknown key \"lorra\" (--set lorra.r=16); known top-level keys: model, run_dir, backend, "
            "cpu_weights, threads, log_every_steps, parallel, data, lora, optimizer, train, checkpoint");
  EXPECT_EQ(parse_error(kMinimal, {"lora.r"}), "run.yaml: --set \"lora.r\" must be KEY=VALUE, such as lora.r=16");
  EXPECT_EQ(parse_error(kMinimal, {"=3"}), "run.yaml: --set \"=3\" must be KEY=VALUE, such as lora.r=16");
  EXPECT_EQ(parse_error(kMinimal, {"lora=16"}),
            "run.yaml: --set \"lora=16\": \"lora\" is a section; set its keys one at a time; known keys in lora: r, "
            "alpha, dropout, use_rslora, target_modules");
  EXPECT_EQ(parse_error(kMinimal, {"lora.r.x=1"}), "run.yaml: --set \"lora.r.x=1\": \"lora.r\" is a key, not a section");
  EXPECT_EQ(parse_error(kMinimal, {"lora.r=sixteen"}),
            "run.yaml: key \"lora.r\" (--set lora.r=sixteen) must be an integer, got \"sixteen\"");
  EXPECT_EQ(parse_error(kMinimal, {"lora.target_modules=[q_proj"}).rfind(
                "run.yaml: --set \"lora.target_modules=[q_proj\": the value is not valid YAML (", 0),
            0u);
  // An override of a section the file gives as a scalar: the file's error comes first.
  EXPECT_EQ(parse_error(kMinimal + "lora: 5\n", {"lora.r=4"}).rfind("run.yaml: key \"lora\" (line 5) must be a section", 0),
            0u);
}

TEST(TrainConfig, SourceTextIsTheEffectiveYaml) {
  const TrainConfig c = parse_train_config(kFull + "# a comment\n", "run.yaml",
                                           {"lora.r=8", "data.system_prompt=null", "checkpoint.keep_last=9"});
  EXPECT_NE(c.source_text.find("r: 8"), std::string::npos) << c.source_text;
  EXPECT_EQ(c.source_text.find("r: 16"), std::string::npos) << c.source_text;
  EXPECT_EQ(c.data.system_prompt, "null");
  // Reading it back gives the same configuration.
  const TrainConfig again = parse_train_config(c.source_text, "checkpoint");
  expect_same(again, c);
  EXPECT_EQ(again.source_text, c.source_text);
  // Strings that look like other types survive the round trip.
  const TrainConfig odd = parse_train_config(
      kMinimal, "run.yaml", {"data.system_prompt=\"line 1\nline 2: yes\"", "data.id_field=true", "run_dir=007"});
  const TrainConfig odd_again = parse_train_config(odd.source_text, "checkpoint");
  EXPECT_EQ(odd.data.system_prompt, "line 1 line 2: yes");  // a double-quoted YAML scalar folds its line break
  EXPECT_EQ(odd_again.data.id_field, "true");
  EXPECT_EQ(odd_again.run_dir, "007");
  expect_same(odd_again, odd);
}

std::filesystem::path temp_dir() {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("slearn_train_config_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(TrainConfig, LoadsFiles) {
  const auto dir = temp_dir();
  const auto path = dir / "run.yaml";
  std::ofstream(path) << kMinimal << "lora:\n  r: x\n";
  const std::string message = error_of([&] { load_train_config(path); });
  EXPECT_EQ(message, path.string() + ": key \"lora.r\" (line 6) must be an integer, got \"x\"");
  EXPECT_EQ(load_train_config(path, {"lora.r=2"}).lora.r, 2);
  EXPECT_EQ(error_of([&] { load_train_config(dir / "missing.yaml"); }),
            (dir / "missing.yaml").string() + ": cannot read the configuration file (no such file)");
  EXPECT_EQ(error_of([&] { load_train_config(dir); }),
            dir.string() + ": cannot read the configuration file (not a regular file)");
  std::filesystem::remove_all(dir);
}

using slearn::testing::read_file;

// docs/configuration.md holds train_config_reference() between its markers. After changing the schema, run
// this test with SLEARN_UPDATE_DOCS=1 to rewrite that part of the file.
TEST(TrainConfig, ReferenceInDocsIsCurrent) {
  const auto path = testing::source_dir() / "docs" / "configuration.md";
  const std::string begin = "<!-- BEGIN train_config_reference -->\n";
  const std::string end = "<!-- END train_config_reference -->";
  std::string doc = read_file(path);
  const auto b = doc.find(begin);
  const auto e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << path;
  ASSERT_NE(e, std::string::npos) << path;
  ASSERT_LT(b, e);
  const std::string reference = train_config_reference();
  const std::string current = doc.substr(b + begin.size(), e - b - begin.size());
  if (current != reference && std::getenv("SLEARN_UPDATE_DOCS") != nullptr) {
    doc.replace(b + begin.size(), e - b - begin.size(), reference);
    std::ofstream(path, std::ios::binary) << doc;
    return;
  }
  EXPECT_EQ(current, reference) << "docs/configuration.md is out of date: run this test with SLEARN_UPDATE_DOCS=1";
}

TEST(TrainConfig, ReferenceListsEveryKey) {
  const std::string reference = train_config_reference();
  for (const char* key : {"`model`", "`data.path`", "`lora.target_modules`", "`optimizer.adam_epsilon`",
                          "`train.max_steps`", "`checkpoint.keep_last`", "`parallel.tensor`"})
    EXPECT_NE(reference.find(key), std::string::npos) << key;
  EXPECT_NE(reference.find("| `lora.r` | int | `64` | >= 1 | rank of the LoRA matrices |"), std::string::npos)
      << reference;
  EXPECT_NE(reference.find("| `optimizer.adam_epsilon` | float | `1e-8` |"), std::string::npos) << reference;
  EXPECT_NE(reference.find("| `model` | string | required |"), std::string::npos) << reference;
  EXPECT_NE(reference.find("| `parallel.tensor` | int | `1` | 1 to 1024 |"), std::string::npos) << reference;
}

// The example configuration in docs/configuration.md is valid.
TEST(TrainConfig, DocsExampleParses) {
  const std::string doc = read_file(testing::source_dir() / "docs" / "configuration.md");
  const auto b = doc.find("```yaml\n");
  ASSERT_NE(b, std::string::npos);
  const auto e = doc.find("```", b + 8);
  ASSERT_NE(e, std::string::npos);
  const TrainConfig c = parse_train_config(doc.substr(b + 8, e - b - 8), "docs/configuration.md");
  EXPECT_FALSE(c.model.empty());
}

}  // namespace
}  // namespace slearn
