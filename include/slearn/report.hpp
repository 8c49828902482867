// The report of a finished run (slearn_dist report, and the end of slearn_dist run): report.md with the
// paper's two tables in the run's own numbers (and, given a full-data baseline run, the two side by side),
// and PNG plots drawn by matplotlib, in OUT/report/ (OUT: the run directory unless told otherwise).
// See docs/pipeline.md, section "The report".
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace slearn {

// The interpreter that draws the plots: the system's, where the Debian package python3-matplotlib puts
// matplotlib (a virtual environment on PATH would not have it).
inline constexpr const char* kReportPython = "/usr/bin/python3";

struct ReportOptions {
  std::filesystem::path run_dir;
  std::filesystem::path baseline_dir;  // empty: no side-by-side table
  std::filesystem::path out_dir;       // empty: run_dir; the report goes to out_dir / "report"
  std::string python = kReportPython;
  bool plots = true;                   // false: report.md and series.json only (a run's report.plots: false)
};

struct ReportResult {
  std::filesystem::path dir;                    // out_dir / "report"
  std::filesystem::path markdown;               // dir / "report.md"
  std::vector<std::filesystem::path> plots;     // the PNGs drawn (none when plot_error is set)
  std::optional<std::string> plot_error;        // why the plots were not drawn: report.md says so too
};

// Reads the run directory (and the baseline's), writes the report directory whole (report.md, series.json,
// the PNGs, report.json: what it holds, so that a later report may replace it) and returns what it wrote.
// Throws InputError for a run directory or baseline that is missing, unfinished or damaged (naming the file),
// a baseline that is not train_on: all or not of the same model and data, and a report directory holding a
// file the report did not write (nothing is then touched). A plot that cannot be drawn (no python3, no
// matplotlib, the script failed) is not thrown: report.md is written without plots and plot_error says why.
ReportResult write_report(const ReportOptions& options);

}  // namespace slearn
