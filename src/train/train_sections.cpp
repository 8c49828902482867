#include "train/train_sections.hpp"

namespace slearn::train_sections {

using yaml_schema::field;
using yaml_schema::Fields;

const Fields<LoraSettings>& lora_fields() {
  using S = LoraSettings;
  static const Fields<S> table = {
      field("r", &S::r, yaml_schema::int_at_least(1), "rank of the LoRA matrices"),
      field("alpha", &S::alpha, yaml_schema::float_greater_than(0.0),
            "LoRA alpha: the update B A x is scaled by alpha / r (alpha / sqrt(r) with use_rslora)"),
      field("dropout", &S::dropout, yaml_schema::float_in_half_open(0.0, 1.0),
            "dropout on the input of the LoRA branch while training"),
      field("use_rslora", &S::use_rslora, std::nullopt, "rank-stabilized LoRA: scale by alpha / sqrt(r)"),
      field("target_modules", &S::target_modules,
            yaml_schema::subset_of({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
            "the linear layers of every decoder layer that get an adapter"),
  };
  return table;
}

const Fields<OptimizerSettings>& optimizer_fields() {
  using S = OptimizerSettings;
  static const Fields<S> table = {
      field("learning_rate", &S::learning_rate, yaml_schema::float_greater_than(0.0), "peak learning rate of AdamW"),
      field("weight_decay", &S::weight_decay, yaml_schema::float_at_least(0.0), "AdamW's decoupled weight decay"),
      field("adam_beta1", &S::adam_beta1, yaml_schema::float_in_half_open(0.0, 1.0),
            "AdamW's decay rate of the first moment"),
      field("adam_beta2", &S::adam_beta2, yaml_schema::float_in_half_open(0.0, 1.0),
            "AdamW's decay rate of the second moment"),
      field("adam_epsilon", &S::adam_epsilon, yaml_schema::float_greater_than(0.0), "AdamW's epsilon"),
      field("max_grad_norm", &S::max_grad_norm, yaml_schema::float_at_least(0.0),
            "clip the global gradient norm to this; 0: no clipping"),
      field("lr_schedule", &S::lr_schedule, yaml_schema::one_of({"cosine", "linear", "constant"}),
            "learning rate after the warmup: cosine or linear decay, or constant"),
      field("warmup_ratio", &S::warmup_ratio, yaml_schema::float_in_half_open(0.0, 1.0),
            "linear warmup over this fraction of the total steps (when warmup_steps is -1)"),
      field("warmup_steps", &S::warmup_steps, yaml_schema::int_minus_one_or_at_least(0),
            "linear warmup over this many steps; -1: use warmup_ratio"),
  };
  return table;
}

const Fields<TrainSettings>& train_fields() {
  using S = TrainSettings;
  static const Fields<S> table = {
      field("epochs", &S::epochs, yaml_schema::int_in_range(1, 1'000'000), "passes over the data"),
      field("global_batch_size", &S::global_batch_size, yaml_schema::int_in_range(1, 1 << 30),
            "examples per optimizer step, over all ranks"),
      field("micro_batch_size", &S::micro_batch_size, yaml_schema::auto_or_int_in_range(1, 1 << 30),
            "examples per forward/backward pass on one rank; gradients accumulate up to the global batch; auto: "
            "as many max_length examples as fit in memory_fraction of the memory free after the weights"),
      field("memory_fraction", &S::memory_fraction, yaml_schema::float_in_half_open(0.05, 1.0),
            "with micro_batch_size auto: the share of the free memory the activations of one micro-batch may "
            "take (the rest is left for the gradient sum, the optimizer and fragmentation)"),
      field("gradient_checkpointing", &S::gradient_checkpointing, std::nullopt,
            "recompute each layer's activations in the backward pass, to save memory"),
      field("seed", &S::seed, yaml_schema::int_at_least(0),
            "seed of the data order, the LoRA initialization and dropout"),
      field("max_steps", &S::max_steps, yaml_schema::int_minus_one_or_at_least(1),
            "stop after this many optimizer steps; -1: run all epochs"),
      field("nan_policy", &S::nan_policy, yaml_schema::one_of({"stop", "skip_step"}),
            "a non-finite loss or gradient: stop with an error naming the step and tensor (the last good "
            "checkpoint is kept), or skip that step's update and go on (counted in metrics.jsonl and the "
            "summary)"),
  };
  return table;
}

const Fields<CheckpointSettings>& checkpoint_fields() {
  using S = CheckpointSettings;
  static const Fields<S> table = {
      field("every_steps", &S::every_steps, yaml_schema::int_at_least(1),
            "save a checkpoint every this many optimizer steps"),
      field("keep_last", &S::keep_last, yaml_schema::int_at_least(1), "checkpoints kept; older ones are deleted"),
  };
  return table;
}

// 1024 is far above any node's GPU count; the bound keeps the value an int for the Mesh.
const Fields<ParallelSettings>& parallel_fields() {
  using S = ParallelSettings;
  static const Fields<S> table = {
      field("tensor", &S::tensor, yaml_schema::int_in_range(1, 1024),
            "ranks per tensor-parallel group (T), each holding a 1/T slice of every layer; the world size must be "
            "a multiple of T (world = T x D). num_attention_heads, intermediate_size and vocab_size must divide by "
            "T, and num_key_value_heads must divide by T or divide T (each kv head is then replicated); see "
            "docs/operations.md"),
  };
  return table;
}

}  // namespace slearn::train_sections
