// safetensors: writer/reader round trip, every malformed-file case the reader must refuse, and WeightStore
// over single files and sharded checkpoints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "slearn/safetensors.hpp"
#include "test_helpers.hpp"

namespace {

using namespace slearn;
namespace fs = std::filesystem;

using slearn::testing::TempDir;

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string le64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A raw safetensors file: the length of `header`, the header, then `data`.
void write_raw(const fs::path& path, const std::string& header, const std::string& data) {
  write_bytes(path, le64(header.size()) + header + data);
}

std::string f32_bytes(const std::vector<float>& values) {
  std::string bytes(values.size() * 4, '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// Runs `action`, which must throw InputError, and returns the message.
std::string input_error(const std::function<void()>& action) {
  try {
    action();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
  return {};
}

#define EXPECT_CONTAINS(text, needle) \
  EXPECT_NE(std::string(text).find(needle), std::string::npos) << "message: " << (text) << "\nlacks: " << (needle)

std::string open_error(const fs::path& path) {
  return input_error([&] { SafetensorsFile::open(path); });
}

// ---- round trip --------------------------------------------------------------------------------------------

TEST(Safetensors, RoundTripF32Bf16F16) {
  TempDir dir;
  const auto path = dir / "model.safetensors";
  const std::vector<float> a = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.0f, -0.0f};
  const std::vector<float> b = {0.1f, 0.2f, -0.3f, 1e-8f, 1e30f, 7.0f};
  const std::vector<float> c = {0.1f, -1e-6f, 1e-7f, 70000.0f, 2.0f, 0.333f, 4.0f, 5.0f};
  const std::vector<float> empty;
  write_safetensors(path,
                    {{"z.f32", {2, 3}, DType::F32, a},
                     {"a.bf16", {6}, DType::BF16, b},
                     {"m.f16", {2, 2, 2}, DType::F16, c},
                     {"e.empty", {0, 4}, DType::F32, empty}},
                    {{"format", "pt"}, {"note", "test"}});
  EXPECT_TRUE(fs::exists(path));
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().filename(), "model.safetensors") << "left behind: " << entry.path();
  }

  // Header length is a multiple of 8, and the header is padded with spaces.
  std::ifstream in(path, std::ios::binary);
  char length_bytes[8];
  in.read(length_bytes, 8);
  std::uint64_t header_size;
  std::memcpy(&header_size, length_bytes, 8);
  EXPECT_EQ(header_size % 8, 0u);
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->path(), path);
  ASSERT_EQ(file->tensors().size(), 4u);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->metadata().at("note"), "test");

  // Data is laid out in name order.
  EXPECT_LT(file->find("a.bf16")->begin, file->find("m.f16")->begin);
  EXPECT_LT(file->find("m.f16")->begin, file->find("z.f32")->begin);

  const TensorInfo* ta = file->find("z.f32");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, DType::F32);
  EXPECT_EQ(ta->shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(ta->numel(), 6);
  std::vector<float> out(6);
  auto bytes = file->bytes(*ta);
  ASSERT_EQ(bytes.size(), 24u);
  convert_to_f32(ta->dtype, bytes.data(), 6, out.data());
  EXPECT_EQ(out, a);
  EXPECT_TRUE(std::signbit(out[5]));

  const TensorInfo* tb = file->find("a.bf16");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, DType::BF16);
  bytes = file->bytes(*tb);
  ASSERT_EQ(bytes.size(), 12u);
  convert_to_f32(tb->dtype, bytes.data(), 6, out.data());
  for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(out[i], bf16_to_f32(f32_to_bf16(b[i]))) << i;

  const TensorInfo* tc = file->find("m.f16");
  ASSERT_NE(tc, nullptr);
  EXPECT_EQ(tc->dtype, DType::F16);
  EXPECT_EQ(tc->shape, (std::vector<std::int64_t>{2, 2, 2}));
  std::vector<float> out8(8);
  convert_to_f32(tc->dtype, file->bytes(*tc).data(), 8, out8.data());
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(out8[i], f16_to_f32(f32_to_f16(c[i]))) << i;
  EXPECT_TRUE(std::isinf(out8[3]));  // 70000 overflows f16

  const TensorInfo* te = file->find("e.empty");
  ASSERT_NE(te, nullptr);
  EXPECT_EQ(te->numel(), 0);
  EXPECT_EQ(file->bytes(*te).size(), 0u);
  EXPECT_EQ(file->find("absent"), nullptr);
}

TEST(Safetensors, WriteOverwritesAndWritesEmptyFile) {
  TempDir dir;
  const auto path = dir / "out.safetensors";
  write_bytes(path, "old contents");
  write_safetensors(path, {});
  const auto file = SafetensorsFile::open(path);
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_TRUE(file->metadata().empty());
  EXPECT_EQ(fs::file_size(path), 16u);  // length + "{}" padded to 8
}

TEST(Safetensors, WriteRejectsBadInput) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  const std::vector<float> three = {1, 2, 3};
  EXPECT_THROW(write_safetensors(path, {{"t", {2, 2}, DType::F32, three}}), Error);
  EXPECT_THROW(write_safetensors(path, {{"t", {3}, DType::F32, three}, {"t", {3}, DType::F32, three}}), Error);
  EXPECT_THROW(write_safetensors(path, {{"t", {3}, DType::I32, three}}), Error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// ---- accepted edge cases -----------------------------------------------------------------------------------

TEST(Safetensors, ZeroSizeTensorsAreValid) {
  TempDir dir;
  const auto path = dir / "zero.safetensors";
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("c":{"dtype":"BF16","shape":[3,0],"data_offsets":[8,8]}})",
            f32_bytes({1.0f, 2.0f}));
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(file->find("a")->numel(), 0);
  EXPECT_EQ(file->find("c")->numel(), 0);
}

TEST(Safetensors, ScalarAndOtherDtypesParse) {
  TempDir dir;
  const auto path = dir / "ints.safetensors";
  write_raw(path,
            R"({"i32":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
            R"("i64":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
            R"("u8":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})",
            std::string(19, '\x01'));
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->find("i32")->dtype, DType::I32);
  EXPECT_EQ(file->find("i64")->dtype, DType::I64);
  EXPECT_EQ(file->find("i64")->numel(), 1);  // a scalar
  EXPECT_EQ(file->find("u8")->dtype, DType::U8);
}

TEST(Safetensors, UnalignedHeaderLengthReadsCorrectly) {
  // The reference reader accepts header lengths that are not multiples of 8; the data is then unaligned.
  TempDir dir;
  const auto path = dir / "odd.safetensors";
  const std::uint16_t bits[3] = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(0.25f)};
  std::string data(6, '\0');
  std::memcpy(data.data(), bits, 6);
  std::string header = R"({"t":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}})";
  if (header.size() % 2 == 0) header += ' ';  // an odd length puts the data at an odd address
  ASSERT_NE(header.size() % 2, 0u);
  write_raw(path, header, data);
  const auto file = SafetensorsFile::open(path);
  float out[3];
  convert_to_f32(DType::BF16, file->bytes(*file->find("t")).data(), 3, out);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.25f);
}

// ---- malformed files ---------------------------------------------------------------------------------------

TEST(Safetensors, RejectsMissingFile) {
  TempDir dir;
  const auto message = open_error(dir / "nope.safetensors");
  EXPECT_CONTAINS(message, "nope.safetensors");
}

TEST(Safetensors, RejectsTruncatedFile) {
  TempDir dir;
  const auto path = dir / "short.safetensors";
  write_bytes(path, "abcde");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "short.safetensors");
  EXPECT_CONTAINS(message, "5 bytes");
  EXPECT_CONTAINS(message, "8-byte");
}

TEST(Safetensors, RejectsHeaderLengthPastEndOfFile) {
  TempDir dir;
  const auto path = dir / "long_header.safetensors";
  write_bytes(path, le64(1000) + R"({"a":1})");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "long_header.safetensors");
  EXPECT_CONTAINS(message, "1000");
  EXPECT_CONTAINS(message, "past the end");
}

TEST(Safetensors, RejectsHugeHeaderLength) {
  TempDir dir;
  const auto path = dir / "huge_header.safetensors";
  write_bytes(path, le64(200'000'000) + "{}");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "huge_header.safetensors");
  EXPECT_CONTAINS(message, "100000000");
}

TEST(Safetensors, RejectsHeaderThatIsNotJson) {
  TempDir dir;
  const auto path = dir / "not_json.safetensors";
  write_raw(path, "this is not json", "");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "not_json.safetensors");
  EXPECT_CONTAINS(message, "not valid JSON");
}

TEST(Safetensors, RejectsHeaderThatIsNotUtf8) {
  TempDir dir;
  const auto path = dir / "latin1.safetensors";
  write_raw(path, "{\"caf\xe9\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", "");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "latin1.safetensors");
  EXPECT_CONTAINS(message, "UTF-8");
}

TEST(Safetensors, RejectsHeaderThatIsNotAnObject) {
  TempDir dir;
  const auto path = dir / "array.safetensors";
  write_raw(path, "[1, 2]", "");
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "array.safetensors");
  EXPECT_CONTAINS(message, "object");
}

TEST(Safetensors, RejectsOverlappingOffsets) {
  TempDir dir;
  const auto path = dir / "overlap.safetensors";
  write_raw(path,
            R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("second":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "overlap.safetensors");
  EXPECT_CONTAINS(message, "\"second\"");
  EXPECT_CONTAINS(message, "overlaps");
  EXPECT_CONTAINS(message, "expected 8");
}

TEST(Safetensors, RejectsGappedOffsets) {
  TempDir dir;
  const auto path = dir / "gap.safetensors";
  write_raw(path,
            R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("second":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
            std::string(20, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "gap.safetensors");
  EXPECT_CONTAINS(message, "\"second\"");
  EXPECT_CONTAINS(message, "gap of 4 bytes");
}

TEST(Safetensors, RejectsDataNotStartingAtZero) {
  TempDir dir;
  const auto path = dir / "offset.safetensors";
  write_raw(path, R"({"only":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "offset.safetensors");
  EXPECT_CONTAINS(message, "\"only\"");
  EXPECT_CONTAINS(message, "expected 0");
}

TEST(Safetensors, RejectsByteCountNotMatchingShapeAndDtype) {
  TempDir dir;
  const auto path = dir / "count.safetensors";
  write_raw(path, R"({"weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", std::string(8, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "count.safetensors");
  EXPECT_CONTAINS(message, "\"weight\"");
  EXPECT_CONTAINS(message, "8 bytes");
  EXPECT_CONTAINS(message, "needs 12 bytes");
}

TEST(Safetensors, RejectsTrailingBytesAfterData) {
  TempDir dir;
  const auto path = dir / "trailing.safetensors";
  write_raw(path, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(11, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "trailing.safetensors");
  EXPECT_CONTAINS(message, "3 trailing bytes");
}

TEST(Safetensors, RejectsTruncatedData) {
  TempDir dir;
  const auto path = dir / "cut.safetensors";
  write_raw(path, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(10, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "cut.safetensors");
  EXPECT_CONTAINS(message, "truncated");
}

TEST(Safetensors, RejectsUnknownDtype) {
  TempDir dir;
  const auto path = dir / "f64.safetensors";
  write_raw(path, R"({"double":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0'));
  const auto message = open_error(path);
  EXPECT_CONTAINS(message, "f64.safetensors");
  EXPECT_CONTAINS(message, "\"double\"");
  EXPECT_CONTAINS(message, "\"F64\"");
}

TEST(Safetensors, RejectsBadEntries) {
  TempDir dir;
  const auto path = dir / "entries.safetensors";
  const struct {
    const char* header;
    const char* needle;
  } cases[] = {
      {R"({"t":{"shape":[1],"data_offsets":[0,4]}})", "missing \"dtype\""},
      {R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "missing \"shape\""},
      {R"({"t":{"dtype":"F32","shape":[1]}})", "missing \"data_offsets\""},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "non-negative"},
      {R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "non-negative"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "begin is past end"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "[begin, end]"},
      {R"({"t":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "must be a string"},
      {R"({"t":[1,2]})", "expected an object"},
  };
  for (const auto& c : cases) {
    write_raw(path, c.header, std::string(4, '\0'));
    const auto message = open_error(path);
    EXPECT_CONTAINS(message, "entries.safetensors");
    EXPECT_CONTAINS(message, "tensor \"t\"");
    EXPECT_CONTAINS(message, c.needle);
  }
}

TEST(Safetensors, RejectsBadMetadata) {
  TempDir dir;
  const auto path = dir / "meta.safetensors";
  write_raw(path, R"({"__metadata__":{"format":1}})", "");
  auto message = open_error(path);
  EXPECT_CONTAINS(message, "meta.safetensors");
  EXPECT_CONTAINS(message, "\"format\"");
  write_raw(path, R"({"__metadata__":"pt"})", "");
  message = open_error(path);
  EXPECT_CONTAINS(message, "__metadata__");
  // A valid one, alongside a tensor.
  write_raw(path, R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
            std::string(4, '\0'));
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->tensors().size(), 1u);
}

// ---- WeightStore -------------------------------------------------------------------------------------------

TEST(WeightStore, SingleFileReadF32) {
  TempDir dir;
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {0.5f, -0.5f};
  write_safetensors(dir / "model.safetensors",
                    {{"layer.weight", {2, 3}, DType::BF16, w}, {"layer.bias", {2}, DType::F32, b}});
  const auto store = WeightStore::open(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"layer.bias", "layer.weight"}));
  EXPECT_TRUE(store.contains("layer.weight"));
  EXPECT_FALSE(store.contains("layer.other"));
  EXPECT_EQ(store.info("layer.weight").dtype, DType::BF16);
  EXPECT_EQ(store.file_of("layer.bias"), dir / "model.safetensors");
  std::vector<float> out(6);
  store.read_f32("layer.weight", {2, 3}, out.data());
  EXPECT_EQ(out, w);  // small integers are exact in bf16
  store.read_f32("layer.bias", {2}, out.data());
  EXPECT_EQ(out[0], 0.5f);
  EXPECT_EQ(out[1], -0.5f);
}

void write_index(const fs::path& path, const std::string& weight_map) {
  write_bytes(path, R"({"metadata":{"total_size":40},"weight_map":)" + weight_map + "}");
}

TEST(WeightStore, ShardedCheckpoint) {
  TempDir dir;
  const std::vector<float> x = {1, 2, 3, 4};
  const std::vector<float> y = {5, 6};
  const std::vector<float> z = {7, 8, 9};
  write_safetensors(dir / "model-00001-of-00002.safetensors",
                    {{"x", {2, 2}, DType::F16, x}, {"y", {2}, DType::F32, y}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"z", {3}, DType::BF16, z}});
  write_index(dir / "model.safetensors.index.json",
              R"({"x":"model-00001-of-00002.safetensors","y":"model-00001-of-00002.safetensors",)"
              R"("z":"model-00002-of-00002.safetensors"})");
  const auto store = WeightStore::open(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(store.file_of("x"), dir / "model-00001-of-00002.safetensors");
  EXPECT_EQ(store.file_of("z"), dir / "model-00002-of-00002.safetensors");
  std::vector<float> out(4);
  store.read_f32("x", {2, 2}, out.data());
  EXPECT_EQ(out, x);
  store.read_f32("z", {3}, out.data());
  EXPECT_EQ(out[2], 9.0f);
  store.read_f32("y", {2}, out.data());
  EXPECT_EQ(out[1], 6.0f);
}

TEST(WeightStore, IndexNamingMissingShard) {
  TempDir dir;
  const std::vector<float> x = {1, 2};
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"x", {2}, DType::F32, x}});
  write_index(dir / "model.safetensors.index.json",
              R"({"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"})");
  const auto message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, "model.safetensors.index.json");
  EXPECT_CONTAINS(message, "model-00002-of-00002.safetensors");
  EXPECT_CONTAINS(message, "does not exist");
}

// A tensor the loader asks for that the weights lack: the directory, the tensor and the file(s) looked in.
TEST(WeightStore, MissingTensorNamesTheTensorAndTheWeights) {
  TempDir dir;
  const std::vector<float> x = {1, 2};
  write_safetensors(dir / "model.safetensors", {{"x", {2}, DType::F32, x}});
  const auto store = WeightStore::open(dir.path());
  const auto message = input_error([&] { store.info("model.norm.weight"); });
  EXPECT_EQ(message, dir.path().string() + ": tensor \"model.norm.weight\" is missing from the weights (" +
                         (dir / "model.safetensors").string() + ")");
  EXPECT_CONTAINS(input_error([&] { store.file_of("y"); }), "\"y\" is missing");

  TempDir sharded;
  write_safetensors(sharded / "shard.safetensors", {{"x", {2}, DType::F32, x}});
  write_index(sharded / "model.safetensors.index.json", R"({"x":"shard.safetensors"})");
  const auto sharded_message = input_error([&] { WeightStore::open(sharded.path()).info("y"); });
  EXPECT_CONTAINS(sharded_message, "model.safetensors.index.json and its shards");
}

TEST(WeightStore, IndexNamingTensorTheShardLacks) {
  TempDir dir;
  const std::vector<float> x = {1, 2};
  write_safetensors(dir / "shard.safetensors", {{"x", {2}, DType::F32, x}});
  write_index(dir / "model.safetensors.index.json", R"({"x":"shard.safetensors","ghost":"shard.safetensors"})");
  const auto message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, "model.safetensors.index.json");
  EXPECT_CONTAINS(message, "\"ghost\"");
  EXPECT_CONTAINS(message, "shard.safetensors");
}

TEST(WeightStore, MalformedIndex) {
  TempDir dir;
  write_bytes(dir / "model.safetensors.index.json", "{not json");
  auto message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, "model.safetensors.index.json");
  write_bytes(dir / "model.safetensors.index.json", R"({"metadata":{}})");
  message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, "weight_map");
  write_index(dir / "model.safetensors.index.json", R"({"x":"../elsewhere.safetensors"})");
  message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, "../elsewhere.safetensors");
}

TEST(WeightStore, NoWeightFiles) {
  TempDir dir;
  auto message = input_error([&] { WeightStore::open(dir.path()); });
  EXPECT_CONTAINS(message, dir.path().string());
  EXPECT_CONTAINS(message, "model.safetensors");
  message = input_error([&] { WeightStore::open(dir / "absent"); });
  EXPECT_CONTAINS(message, (dir / "absent").string());
}

TEST(WeightStore, ReadF32MissingTensor) {
  TempDir dir;
  const std::vector<float> x = {1, 2};
  write_safetensors(dir / "model.safetensors", {{"x", {2}, DType::F32, x}});
  const auto store = WeightStore::open(dir.path());
  float out[2];
  auto message = input_error([&] { store.read_f32("model.norm.weight", {2}, out); });
  EXPECT_CONTAINS(message, "\"model.norm.weight\"");
  EXPECT_CONTAINS(message, dir.path().string());
  message = input_error([&] { store.info("model.norm.weight"); });
  EXPECT_CONTAINS(message, "\"model.norm.weight\"");
}

TEST(WeightStore, ReadF32WrongShape) {
  TempDir dir;
  const std::vector<float> w(12, 1.0f);
  write_safetensors(dir / "model.safetensors", {{"proj.weight", {3, 4}, DType::BF16, w}});
  const auto store = WeightStore::open(dir.path());
  std::vector<float> out(12);
  const auto message = input_error([&] { store.read_f32("proj.weight", {4, 3}, out.data()); });
  EXPECT_CONTAINS(message, "model.safetensors");
  EXPECT_CONTAINS(message, "\"proj.weight\"");
  EXPECT_CONTAINS(message, "[3, 4]");
  EXPECT_CONTAINS(message, "expected [4, 3]");
}

TEST(WeightStore, ReadF32RejectsIntegerTensor) {
  TempDir dir;
  write_raw(dir / "model.safetensors", R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  const auto store = WeightStore::open(dir.path());
  float out[1];
  const auto message = input_error([&] { store.read_f32("ids", {1}, out); });
  EXPECT_CONTAINS(message, "\"ids\"");
  EXPECT_CONTAINS(message, "I64");
}

}  // namespace
