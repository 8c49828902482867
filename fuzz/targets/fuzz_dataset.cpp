// Fuzz target: the data set reader (load_dataset) on a file holding the input after its first byte.
//
// Byte 0 picks the settings: bits 0-1 the format (auto, qa, alpaca, sharegpt), bit 2 on_bad_record (error or
// skip), bit 3 max_records (-1 or 2), bit 4 an empty id_field (records named by their number).
// What load_dataset returns must hold what it promises: at least one record, the fields of the format, no
// id twice, and bad records only when skipping; each record's JSON must dump again (it is written back).
#include <set>

#include "fuzz_common.hpp"
#include "slearn/dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static slearn_fuzz::MemoryFile file;
  static const char* const kFormats[] = {"auto", "qa", "alpaca", "sharegpt"};
  file.write(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));

  slearn::DatasetSettings settings;
  settings.path = file.path();
  settings.format = kFormats[data[0] & 3];
  settings.on_bad_record = (data[0] & 4) ? "skip" : "error";
  settings.max_records = (data[0] & 8) ? 2 : -1;
  if (data[0] & 16) settings.id_field.clear();

  slearn_fuzz::expect_slearn_errors_only([&] {
    const slearn::Dataset dataset = slearn::load_dataset(settings);
    if (dataset.records.empty()) slearn_fuzz::fail("load_dataset returned no records without an error");
    if (settings.max_records > 0 && dataset.records.size() > static_cast<std::size_t>(settings.max_records))
      slearn_fuzz::fail("more records than max_records");
    if (settings.on_bad_record == "error" && !dataset.bad.empty()) slearn_fuzz::fail("bad records under error");
    if (settings.format != "auto" && dataset.format != settings.format) slearn_fuzz::fail("format changed");
    std::set<std::string> ids;
    for (const slearn::DatasetRecord& record : dataset.records) {
      if (record.question.empty() || record.answer.empty()) slearn_fuzz::fail("a record has an empty field");
      if (record.id.empty()) slearn_fuzz::fail("a record has an empty id");
      if (!ids.insert(record.id).second) slearn_fuzz::fail("id \"" + record.id + "\" twice");
      if (!record.original.is_object()) slearn_fuzz::fail("a record's JSON is not an object");
      (void)record.original.dump();
    }
    for (const slearn::BadRecord& bad : dataset.bad)
      if (bad.reason.empty()) slearn_fuzz::fail("a bad record without a reason");
  });
  return 0;
}
