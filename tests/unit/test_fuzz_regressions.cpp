// Regressions for what the fuzz targets (fuzz/, docs/fuzzing.md) and their review found in the parsers of
// untrusted input, one test per bug, named after it. Crashing inputs are in tests/fixtures/fuzz-regressions/
// or, when large but regular (deep nesting), built here.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <sstream>
#include <string>
#include <thread>

#include "slearn/dataset.hpp"
#include "slearn/error.hpp"
#include "slearn/run_config.hpp"
#include "slearn/safetensors.hpp"
#include "slearn/train_config.hpp"
#include "test_paths.hpp"

namespace slearn {
namespace {

namespace fs = std::filesystem;

fs::path regression(const std::string& name) { return testing::fixtures_dir() / "fuzz-regressions" / name; }

using slearn::testing::read_file;

// A fresh directory for the test's files, removed at the end.
class FuzzRegressions : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() / ("slearn_fuzz_regressions_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  fs::path write(const std::string& name, const std::string& bytes) const {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  fs::path dir_;
};

// The message of the InputError `body` throws; a test failure when it throws none. The bug these guard against
// was an endless loop that allocates: after `limit` the process ends rather than run out of memory.
std::string input_error_within(const std::function<void()>& body, std::chrono::seconds limit = std::chrono::seconds(30)) {
  auto result = std::make_shared<std::promise<std::string>>();
  std::future<std::string> message = result->get_future();
  std::thread([body, result] {
    try {
      body();
      result->set_value("(no error)");
    } catch (const InputError& e) {
      result->set_value(e.what());
    } catch (const std::exception& e) {
      result->set_value(std::string("(not an InputError) ") + e.what());
    }
  }).detach();
  if (message.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "FAILED: no answer within %lld s: the parser hangs\n", static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::_Exit(1);
  }
  return message.get();
}

// fuzz_config: a YAML config that is only "," never returned (yaml-cpp 0.7's LoadAll loops forever, allocating,
// on a ',' outside brackets: jbeder/yaml-cpp#1040). Now it is invalid YAML, with the line and column.
TEST_F(FuzzRegressions, YamlConfigStrayCommaHangs) {
  const std::string comma = read_file(regression("config-stray-comma.yaml"));
  ASSERT_EQ(comma, ",");
  EXPECT_EQ(input_error_within([&] { parse_run_config(comma, "run.yaml"); }),
            "run.yaml: invalid YAML (line 1, column 1): unexpected ',' (a ',' belongs inside [...] or {...})");
  EXPECT_EQ(input_error_within([&] { parse_train_config(comma, "train.yaml"); }),
            "train.yaml: invalid YAML (line 1, column 1): unexpected ',' (a ',' belongs inside [...] or {...})");
  // After an anchor or a tag, and in a later document.
  EXPECT_NE(input_error_within([&] { parse_run_config("&x ,", "run.yaml"); }).find("invalid YAML (line 1, column 4)"),
            std::string::npos);
  EXPECT_NE(input_error_within([&] { parse_run_config("!!str ,", "run.yaml"); }).find("invalid YAML"),
            std::string::npos);
  const fs::path second = regression("config-stray-comma-second-document.yaml");
  EXPECT_NE(input_error_within([&] { load_run_config(second); }).find("invalid YAML (line 5, column 5)"),
            std::string::npos);
  // Files with several documents are still refused as such, and one document still loads.
  EXPECT_NE(input_error_within([&] { parse_run_config("model: a\n---\nmodel: b\n", "run.yaml"); })
                .find("holds 2 YAML documents"),
            std::string::npos);
  const RunConfig config =
      parse_run_config("---\nmodel: m\nrun_dir: r\ndata:\n  path: d.jsonl\n...\n", "run.yaml");
  EXPECT_EQ(config.model, "m");
}

// fuzz_config: "path: x \xff\r" loaded, but yaml-cpp wrote the invalid UTF-8 back unquoted and the carriage
// return was lost when the effective configuration was read again. Strings must now be valid UTF-8.
TEST_F(FuzzRegressions, YamlConfigInvalidUtf8IsNotWrittenBackFaithfully) {
  const std::string input = read_file(regression("config-invalid-utf8-carriage-return.bin"));
  ASSERT_GT(input.size(), 1u);
  const std::string yaml = input.substr(1, input.find('\0', 1) == std::string::npos ? std::string::npos
                                                                                       : input.find('\0', 1) - 1);
  const std::string error = input_error_within([&] { parse_run_config(yaml, "run.yaml"); });
  EXPECT_NE(error.find("must be valid UTF-8 text"), std::string::npos) << error;
  const std::string stray_byte = std::string("model: m\nrun_dir: r\ndata:\n  path: d") + '\xff' + ".jsonl\n";
  EXPECT_NE(input_error_within([&] { parse_run_config(stray_byte, "run.yaml"); })
                .find("key \"data.path\" (line 4) must be valid UTF-8 text"),
            std::string::npos)
      << input_error_within([&] { parse_run_config(stray_byte, "run.yaml"); });
  // Valid UTF-8 with a carriage return (quoted) still round-trips.
  const RunConfig config = parse_run_config("model: m\nrun_dir: r\ndata:\n  path: \"d\\r.jsonl\"\n", "run.yaml");
  EXPECT_EQ(config.data.path, "d\r.jsonl");
  EXPECT_EQ(parse_run_config(config.source_text, "run.yaml").source_text, config.source_text);
}

// Review of fuzz_safetensors: a header with a value nested ~100k deep in "shape" crashed the process (stack
// overflow in json::dump while writing the error message). Headers nesting deeper than serde_json's limit (128)
// are now an InputError, as the reference implementation refuses them.
TEST_F(FuzzRegressions, SafetensorsDeeplyNestedHeaderOverflowsStack) {
  const auto file_with_header = [&](const std::string& name, const std::string& header,
                                    const std::string& data = "") {
    std::string bytes(8, '\0');
    const std::uint64_t length = header.size();
    std::memcpy(bytes.data(), &length, 8);
    return write(name, bytes + header + data);
  };
  const std::size_t depth = 200000;
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  for (const std::string& header :
       {R"({"a":{"dtype":"F32","shape":)" + nested + R"(,"data_offsets":[0,0]}})",
        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":)" + nested + "}}", R"({"a":)" + nested + "}"}) {
    const fs::path path = file_with_header("deep.safetensors", header);
    const std::string message = input_error_within([&] { SafetensorsFile::open(path); });
    EXPECT_NE(message.find("header nests JSON values deeper than 128 levels"), std::string::npos) << message;
  }
  // Real headers nest three levels; they still load.
  const fs::path ok = file_with_header(
      "ok.safetensors", R"({"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  EXPECT_EQ(input_error_within([&] { SafetensorsFile::open(ok); }), "(no error)");
}

// Review of fuzz_dataset: a record with an extra field nested ~200k deep was accepted, and writing it back
// (json::dump, as the pipeline writes the records judged incorrect) overflowed the stack. A record nesting
// arrays and objects deeper than 512 levels is now a bad record.
TEST_F(FuzzRegressions, DatasetDeeplyNestedRecordOverflowsStackWhenWritten) {
  const auto nested = [](std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  const std::string good = R"({"question": "q1", "answer": "a1"})";
  const std::string deep = R"({"question": "q2", "answer": "a2", "x": )" + nested(200000) + "}";
  const std::string at_limit = R"({"question": "q3", "answer": "a3", "x": )" + nested(511) + "}";
  const std::string brackets_in_text = R"({"question": ")" + std::string(5000, '[') + R"(", "answer": "a4"})";

  DatasetSettings settings;
  settings.path = write("deep.jsonl", good + "\n" + deep + "\n").string();
  EXPECT_EQ(input_error_within([&] { load_dataset(settings); }),
            settings.path + ":2: JSON arrays and objects nested deeper than 512 levels");
  settings.path = write("deep.json", "[" + good + ",\n" + deep + "]").string();
  EXPECT_EQ(input_error_within([&] { load_dataset(settings); }),
            settings.path + ":2: array element 2: JSON arrays and objects nested deeper than 512 levels");

  settings.on_bad_record = "skip";
  settings.path = write("mixed.jsonl", good + "\n" + deep + "\n" + at_limit + "\n" + brackets_in_text + "\n").string();
  const Dataset dataset = load_dataset(settings);
  ASSERT_EQ(dataset.records.size(), 3u);
  ASSERT_EQ(dataset.bad.size(), 1u);
  EXPECT_EQ(dataset.bad[0].line, 2u);
  for (const DatasetRecord& record : dataset.records) EXPECT_FALSE(record.original.dump().empty());
}

}  // namespace
}  // namespace slearn
