// Files of a pipeline stage. Each rank appends one JSON line per finished record to its own shard
// (<name>.rank-<r>.jsonl), flushed at once, so a kill loses at most the line being written; a torn last line
// is cut off before the rank appends again. Rank 0 merges the shards into <name>.jsonl (input order, each id
// once) through a temporary file and a rename, so a merged file is complete or absent.
#pragma once

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/atomic_file.hpp"  // write_file_atomically, for the merged files

namespace slearn {

// Every complete record of every rank's shard of `name` in `dir`, keyed by "id" (first occurrence wins). A
// line that does not parse, or lacks a field its stage writes ("answers": id, question, reference, answer,
// tokens, finish; "judgements": id, incorrect, judged_by, parse_ok) or has it with another type, is not a
// record: its record is done again.
std::map<std::string, nlohmann::json> read_stage_shards(const std::filesystem::path& dir, const std::string& name);

// This rank's shard, opened for appending after cutting a torn last line.
class ShardWriter {
 public:
  ShardWriter(const std::filesystem::path& dir, const std::string& name, int rank);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  void append(const nlohmann::json& record);  // one line, flushed

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

// Lines of a JSONL file (empty when it does not exist).
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path);

}  // namespace slearn
