// slearn_dist run: the whole self-learning job, under mpirun or alone.
#include "cli/commands.hpp"
#include "slearn/communicator.hpp"
#include "slearn/pipeline.hpp"
#include "slearn/run_config.hpp"

namespace slearn::cli {

Command add_run_command(CLI::App& app) {
  struct Options {
    std::string config;
    std::vector<std::string> overrides;
    bool force = false;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("run", "The self-learning job: answer, judge, gather, train, evaluate");
  sub->add_option("--config", o->config, "YAML run configuration (see docs/configuration.md)")->required();
  sub->add_option("--set", o->overrides, "Override a key: --set train_on=all (repeatable)");
  sub->add_flag("--force", o->force, "Start over in a run_dir made by another configuration, model or data set");
  sub->add_flag("--quiet", o->quiet, "No progress output");
  return [o]() {
    MpiSession mpi(nullptr, nullptr);
    const RunConfig config = load_run_config(o->config, o->overrides);
    auto comm = make_mpi_communicator();
    PipelineOptions options;
    options.force = o->force;
    options.show_progress = !o->quiet;
    run_pipeline(config, *comm, options);
    return 0;
  };
}

}  // namespace slearn::cli
