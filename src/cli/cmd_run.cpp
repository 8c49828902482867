// slearn_dist run: the whole self-learning job, under mpirun or alone.
#include "cli/commands.hpp"
#include "slearn/communicator.hpp"
#include "slearn/input_check.hpp"
#include "slearn/pipeline.hpp"
#include "slearn/run_config.hpp"
#include "slearn/stop.hpp"

namespace slearn::cli {

Command add_run_command(CLI::App& app) {
  struct Options {
    std::string config;
    std::vector<std::string> overrides;
    SettingOptions settings;  // --backend, --tensor-parallel: the same as their --set, after the other --set
    bool force = false;
    bool quiet = false;
    std::optional<std::int64_t> inject_nan_at_step;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("run", "The self-learning job: answer, judge, gather, train, evaluate");
  sub->add_option("--config", o->config, "YAML run configuration (see docs/configuration.md)")->required();
  sub->add_option("--set", o->overrides, "Override a key: --set train_on=all (repeatable)");
  add_setting_options(*sub, o->settings);
  sub->add_flag("--force", o->force, "Start over in a run_dir made by another configuration, model or data set");
  sub->add_flag("--quiet", o->quiet, "No progress output");
  // A testing aid (docs/stopping.md), left out of --help: makes training step N's gradients non-finite.
  sub->add_option("--inject-nan-at-step", o->inject_nan_at_step, "Testing aid: a NaN gradient at this step")
      ->group("");
  return [o]() {
    start_mpi();  // finalized by main() after it has reported the outcome
    // After MPI_Init, so that these handlers are the ones in place whatever MPI installs.
    install_stop_handlers();
    auto comm = make_mpi_communicator();
    try {
      RunConfig config;
      check_on_all_ranks(*comm,
                         [&] { config = load_run_config(o->config, o->settings.appended_to(o->overrides)); });
      PipelineOptions options;
      options.force = o->force;
      options.config_path = o->config;
      options.show_progress = !o->quiet;
      options.inject_nan_at_step = o->inject_nan_at_step;
      run_pipeline(config, *comm, options);
      if (comm->rank() == 0) report_after_run(config.run_dir, config.report.plots);
    } catch (const ReportedByAnotherRank&) {
      return 0;  // bad input: another rank prints the line and gives the job its exit code (docs/failures.md)
    }
    return 0;
  };
}

}  // namespace slearn::cli
