#include "pipeline/progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "util/terminal.hpp"

namespace slearn {

namespace fs = std::filesystem;

StageProgress::StageProgress(const fs::path& dir, std::string stage, std::int64_t total, Communicator& comm,
                             double every_seconds, bool enabled, bool counted)
    : dir_(dir), stage_(std::move(stage)), total_(total), comm_(comm), every_seconds_(every_seconds),
      enabled_(enabled && counted), terminal_(enabled_ && comm.rank() == 0 && writes_to_terminal(STDOUT_FILENO)),
      counted_(counted),
      start_(std::chrono::steady_clock::now()), last_write_(start_), last_report_(start_) {
  fs::create_directories(dir_);
}

StageProgress::~StageProgress() {
  if (!counted_) return;
  std::error_code ignored;
  fs::remove(dir_ / (".progress." + stage_ + ".rank-" + std::to_string(comm_.rank())), ignored);
}

void StageProgress::update(std::int64_t items_done, std::int64_t tokens_done) {
  if (!counted_) return;
  items_ = items_done;
  tokens_ = tokens_done;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_write_).count() >= 0.5) {
    const fs::path file = dir_ / (".progress." + stage_ + ".rank-" + std::to_string(comm_.rank()));
    const fs::path tmp = file.string() + ".tmp";
    std::ofstream(tmp) << items_ << ' ' << tokens_ << '\n';
    std::error_code ignored;
    fs::rename(tmp, file, ignored);
    last_write_ = now;
  }
  if (comm_.rank() != 0 || !enabled_) return;
  const double since = std::chrono::duration<double>(now - last_report_).count();
  if (terminal_ ? since >= 0.2 : since >= every_seconds_) {
    report(false);
    last_report_ = now;
  }
}

void StageProgress::report(bool final_line) {
  std::int64_t items = items_, tokens = tokens_;
  for (int r = 1; r < comm_.size(); ++r) {
    std::ifstream in(dir_ / (".progress." + stage_ + ".rank-" + std::to_string(r)));
    std::int64_t i = 0, t = 0;
    if (in >> i >> t) {
      items += i;
      tokens += t;
    }
  }
  if (final_line) items = std::max(items, total_);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = static_cast<double>(items) / std::max(elapsed, 1e-9);
  const double eta = rate > 0 ? static_cast<double>(total_ - items) / rate : 0.0;
  if (terminal_) {
    const int width = 24;
    const int filled = total_ > 0 ? static_cast<int>(width * std::min(items, total_) / total_) : width;
    std::printf("\r%-10s [%s%s] %lld/%lld %.1f items/s %.0f tok/s ETA %.0fs   ", stage_.c_str(),
                std::string(static_cast<std::size_t>(filled), '#').c_str(),
                std::string(static_cast<std::size_t>(width - filled), '.').c_str(), static_cast<long long>(items),
                static_cast<long long>(total_), rate, static_cast<double>(tokens) / std::max(elapsed, 1e-9), eta);
    if (final_line) std::printf("\n");
  } else {
    std::printf("%s: %lld/%lld %.1f items/s %.0f tok/s elapsed %.0fs%s\n", stage_.c_str(),
                static_cast<long long>(items), static_cast<long long>(total_), rate,
                static_cast<double>(tokens) / std::max(elapsed, 1e-9), elapsed, final_line ? " (done)" : "");
  }
  std::fflush(stdout);
}

void StageProgress::finish() {
  if (comm_.rank() == 0 && enabled_) report(true);
}

void StageProgress::interrupt() {
  if (comm_.rank() != 0 || !enabled_) return;
  report(false);
  if (terminal_) std::printf("\n");  // so that the line saying why it stopped starts on a line of its own
  std::fflush(stdout);
}

void log_line(const Communicator& comm, const std::string& message) {
  if (comm.rank() == 0) std::printf("%s\n", message.c_str());
  else std::printf("[rank %d] %s\n", comm.rank(), message.c_str());
  std::fflush(stdout);
}

}  // namespace slearn
