// The data-set reader: JSONL and JSON arrays, the qa / alpaca / sharegpt formats and auto detection, ids,
// every kind of bad record under on_bad_record error (message "<file>:<line>: <reason>") and skip (counted),
// files that are not UTF-8, empty and missing files, max_records, and the real shared data sets.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "slearn/dataset.hpp"
#include "slearn/error.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixture(const std::string& name) { return testing::fixtures_dir() / "datasets" / name; }

DatasetSettings settings_for(const fs::path& path, const std::string& format = "auto",
                             const std::string& on_bad_record = "error") {
  DatasetSettings settings;
  settings.path = path.string();
  settings.format = format;
  settings.on_bad_record = on_bad_record;
  return settings;
}

// The message of the InputError load_dataset throws ("" when it throws none).
std::string error_of(const DatasetSettings& settings) {
  try {
    load_dataset(settings);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

class DatasetReader : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("slearn_dataset_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  DatasetSettings write(const std::string& text, const std::string& format = "auto",
                        const std::string& on_bad_record = "error", const std::string& name = "data.jsonl") {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return settings_for(dir_ / name, format, on_bad_record);
  }

  // The error for `text` read with on_bad_record error, without the path ("" when there is none).
  std::string error(const std::string& text, const std::string& format = "auto", const std::string& name = "data.jsonl") {
    const DatasetSettings settings = write(text, format, "error", name);
    const std::string message = error_of(settings);
    if (message.empty()) return "";
    EXPECT_EQ(message.rfind(settings.path, 0), 0u) << message;
    return message.substr(std::min(message.size(), settings.path.size()));
  }

  // The bad records of `text` read with on_bad_record skip.
  std::vector<BadRecord> skipped(const std::string& text, const std::string& format = "auto",
                                 const std::string& name = "data.jsonl") {
    return load_dataset(write(text, format, "skip", name)).bad;
  }

  fs::path dir_;
};

const std::string kOk = "{\"question\": \"q\", \"answer\": \"a\"}\n";

TEST(DatasetFormats, QaJsonlWithBomCrlfBlankLinesAndIds) {
  for (const std::string format : {"qa", "auto"}) {
    const Dataset data = load_dataset(settings_for(fixture("qa.jsonl"), format));
    EXPECT_EQ(data.format, "qa");
    EXPECT_TRUE(data.bad.empty());
    ASSERT_EQ(data.records.size(), 5u);
    EXPECT_EQ(data.records[0].id, "q-1");
    EXPECT_EQ(data.records[0].question, "What is anemia?");
    EXPECT_EQ(data.records[0].answer, "A lack of healthy red blood cells.");
    EXPECT_EQ(data.records[0].line, 1u);
    EXPECT_EQ(data.records[0].original.at("source"), "fixture");
    EXPECT_EQ(data.records[1].id, "3");  // no id field: the line number (blank lines count)
    EXPECT_EQ(data.records[1].line, 3u);
    EXPECT_EQ(data.records[1].answer, "Uric acid crystals in a joint.");  // CR dropped
    EXPECT_EQ(data.records[2].id, "42");  // an integer id
    EXPECT_EQ(data.records[2].question, "高血压患者应注意什么？");
    EXPECT_EQ(data.records[3].id, "5");  // null: as if absent
    EXPECT_EQ(data.records[4].id, "q-6");
    EXPECT_EQ(data.records[4].line, 7u);
    EXPECT_EQ(data.records[4].original.at("tags"), json::parse(R"(["cardio", {"level": 1}])"));
  }
}

TEST(DatasetFormats, JsonArray) {
  const Dataset data = load_dataset(settings_for(fixture("qa-array.json")));
  EXPECT_EQ(data.format, "qa");
  ASSERT_EQ(data.records.size(), 3u);
  EXPECT_EQ(data.records[0].id, "1");  // the 1-based array position
  EXPECT_EQ(data.records[0].line, 1u);
  EXPECT_EQ(data.records[0].question, "What do [A, B] and {x} mean in \"set\" notation?");
  EXPECT_EQ(data.records[1].id, "arr-2");
  EXPECT_EQ(data.records[2].id, "3");
  EXPECT_EQ(data.records[2].line, 3u);
  EXPECT_EQ(data.records[2].answer, "多饮、多食、多尿、体重减轻。");
  // The original objects are the array's elements as written.
  std::ifstream in(fixture("qa-array.json"));
  const json whole = json::parse(in);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(data.records[i].original, whole[i]) << i;
}

TEST(DatasetFormats, Alpaca) {
  for (const std::string format : {"alpaca", "auto"}) {
    const Dataset data = load_dataset(settings_for(fixture("alpaca.jsonl"), format));
    EXPECT_EQ(data.format, "alpaca");
    ASSERT_EQ(data.records.size(), 4u);
    EXPECT_EQ(data.records[0].question, "一名患者出现头痛、发热，可能是什么病？");  // empty input
    EXPECT_EQ(data.records[0].answer, "可能是感冒，也可能是其他感染。");
    EXPECT_EQ(data.records[0].id, "1");
    EXPECT_EQ(data.records[1].question, "Summarize the finding.\nAspirin lowered the risk of a second stroke.");
    EXPECT_EQ(data.records[1].answer, "Aspirin helps prevent recurrent stroke.");
    EXPECT_EQ(data.records[2].question, "What is the normal body temperature?");  // blank input
    EXPECT_EQ(data.records[3].question, "List two symptoms of flu.");              // no input
    EXPECT_EQ(data.records[3].original.at("output"), "Fever and muscle aches.");
  }
}

TEST(DatasetFormats, ShareGpt) {
  for (const std::string format : {"sharegpt", "auto"}) {
    const Dataset data = load_dataset(settings_for(fixture("sharegpt.json"), format));
    EXPECT_EQ(data.format, "sharegpt");
    ASSERT_EQ(data.records.size(), 3u);
    EXPECT_EQ(data.records[0].id, "conv-a");
    EXPECT_EQ(data.records[0].question, "What is hypertension?");  // the system turn is ignored
    EXPECT_EQ(data.records[0].answer, "Blood pressure that stays too high.");
    EXPECT_EQ(data.records[1].id, "2");  // role/content turns
    EXPECT_EQ(data.records[1].question, "Is a fever of 38 °C dangerous for an adult?");
    EXPECT_EQ(data.records[1].answer, "Usually not; see a doctor if it lasts.");
    // The first human turn, and the first gpt turn after it (not the greeting before it).
    EXPECT_EQ(data.records[2].id, "7");
    EXPECT_EQ(data.records[2].question, "什么是贫血？");
    EXPECT_EQ(data.records[2].answer, "血液中红细胞或血红蛋白不足。");
    EXPECT_EQ(data.records[2].original.at("conversations").size(), 6u);
  }
}

TEST_F(DatasetReader, AutoDetectionFromTheFirstGoodRecord) {
  const std::string alpaca = "{\"instruction\": \"i\", \"output\": \"o\", \"question\": \"q\", \"answer\": \"a\"}\n";
  const std::string sharegpt =
      "{\"instruction\": \"i\", \"output\": \"o\", \"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, "
      "{\"from\": \"gpt\", \"value\": \"A\"}]}\n";
  EXPECT_EQ(load_dataset(write(alpaca)).format, "alpaca");
  EXPECT_EQ(load_dataset(write(alpaca)).records[0].question, "i");
  EXPECT_EQ(load_dataset(write(sharegpt)).format, "sharegpt");
  EXPECT_EQ(load_dataset(write(sharegpt)).records[0].answer, "A");
  EXPECT_EQ(load_dataset(write("{\"instruction\": \"i\", \"question\": \"q\", \"answer\": \"a\"}\n")).format, "qa");
  // An explicit format wins over the fields.
  EXPECT_EQ(load_dataset(write(alpaca, "qa")).records[0].question, "q");
  // Bad lines before the first object do not decide; later records are read in the detected format.
  const Dataset data = load_dataset(write("not json\n[1]\n" + alpaca + kOk, "auto", "skip"));
  EXPECT_EQ(data.format, "alpaca");
  ASSERT_EQ(data.records.size(), 1u);
  ASSERT_EQ(data.bad.size(), 3u);
  EXPECT_EQ(data.bad[2].line, 4u);
  EXPECT_EQ(data.bad[2].reason, "missing instruction field \"instruction\" (instruction_field)");
  // Under error, a missing field says which format was detected and from where.
  EXPECT_EQ(error(alpaca + kOk), ":2: missing instruction field \"instruction\" (instruction_field) "
                                 "(format \"alpaca\" was detected from the fields of line 1)");
  // Configured field names take part in detection.
  DatasetSettings settings = write("{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, "
                                   "{\"role\": \"assistant\", \"content\": \"A\"}]}\n");
  settings.conversations_field = "messages";
  EXPECT_EQ(load_dataset(settings).format, "sharegpt");
}

TEST_F(DatasetReader, Ids) {
  const Dataset data = load_dataset(write(
      "{\"id\": \"a\", \"question\": \"q\", \"answer\": \"a\"}\n"
      "{\"id\": -7, \"question\": \"q\", \"answer\": \"a\"}\n"
      "{\"id\": 18446744073709551615, \"question\": \"q\", \"answer\": \"a\"}\n"
      "{\"id\": null, \"question\": \"q\", \"answer\": \"a\"}\n"
      "\n" + kOk));
  ASSERT_EQ(data.records.size(), 5u);
  EXPECT_EQ(data.records[0].id, "a");
  EXPECT_EQ(data.records[1].id, "-7");
  EXPECT_EQ(data.records[2].id, "18446744073709551615");
  EXPECT_EQ(data.records[3].id, "4");
  EXPECT_EQ(data.records[4].id, "6");

  // A configured id field; none at all.
  DatasetSettings settings = write("{\"uid\": 5, \"id\": \"x\", \"question\": \"q\", \"answer\": \"a\"}\n");
  settings.id_field = "uid";
  EXPECT_EQ(load_dataset(settings).records[0].id, "5");
  settings.id_field = "";
  EXPECT_EQ(load_dataset(settings).records[0].id, "1");

  EXPECT_EQ(error("{\"id\": 1.5, \"question\": \"q\", \"answer\": \"a\"}\n"),
            ":1: id field \"id\" must be a string or an integer, got a number");
  EXPECT_EQ(error("{\"id\": true, \"question\": \"q\", \"answer\": \"a\"}\n"),
            ":1: id field \"id\" must be a string or an integer, got a boolean");
  EXPECT_EQ(error("{\"id\": \"\", \"question\": \"q\", \"answer\": \"a\"}\n"), ":1: id field \"id\" is empty");
  EXPECT_EQ(error("{\"id\": \"x\", \"question\": \"q\", \"answer\": \"a\"}\n" + kOk +
                  "{\"id\": \"x\", \"question\": \"q2\", \"answer\": \"a2\"}\n"),
            ":3: duplicate id \"x\" (also line 1)");
  // An explicit id may collide with another record's line number; "7" and 7 are the same id.
  EXPECT_EQ(error(kOk + "{\"id\": 1, \"question\": \"q\", \"answer\": \"a\"}\n"), ":2: duplicate id \"1\" (also line 1)");
  EXPECT_EQ(error("{\"id\": \"7\", \"question\": \"q\", \"answer\": \"a\"}\n{\"id\": 7, \"question\": \"q\", \"answer\": \"a\"}\n"),
            ":2: duplicate id \"7\" (also line 1)");
  // In an array: positions, and duplicates name the element.
  EXPECT_EQ(error("[" + kOk + ", {\"id\": \"1\", \"question\": \"q\", \"answer\": \"a\"}]", "auto", "a.json"),
            ":2: array element 2: duplicate id \"1\" (also array element 1)");

  // Under skip the first occurrence is kept.
  const Dataset kept = load_dataset(write("{\"id\": \"x\", \"question\": \"first\", \"answer\": \"a\"}\n"
                                          "{\"id\": \"x\", \"question\": \"second\", \"answer\": \"a\"}\n"
                                          "{\"id\": \"y\", \"question\": \"third\", \"answer\": \"a\"}\n"
                                          "{\"id\": \"x\", \"question\": \"fourth\", \"answer\": \"a\"}\n",
                                          "qa", "skip"));
  ASSERT_EQ(kept.records.size(), 2u);
  EXPECT_EQ(kept.records[0].question, "first");
  EXPECT_EQ(kept.records[1].question, "third");
  ASSERT_EQ(kept.bad.size(), 2u);
  EXPECT_EQ(kept.bad[0].line, 2u);
  EXPECT_EQ(kept.bad[0].reason, "duplicate id \"x\" (also line 1)");
  EXPECT_EQ(kept.bad[1].line, 4u);
}

// Each line of bad-records.jsonl, and why it is bad (the good lines are 1, 10 and 12).
struct ExpectedBad {
  std::size_t line;
  std::string reason;      // the whole reason, or its start when `prefix`
  bool prefix = false;
};

const std::vector<ExpectedBad>& catalogue() {
  static const std::vector<ExpectedBad> bad = {
      {2, "invalid JSON (column 30: syntax error while parsing value", true},
      {3, "invalid UTF-8 (byte 0xE9 at column 18, byte offset 83 in the file)"},
      {4, "expected a JSON object, got an array"},
      {5, "missing answer field \"answer\" (answer_field)"},
      {6, "question field \"question\" must be a string, got a number"},
      {7, "question field \"question\" is empty"},
      {8, "answer field \"answer\" is empty"},
      {9, "id field \"id\" must be a string or an integer, got a number"},
      {11, "duplicate id \"dup\" (also line 10)"},
      {13, "invalid JSON (column ", true},
  };
  return bad;
}

void expect_reason(const std::string& actual, const ExpectedBad& expected) {
  if (expected.prefix) {
    EXPECT_EQ(actual.rfind(expected.reason, 0), 0u) << "line " << expected.line << ": " << actual;
  } else {
    EXPECT_EQ(actual, expected.reason) << "line " << expected.line;
  }
}

TEST(DatasetBadRecords, CatalogueUnderSkip) {
  const Dataset data = load_dataset(settings_for(fixture("bad-records.jsonl"), "qa", "skip"));
  ASSERT_EQ(data.records.size(), 3u);
  EXPECT_EQ(data.records[0].line, 1u);
  EXPECT_EQ(data.records[1].id, "dup");
  EXPECT_EQ(data.records[1].line, 10u);
  EXPECT_EQ(data.records[2].line, 12u);
  ASSERT_EQ(data.bad.size(), catalogue().size());
  for (std::size_t i = 0; i < data.bad.size(); ++i) {
    EXPECT_EQ(data.bad[i].line, catalogue()[i].line);
    expect_reason(data.bad[i].reason, catalogue()[i]);
  }
}

// Under error, each bad line is reported as "<file>:<line>: <reason>" when it is the first one.
TEST_F(DatasetReader, CatalogueUnderError) {
  std::ifstream in(fixture("bad-records.jsonl"), std::ios::binary);
  std::vector<std::string> lines;
  for (std::string text; std::getline(in, text);) lines.push_back(text);
  ASSERT_EQ(lines.size(), 13u);
  // The whole file stops at line 2.
  const std::string whole = error_of(settings_for(fixture("bad-records.jsonl"), "qa"));
  EXPECT_EQ(whole.rfind(fixture("bad-records.jsonl").string() + ":2: invalid JSON (column 30: ", 0), 0u) << whole;
  for (const ExpectedBad& bad : catalogue()) {
    // Every line up to this one, with the earlier bad ones blanked (line numbers stay).
    std::string text;
    for (std::size_t line = 1; line <= bad.line; ++line) {
      const bool earlier_bad = std::any_of(catalogue().begin(), catalogue().end(), [&](const ExpectedBad& b) {
        return b.line == line && line != bad.line;
      });
      text += (earlier_bad ? std::string() : lines[line - 1]) + "\n";
    }
    const std::string message = error(text, "qa");
    std::string where = ":";
    where += std::to_string(bad.line);
    where += ": ";
    ASSERT_EQ(message.rfind(where, 0), 0u) << message;
    std::string reason = message.substr(where.size());
    if (bad.line == 3) {  // invalid UTF-8: the message says the file must be UTF-8
      EXPECT_NE(reason.find("; the data file is not UTF-8 text"), std::string::npos) << reason;
      reason = reason.substr(0, reason.find(';'));
    }
    expect_reason(reason, bad.line == 3 ? ExpectedBad{3, "invalid UTF-8 (byte 0xE9 at column 18, byte offset ", true}
                                        : bad);
  }
}

TEST_F(DatasetReader, InvalidJsonAndUtf8) {
  EXPECT_EQ(error(kOk + "{\"question\": \"q\", \"answer\": }\n").rfind(":2: invalid JSON (column 29: syntax error while parsing value - unexpected '}'", 0), 0u);
  EXPECT_EQ(error(kOk + kOk + "{\"question\": \"q\", \"answer\": \"a\"} x\n").rfind(":3: invalid JSON (column ", 0), 0u);
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": \"a\"}{}\n").rfind(":1: invalid JSON (", 0), 0u);
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": \"a\", \"score\": 1e999}\n"),
            ":1: invalid JSON (number overflow parsing '1e999')");
  EXPECT_EQ(error("\"text\"\n"), ":1: expected a JSON object, got a string");
  EXPECT_EQ(error("null\n"), ":1: expected a JSON object, got null");
  // Invalid UTF-8: a stray byte, a cut sequence, a surrogate, an overlong form; with the byte offset.
  const std::string hint = "; the data file is not UTF-8 text";
  EXPECT_EQ(error(kOk + "{\"question\": \"q\xff\", \"answer\": \"a\"}\n").rfind(
                ":2: invalid UTF-8 (byte 0xFF at column 16, byte offset 48 in the file)" + hint, 0),
            0u);
  EXPECT_EQ(error("{\"question\": \"\xC3\", \"answer\": \"a\"}\n").rfind(
                ":1: invalid UTF-8 (byte 0xC3 at column 15, byte offset 14 in the file)", 0),
            0u);
  EXPECT_EQ(error("{\"question\": \"\xED\xA0\x80\", \"answer\": \"a\"}\n").rfind(
                ":1: invalid UTF-8 (byte 0xED at column 15, ", 0),
            0u);
  EXPECT_EQ(error("{\"question\": \"\xC0\xAF\", \"answer\": \"a\"}\n").rfind(":1: invalid UTF-8 (byte 0xC0 at column 15, ", 0),
            0u);
  // An escaped lone surrogate is invalid JSON.
  EXPECT_EQ(error("{\"question\": \"\\ud800\", \"answer\": \"a\"}\n").rfind(":1: invalid JSON (", 0), 0u);
  // A byte-order mark is not counted in the column.
  EXPECT_EQ(error("\xEF\xBB\xBF{\"question\": \"\xff\", \"answer\": \"a\"}\n").rfind(
                ":1: invalid UTF-8 (byte 0xFF at column 15, byte offset 17 in the file)", 0),
            0u);
}

TEST_F(DatasetReader, MissingAndWrongFields) {
  EXPECT_EQ(error(kOk + "{\"answer\": \"a\"}\n", "qa"), ":2: missing question field \"question\" (question_field)");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": null}\n"), ":1: answer field \"answer\" must be a string, got null");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": [\"a\"]}\n"),
            ":1: answer field \"answer\" must be a string, got an array");
  EXPECT_EQ(error("{\"question\": {}, \"answer\": \"a\"}\n"),
            ":1: question field \"question\" must be a string, got an object");
  EXPECT_EQ(error("{\"question\": \"q\", \"answer\": \"\"}\n"), ":1: answer field \"answer\" is empty");
  // Configured names appear in the messages.
  DatasetSettings settings = write("{\"prompt\": \"p\"}\n", "qa");
  settings.question_field = "prompt";
  settings.answer_field = "response";
  EXPECT_EQ(error_of(settings), settings.path + ":1: missing answer field \"response\" (answer_field)");

  // Alpaca.
  EXPECT_EQ(error("{\"instruction\": \"i\", \"input\": 3, \"output\": \"o\"}\n"),
            ":1: input field \"input\" must be a string, got a number");
  EXPECT_EQ(error("{\"instruction\": \" \", \"input\": \"x\", \"output\": \"o\"}\n"),
            ":1: instruction field \"instruction\" is empty");
  EXPECT_EQ(error("{\"instruction\": \"i\", \"output\": \"\\n\"}\n"), ":1: output field \"output\" is empty");
  EXPECT_EQ(error("{\"instruction\": \"i\", \"input\": \"x\"}\n", "alpaca"),
            ":1: missing output field \"output\" (output_field)");
  EXPECT_EQ(load_dataset(write("{\"instruction\": \"i\", \"input\": null, \"output\": \"o\"}\n")).records[0].question, "i");

  // ShareGPT.
  const auto conv = [](const std::string& turns) { return "{\"conversations\": [" + turns + "]}\n"; };
  EXPECT_EQ(error("{\"question\": \"q\"}\n", "sharegpt"), ":1: missing conversations field \"conversations\" (conversations_field)");
  EXPECT_EQ(error("{\"conversations\": \"hi\"}\n"), ":1: conversations field \"conversations\" must be an array, got a string");
  EXPECT_EQ(error(conv("")), ":1: no human/user turn in \"conversations\"");
  EXPECT_EQ(error(conv("{\"from\": \"system\", \"value\": \"s\"}, {\"from\": \"gpt\", \"value\": \"a\"}")),
            ":1: no human/user turn in \"conversations\"");
  EXPECT_EQ(error(conv("{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"human\", \"value\": \"q2\"}")),
            ":1: no gpt/assistant turn after the question (conversations[0])");
  EXPECT_EQ(error(conv("\"hello\"")), ":1: conversations[0]: expected an object, got a string");
  EXPECT_EQ(error(conv("{\"value\": \"q\"}")), ":1: conversations[0]: missing \"from\" (or \"role\")");
  EXPECT_EQ(error(conv("{\"role\": 1, \"content\": \"q\"}")), ":1: conversations[0]: \"role\" must be a string, got a number");
  EXPECT_EQ(error(conv("{\"from\": \"bot\", \"value\": \"q\"}")),
            ":1: conversations[0]: unknown role \"bot\" (expected human/user, gpt/assistant or system)");
  EXPECT_EQ(error(conv("{\"from\": \"human\"}")), ":1: conversations[0]: missing \"value\" (or \"content\")");
  EXPECT_EQ(error(conv("{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}")),
            ":1: conversations[0]: \"content\" must be a string, got an array");
  EXPECT_EQ(error(conv("{\"from\": \"human\", \"value\": \"  \"}, {\"from\": \"gpt\", \"value\": \"a\"}")),
            ":1: conversations[0]: empty question (\"value\" is blank)");
  EXPECT_EQ(error(conv("{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"\"}")),
            ":1: conversations[1]: empty answer (\"value\" is blank)");
  // Turns after the answer are not looked at.
  EXPECT_EQ(load_dataset(write(conv("{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}, 5")))
                .records[0].answer, "a");
}

TEST_F(DatasetReader, ArrayElements) {
  // Each element's message gives the line it starts on and its position in the array.
  const std::string array = "[\n  " + kOk + ",\n  {\"question\": \"q\",\n   \"answer\": 5},\n  {\"question\": \"q\", \"answer\": }\n]\n";
  EXPECT_EQ(error(array, "auto", "a.json"), ":4: array element 2: answer field \"answer\" must be a string, got a number");
  const Dataset data = load_dataset(write(array, "auto", "skip", "a.json"));
  ASSERT_EQ(data.records.size(), 1u);
  ASSERT_EQ(data.bad.size(), 2u);
  EXPECT_EQ(data.bad[0].line, 2u);
  EXPECT_EQ(data.bad[1].line, 3u);
  EXPECT_EQ(data.bad[1].reason.rfind("invalid JSON (line 6, column 31: syntax error", 0), 0u) << data.bad[1].reason;
  // Not objects, empty elements (a trailing comma).
  EXPECT_EQ(error("[1, 2]\n"), ":1: array element 1: expected a JSON object, got a number");
  EXPECT_EQ(error("[" + kOk + ",]"), ":2: array element 2: invalid JSON (an empty array element)");
  // A byte-order mark and white space before the array; CRLF.
  EXPECT_EQ(load_dataset(write("\xEF\xBB\xBF \r\n[" + kOk + "\r\n]\r\n")).records.size(), 1u);
  // Damage to the array itself is an error even under skip.
  for (const std::string policy : {"error", "skip"}) {
    EXPECT_EQ(error_of(write("[" + kOk + ", {\"question\": \"q\", \"answer\": \"a\"}", "auto", policy)),
              (dir_ / "data.jsonl").string() +
                  ":2: the JSON array is not closed: the file ends inside array element 2 (an unterminated string, "
                  "or a missing ']' or '}')");
    EXPECT_EQ(error_of(write("[" + kOk + ", {\"question\": \"q, \"answer\": \"a\"}]\n", "auto", policy)).rfind(
                  (dir_ / "data.jsonl").string() + ":2: the JSON array is not closed", 0),
              0u);
    EXPECT_EQ(error_of(write("[" + kOk + "]\n[" + kOk + "]\n", "auto", policy)),
              (dir_ / "data.jsonl").string() + ":3: unexpected text after the end of the JSON array");
    // Damage in a file that is not UTF-8 is put down to the encoding.
    EXPECT_EQ(error_of(write("[" + kOk + ", {\"question\": \"\xB8\\\"}]\n", "auto", policy)),
              (dir_ / "data.jsonl").string() + ":2: invalid UTF-8 (byte 0xB8 at column 17, byte offset 50 in the file)"
                                               "; the data file is not UTF-8 text (convert one in another encoding, "
                                               "such as GB18030/GBK or Latin-1, to UTF-8, e.g. with iconv -f GB18030 -t UTF-8)");
  }
}

// nlohmann keeps the last of two equal keys without a word; the reader refuses the record instead, naming the key
// (and, for a nested object, the key it is under), in JSONL and in JSON arrays, under error and skip.
TEST_F(DatasetReader, DuplicateKeysInARecord) {
  const std::string twice = "{\"question\":\"a\",\"question\":\"b\",\"answer\":\"c\"}\n";
  EXPECT_EQ(error(kOk + twice), ":2: duplicate key \"question\" (a key may appear once in a record; which of its "
                                "values is meant is unknown)");
  EXPECT_EQ(error("[\n" + kOk + ",\n" + twice + "]\n", "auto", "a.json"),
            ":4: array element 2: duplicate key \"question\" (a key may appear once in a record; which of its values "
            "is meant is unknown)");
  const std::vector<BadRecord> bad = skipped(twice + kOk);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0].line, 1u);
  EXPECT_EQ(bad[0].reason.rfind("duplicate key \"question\"", 0), 0u) << bad[0].reason;
  // Nested objects: a turn of a conversation with two "value"s; a key repeated in two different objects is fine.
  const std::string turns =
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, "
      "{\"from\": \"gpt\", \"value\": \"a\", \"value\": \"b\"}]}\n";
  EXPECT_EQ(error(turns), ":1: duplicate key \"value\" in an object inside \"conversations\" (a key may appear once "
                          "in an object)");
  const std::string fine =
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}], "
      "\"meta\": {\"from\": 1, \"x\": {\"from\": 2}}, \"from\": 3}\n";
  EXPECT_EQ(load_dataset(write(fine)).records.size(), 1u);
  // Keys that differ only in escapes are the same key.
  EXPECT_EQ(error("{\"question\":\"a\",\"answer\":\"c\",\"q\\u0075estion\":\"b\"}\n").rfind(
                ":1: duplicate key \"question\"", 0),
            0u);
}

// A symlink loop where the data file should be is said to be that, not "does not exist".
TEST_F(DatasetReader, SymlinkLoop) {
  fs::create_symlink(dir_ / "data.jsonl", dir_ / "data.jsonl");
  const DatasetSettings settings = settings_for(dir_ / "data.jsonl");
  EXPECT_EQ(error_of(settings), settings.path + ": a symlink loop (too many levels of symbolic links) where the data "
                                                "file was expected");
}

TEST_F(DatasetReader, Gb18030File) {
  const fs::path path = fixture("gb18030.jsonl");
  const std::string message = error_of(settings_for(path));
  EXPECT_EQ(message.rfind(path.string() + ":1: invalid UTF-8 (byte 0xB8 at column 18, byte offset 17 in the file); "
                                           "the data file is not UTF-8 text",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("GB18030"), std::string::npos) << message;
  // Under skip every line is bad, which leaves no records.
  const std::string skipped = error_of(settings_for(path, "auto", "skip"));
  EXPECT_EQ(skipped.rfind(path.string() + ": no usable records: all 12 were bad (first: line 1: invalid UTF-8 (byte 0xB8 "
                                          "at column 18, byte offset 17 in the file)); the data file is not UTF-8 text",
                          0),
            0u)
      << skipped;
  // The same file as a JSON array (its structure may be garbled by the encoding): still said to be not UTF-8.
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string array = "[";
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t end = text.find('\n', pos);
    array += (pos ? ",\n" : "") + text.substr(pos, end - pos);
    pos = end + 1;
  }
  array += "]\n";
  for (const std::string policy : {"error", "skip"}) {
    const std::string array_message = error_of(write(array, "auto", policy, "gb.json"));
    EXPECT_NE(array_message.find("invalid UTF-8 (byte 0xB8 at column 19, byte offset 18 in the file)"), std::string::npos)
        << array_message;
    EXPECT_NE(array_message.find("the data file is not UTF-8 text"), std::string::npos) << array_message;
  }
}

TEST_F(DatasetReader, EmptyAndAllBad) {
  for (const std::string text : {"", "\n  \n\r\n", "\xEF\xBB\xBF", "[]", " [ \n ]\n"})
    EXPECT_EQ(error(text), ": the data file holds no records") << text;
  EXPECT_EQ(error_of(write("{}\n", "qa", "skip")),
            (dir_ / "data.jsonl").string() +
                ": no usable records: all 1 was bad (first: line 1: missing question field \"question\" (question_field))");
  EXPECT_EQ(error_of(write("[1, {}]", "qa", "skip")),
            (dir_ / "data.jsonl").string() +
                ": no usable records: all 2 were bad (first: array element 1: expected a JSON object, got a number)");
}

TEST_F(DatasetReader, MissingFile) {
  const DatasetSettings settings = settings_for(dir_ / "nope.jsonl");
  EXPECT_EQ(error_of(settings), settings.path + ": the data file does not exist");
  DatasetSettings relative = settings_for("no/such/file.jsonl");
  EXPECT_EQ(error_of(relative), "no/such/file.jsonl: the data file does not exist (a relative path is relative to the "
                                "working directory, " + fs::current_path().string() + ")");
  EXPECT_EQ(error_of(settings_for(dir_)), dir_.string() + ": the data file is not a regular file");
  EXPECT_EQ(error_of(settings_for("")), "the data set path is empty");
}

TEST_F(DatasetReader, MaxRecords) {
  const std::string text = "oops\n" + kOk + kOk + "{\"question\": \"q\"}\n" + kOk + "bad\n";
  DatasetSettings settings = write(text, "qa", "skip");
  settings.max_records = 2;
  Dataset data = load_dataset(settings);
  ASSERT_EQ(data.records.size(), 2u);
  EXPECT_EQ(data.records[1].line, 3u);
  ASSERT_EQ(data.bad.size(), 1u);  // only what was read before the second good record
  settings.max_records = 3;
  data = load_dataset(settings);
  ASSERT_EQ(data.records.size(), 3u);
  EXPECT_EQ(data.bad.size(), 2u);
  settings.max_records = 100;
  EXPECT_EQ(load_dataset(settings).bad.size(), 3u);
  // Reading stops at the limit: a bad record after it is not an error, nor damage to an array.
  settings = write(kOk + kOk + "bad\n", "qa");
  settings.max_records = 2;
  EXPECT_EQ(load_dataset(settings).records.size(), 2u);
  settings = write("[" + kOk + ", {\"question\": ", "qa", "error", "a.json");
  settings.max_records = 1;
  EXPECT_EQ(load_dataset(settings).records.size(), 1u);
}

TEST_F(DatasetReader, Settings) {
  DatasetSettings settings = write(kOk);
  settings.format = "csv";
  EXPECT_EQ(error_of(settings), "unknown data set format \"csv\" (expected auto, qa, alpaca or sharegpt)");
  settings.format = "qa";
  settings.on_bad_record = "ignore";
  EXPECT_EQ(error_of(settings), "unknown on_bad_record \"ignore\" (expected error or skip)");
  settings.on_bad_record = "skip";
  settings.max_records = 0;
  EXPECT_EQ(error_of(settings), "max_records must be positive, or -1 for all records, got 0");
  settings.max_records = -1;
  settings.answer_field = "";
  EXPECT_EQ(error_of(settings), "answer_field must not be empty");
}

// The real shared sets: counts, formats, duplicates, and speed.
class DatasetShared : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(testing::shared_data_dir() / "datasets"))
      GTEST_SKIP() << "no shared data at " << testing::shared_data_dir();
  }

  static fs::path path(const std::string& name) { return testing::shared_data_dir() / "datasets" / name; }

  // Reads, timing it; the files are small enough that this takes about a second at most.
  static Dataset timed_load(const DatasetSettings& settings) {
    const auto start = std::chrono::steady_clock::now();
    Dataset data = load_dataset(settings);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ::testing::Test::RecordProperty("seconds", std::to_string(seconds));
    std::printf("  %s: %zu records in %.3f s\n", fs::path(settings.path).filename().c_str(), data.records.size(),
                seconds);
#ifdef NDEBUG
    // Not a speed measurement (perf/ has those): a guard against a pathological (quadratic) reader, with
    // ten times the usual time of a loaded 2-core machine, so a busy machine does not fail it.
    EXPECT_LT(seconds, 10.0);
#endif
    return data;
  }
};

TEST_F(DatasetShared, HuatuoAlpaca) {
  const Dataset data = timed_load(settings_for(path("huatuo-med-zh.jsonl")));
  EXPECT_EQ(data.format, "alpaca");
  ASSERT_EQ(data.records.size(), 8658u);
  EXPECT_TRUE(data.bad.empty());
  EXPECT_EQ(data.records.front().id, "1");
  EXPECT_EQ(data.records.back().id, "8658");
  EXPECT_EQ(data.records.front().question.rfind("一名年龄在70岁的女性", 0), 0u);
  EXPECT_EQ(data.records.front().question.find('\n'), std::string::npos);  // all inputs are empty
}

TEST_F(DatasetShared, PubMedQa) {
  const Dataset data = timed_load(settings_for(path("pubmedqa-labelled-en.jsonl")));
  EXPECT_EQ(data.format, "qa");
  ASSERT_EQ(data.records.size(), 1000u);
  EXPECT_EQ(data.records[0].id, "21645374");
  for (const DatasetRecord& record : data.records) {
    ASSERT_TRUE(record.answer == "yes" || record.answer == "no" || record.answer == "maybe") << record.answer;
    ASSERT_TRUE(record.original.contains("context"));
  }
}

TEST_F(DatasetShared, MedQuadRepeatsIds) {
  const DatasetSettings settings = settings_for(path("medquad-en.jsonl"));
  EXPECT_EQ(error_of(settings), settings.path + ":2: duplicate id \"0000001-1\" (also line 1)");
  // Python's json module counts 12133 distinct ids among the 16407 records: 4274 repeats when the first
  // occurrence is kept.
  const Dataset data = timed_load(settings_for(path("medquad-en.jsonl"), "auto", "skip"));
  EXPECT_EQ(data.format, "qa");
  EXPECT_EQ(data.records.size(), 12133u);
  ASSERT_EQ(data.bad.size(), 4274u);
  for (const BadRecord& bad : data.bad) ASSERT_EQ(bad.reason.rfind("duplicate id \"", 0), 0u) << bad.reason;
  EXPECT_EQ(data.records.size() + data.bad.size(), 16407u);
  // With every record kept under its line number instead.
  DatasetSettings by_line = settings_for(path("medquad-en.jsonl"));
  by_line.id_field = "";
  EXPECT_EQ(load_dataset(by_line).records.size(), 16407u);
}

}  // namespace
}  // namespace slearn
