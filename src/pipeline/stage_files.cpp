#include "pipeline/stage_files.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "slearn/error.hpp"

namespace slearn {

namespace fs = std::filesystem;

namespace {

// The complete lines of a shard; a last line without its newline (a write cut by a kill) is not complete.
std::vector<std::string> complete_lines(const fs::path& path, std::uintmax_t* complete_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t newline; (newline = content.find('\n', start)) != std::string::npos; start = newline + 1)
    lines.push_back(content.substr(start, newline - start));
  if (complete_bytes) *complete_bytes = start;
  return lines;
}

// The fields a stage's records must have, and their types: a line that parses but lacks one (a damaged file)
// is treated like a torn one, and its record redone, instead of failing later in a lookup.
bool is_complete_record(const nlohmann::json& record, const std::string& name) {
  using T = nlohmann::json::value_t;
  static const std::map<std::string, std::vector<std::pair<std::string, T>>> required = {
      {"answers",
       {{"id", T::string}, {"question", T::string}, {"reference", T::string}, {"answer", T::string},
        {"tokens", T::number_unsigned}, {"finish", T::string}}},
      {"judgements", {{"id", T::string}, {"verdict", T::string}, {"incorrect", T::boolean}, {"rationale", T::string},
                      {"judged_by", T::string}, {"parse_ok", T::boolean}}},
  };
  if (!record.is_object()) return false;
  const auto fields = required.find(name);
  const std::vector<std::pair<std::string, T>> id_only = {{"id", T::string}};
  for (const auto& [key, type] : fields == required.end() ? id_only : fields->second) {
    const auto it = record.find(key);
    if (it == record.end()) return false;
    // A count may come back as either integer type; nothing else stands in for one.
    const bool integer_ok = type == T::number_unsigned && it->is_number_integer() && it->get<std::int64_t>() >= 0;
    if (it->type() != type && !integer_ok) return false;
  }
  return true;
}

}  // namespace

std::map<std::string, nlohmann::json> read_stage_shards(const fs::path& dir, const std::string& name) {
  std::map<std::string, nlohmann::json> records;
  if (!fs::exists(dir)) return records;
  std::vector<fs::path> shards;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (file.starts_with(name + ".rank-") && file.ends_with(".jsonl")) shards.push_back(entry.path());
  }
  std::sort(shards.begin(), shards.end());
  for (const auto& shard : shards) {
    for (const auto& line : complete_lines(shard, nullptr)) {
      nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
      if (record.is_discarded() || !is_complete_record(record, name)) continue;
      records.emplace(record["id"].get<std::string>(), std::move(record));
    }
  }
  return records;
}

ShardWriter::ShardWriter(const fs::path& dir, const std::string& name, int rank)
    : path_(dir / (name + ".rank-" + std::to_string(rank) + ".jsonl")) {
  fs::create_directories(dir);
  if (fs::exists(path_)) {
    std::uintmax_t complete = 0;
    complete_lines(path_, &complete);
    if (complete != fs::file_size(path_)) fs::resize_file(path_, complete);
  }
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr) throw Error(path_.string() + ": cannot open for appending");
}

ShardWriter::~ShardWriter() {
  if (file_) std::fclose(file_);
}

void ShardWriter::append(const nlohmann::json& record) {
  const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    throw Error(path_.string() + ": write failed: " + std::strerror(errno));
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> out;
  if (!fs::exists(path)) return out;
  for (const auto& line : complete_lines(path, nullptr)) {
    if (line.empty()) continue;
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_discarded()) out.push_back(std::move(record));
  }
  return out;
}

}  // namespace slearn
