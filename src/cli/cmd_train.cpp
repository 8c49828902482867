// slearn_dist train: LoRA fine-tuning from a YAML configuration; slearn_dist merge: fold an adapter in.
#include <cstdio>

#include "cli/commands.hpp"
#include "slearn/communicator.hpp"
#include "slearn/input_check.hpp"
#include "slearn/merge.hpp"
#include "slearn/stop.hpp"
#include "slearn/train_config.hpp"
#include "slearn/trainer.hpp"

namespace slearn::cli {

Command add_train_command(CLI::App& app) {
  struct Options {
    std::string config;
    std::vector<std::string> overrides;
    SettingOptions settings;  // --backend, --tensor-parallel: the same as their --set, after the other --set
    bool force = false;
    std::optional<std::int64_t> stop_at_step;
    bool quiet = false;
    std::optional<std::int64_t> inject_nan_at_step;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("train", "LoRA fine-tuning on question/answer records (YAML configuration)");
  sub->add_option("--config", o->config, "YAML configuration (see docs/configuration.md)")->required();
  sub->add_option("--set", o->overrides, "Override a key: --set lora.r=16 (repeatable)");
  add_setting_options(*sub, o->settings);
  sub->add_flag("--force", o->force, "Start over even if run_dir holds checkpoints of another run");
  sub->add_option("--stop-at-step", o->stop_at_step, "Checkpoint and stop once this many steps are done");
  sub->add_flag("--quiet", o->quiet, "No progress output");
  // A testing aid (docs/stopping.md), left out of --help: makes training step N's gradients non-finite.
  sub->add_option("--inject-nan-at-step", o->inject_nan_at_step, "Testing aid: a NaN gradient at this step")
      ->group("");
  return [o]() {
    start_mpi();  // one process, or the ranks of mpirun (parallel.tensor > 1); finalized by main()
    install_stop_handlers();  // after MPI_Init, so that these handlers are the ones in place
    auto comm = make_mpi_communicator();
    TrainConfig config;
    try {
      check_on_all_ranks(*comm, [&] { config = load_train_config(o->config, o->settings.appended_to(o->overrides)); });
    } catch (const ReportedByAnotherRank&) {
      return 0;  // another rank prints the line and gives the job its exit code (docs/failures.md)
    }
    TrainRunOptions options;
    options.force = o->force;
    options.stop_at_step = o->stop_at_step;
    options.show_progress = !o->quiet;
    options.inject_nan_at_step = o->inject_nan_at_step;
    TrainResult r;
    try {
      r = train_lora(config, *comm, options);
    } catch (const ReportedByAnotherRank&) {
      return 0;
    }
    if (comm->rank() != 0) return 0;
    const std::string skipped =
        r.skipped_steps > 0 ? ", " + std::to_string(r.skipped_steps) + " step(s) skipped (non-finite)" : "";
    if (!o->quiet)
      std::fprintf(stderr, "slearn_dist train: %s at step %lld/%lld (resumed from %lld), last loss %.4f, %.0f tok/s, "
                   "%.1f MB of activations kept per micro-batch%s%s\n",
                   r.finished ? "finished" : "stopped", static_cast<long long>(r.steps_done),
                   static_cast<long long>(r.total_steps), static_cast<long long>(r.resumed_from), r.last_loss,
                   r.tokens_per_second, static_cast<double>(r.activation_bytes) / 1e6,
                   config.train.gradient_checkpointing ? " (gradient checkpointing)" : "",
                   skipped.c_str());
    return 0;
  };
}

Command add_merge_command(CLI::App& app) {
  struct Options {
    std::string model, adapter, out;
    std::uint64_t max_shard_bytes = 5'000'000'000ull;
    std::string backend = "auto";
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("merge", "Fold a LoRA adapter into its base model (a Hugging Face checkpoint)");
  sub->add_option("--model", o->model, "Base model directory")->required();
  sub->add_option("--adapter", o->adapter, "PEFT adapter directory")->required();
  sub->add_option("--out", o->out, "Output directory")->required();
  sub->add_option("--max-shard-bytes", o->max_shard_bytes, "Largest shard before splitting")->capture_default_str();
  // Accepted so that a GPU job's settings work here too. A merge reads and writes every weight once and is
  // bound by that I/O, so its arithmetic is the host's fp32 on any backend: the merged checkpoint is the same
  // bit for bit on a CPU or a GPU node (docs/training.md).
  sub->add_option("--backend", o->backend, "cpu, cuda or auto (the merge computes in fp32 on the host on all)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  return [o]() {
    const MergeResult r = merge_adapter(o->model, o->adapter, o->out, o->max_shard_bytes);
    std::fprintf(stderr, "slearn_dist merge: %zu tensors (%zu merged) in %zu shard(s), %.1f MB, written to %s\n",
                 r.tensors, r.merged, r.shards, static_cast<double>(r.bytes) / 1e6, o->out.c_str());
    return 0;
  };
}

}  // namespace slearn::cli
