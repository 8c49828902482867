// Progress of a stage summed over ranks without a collective: each rank overwrites a small file with its
// counts; rank 0 reads them all when it reports. On a terminal rank 0 redraws one bar per stage with ETA,
// items/s and tokens/s; otherwise it writes a plain line every `every_seconds`.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include "slearn/communicator.hpp"

namespace slearn {

class StageProgress {
 public:
  // `comm`: the ranks whose counts add up (the data-parallel group of a tensor-parallel run). counted false:
  // a rank that works on the same records as another (a tensor group's ranks past the first): nothing written.
  StageProgress(const std::filesystem::path& dir, std::string stage, std::int64_t total, Communicator& comm,
                double every_seconds, bool enabled, bool counted = true);
  ~StageProgress();
  // This rank's counts so far in this stage.
  void update(std::int64_t items_done, std::int64_t tokens_done);
  void finish();  // the final line (rank 0)
  void interrupt();  // the stage stops on request: rank 0's last report, its bar line ended

 private:
  void report(bool final_line);
  std::filesystem::path dir_;
  std::string stage_;
  std::int64_t total_;
  Communicator& comm_;
  double every_seconds_;
  bool enabled_, terminal_, counted_;
  std::chrono::steady_clock::time_point start_, last_write_, last_report_;
  std::int64_t items_ = 0, tokens_ = 0;
};

// A log line from any rank: rank 0's lines are plain, other ranks' carry "[rank N]".
void log_line(const Communicator& comm, const std::string& message);

}  // namespace slearn
