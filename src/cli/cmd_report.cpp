// slearn_dist report: the report of a finished run (report.md and plots, see slearn/report.hpp); and the
// same at the end of slearn_dist run, where it may warn but never fails the run.
#include <cstdio>
#include <iostream>

#include "cli/commands.hpp"
#include "slearn/error.hpp"
#include "slearn/report.hpp"

namespace slearn::cli {

Command add_report_command(CLI::App& app) {
  struct Options {
    std::string run_dir, baseline, out, python = kReportPython;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("report", "Write report.md and plots of a finished run into RUN_DIR/report/");
  sub->add_option("run_dir", o->run_dir, "The run's run_dir")->required()->type_name("RUN_DIR");
  sub->add_option("--baseline", o->baseline, "A train_on: all run of the same model and data: adds the side-by-side table")
      ->type_name("RUN_DIR");
  sub->add_option("--out", o->out, "Write the report into DIR/report/ instead of RUN_DIR/report/")->type_name("DIR");
  sub->add_option("--python", o->python, "The Python interpreter with matplotlib that draws the plots")
      ->type_name("PATH")
      ->capture_default_str();
  return [o]() {
    ReportOptions options;
    options.run_dir = o->run_dir;
    options.baseline_dir = o->baseline;
    options.out_dir = o->out;
    options.python = o->python;
    const ReportResult result = write_report(options);
    // report.md holds the tables either way; without its plots the command has not done what it was asked.
    if (result.plot_error)
      throw Error("plots not drawn: " + *result.plot_error + "; " + result.markdown.string() +
                  " was written without them");
    std::printf("report: %s (%zu plots)\n", result.markdown.string().c_str(), result.plots.size());
    return 0;
  };
}

void report_after_run(const std::string& run_dir, bool plots) {
  // The run's results are complete and saved before this: whatever goes wrong here is a warning, and the
  // run keeps its exit status.
  const std::string rerun = "slearn_dist report " + run_dir;
  try {
    ReportOptions options;
    options.run_dir = run_dir;
    options.plots = plots;
    const ReportResult result = write_report(options);
    if (result.plot_error)
      std::cerr << "slearn_dist: warning: report plots not drawn: " << one_line(*result.plot_error) << "; "
                << result.markdown.string() << " has the tables; the run's results are complete; to draw them: "
                << rerun << std::endl;
    else
      std::printf("report: %s\n", result.markdown.string().c_str());
  } catch (const std::exception& e) {
    std::cerr << "slearn_dist: warning: no report written: " << one_line(e.what())
              << "; the run's results are complete; to retry: " << rerun << std::endl;
  }
  std::fflush(stdout);
}

}  // namespace slearn::cli
