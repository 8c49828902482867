// The keys of the training sections (lora, optimizer, train, checkpoint) and of parallel, each bound to its
// settings struct, so that every configuration holding those sections reads them with one table: the same
// keys, defaults, rules and meanings (the run configuration places them under the same names as the training
// one).
#pragma once

#include "slearn/train_config.hpp"
#include "io/yaml_schema.hpp"

namespace slearn::train_sections {

// Paths are relative to the section ("r", not "lora.r"); yaml_schema::add_section places them.
const yaml_schema::Fields<LoraSettings>& lora_fields();
const yaml_schema::Fields<OptimizerSettings>& optimizer_fields();
const yaml_schema::Fields<TrainSettings>& train_fields();
const yaml_schema::Fields<CheckpointSettings>& checkpoint_fields();
// parallel: placed by each configuration next to backend and threads (it is not a training section: in a
// run it applies to every stage).
const yaml_schema::Fields<ParallelSettings>& parallel_fields();

// The four sections under their usual names, bound to Config's lora, optimizer, train and checkpoint.
template <class Config>
void add_training_sections(yaml_schema::Fields<Config>& table) {
  yaml_schema::add_section(table, "lora", &Config::lora, lora_fields());
  yaml_schema::add_section(table, "optimizer", &Config::optimizer, optimizer_fields());
  yaml_schema::add_section(table, "train", &Config::train, train_fields());
  yaml_schema::add_section(table, "checkpoint", &Config::checkpoint, checkpoint_fields());
}

}  // namespace slearn::train_sections
