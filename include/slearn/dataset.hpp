// Domain SFT data sets: JSONL or a JSON array, in one of three record formats, mapped to questions and answers.
//  - qa:       {"id"?, "question": ..., "answer": ...}          (field names configurable)
//  - alpaca:   {"instruction": ..., "input": ..., "output": ...}  question = instruction + "\n" + input (when input non-empty)
//              (an absent, null or whitespace-only input counts as empty)
//  - sharegpt: {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}
//              question = the first human turn, answer = the first gpt turn after it; turns may also be
//              {"role", "content"}; roles human|user, gpt|assistant, and system (ignored); another role before
//              the answer makes the record bad
// Each record keeps a stable id (its id field, or its 1-based line / array index as text) and its original
// JSON, so a selected subset can be written back in the input's own schema.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace slearn {

struct DatasetSettings {
  std::string path;
  std::string format = "auto";  // auto | qa | alpaca | sharegpt (auto: from the first record's fields)
  std::string question_field = "question";
  std::string answer_field = "answer";
  std::string id_field = "id";
  std::string instruction_field = "instruction";
  std::string input_field = "input";
  std::string output_field = "output";
  std::string conversations_field = "conversations";
  std::string on_bad_record = "error";  // error | skip
  std::int64_t max_records = -1;        // read only the first N good records (-1: all)
};

struct DatasetRecord {
  std::string id;
  std::string question;
  std::string answer;
  std::size_t line = 0;       // 1-based line (JSONL) or array index + 1 (JSON array)
  nlohmann::json original;    // the record as read
};

struct BadRecord {
  std::size_t line = 0;
  std::string reason;  // e.g. "invalid JSON (column 12: ...)", "invalid UTF-8 (byte 0xB8 at column 18, byte offset 17
                       // in the file)", "missing answer field \"answer\" (answer_field)", "question field \"question\"
                       // is empty", "duplicate id \"x\" (also line 3)"
};

struct Dataset {
  std::vector<DatasetRecord> records;
  std::vector<BadRecord> bad;  // with on_bad_record: skip
  std::string format;          // the format used (auto resolved)
  bool json_array = false;     // a JSON array (DatasetRecord::line is the element's number), else JSONL (the line)
};

// Reads a data set. With on_bad_record "error" the first bad record throws InputError
// "<file>:<line>: <reason>" (in a JSON array: "<file>:<line>: array element <n>: <reason>", the line where the
// element starts); with "skip" bad records are counted in Dataset::bad. A missing file, an empty data set
// (with skip: "no usable records: all N were bad (first: ...)"), damage to a JSON array itself (not closed,
// text after it), or a file that is neither JSONL nor a JSON array (e.g. not UTF-8, such as GB18030) is an
// InputError. max_records stops reading after that many good records.
Dataset load_dataset(const DatasetSettings& settings);

}  // namespace slearn
