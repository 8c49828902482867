// Training checkpoints: bit-exact HDF5 round trip, byte-reproducible files, the save protocol (temporary files,
// `latest`, keep_last), every refusal on load (truncated, foreign, wrong or old version, failed checksums, other
// model/data/config), the hint naming a valid older checkpoint, one-line messages, and the fingerprints.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "slearn/checkpoint.hpp"
#include "slearn/error.hpp"
#include "test_paths.hpp"
#include "test_helpers.hpp"

namespace {

using namespace slearn;
namespace fs = std::filesystem;

using slearn::testing::TempDir;

using slearn::testing::read_file;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  ASSERT_TRUE(out.good());
}

float from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }

NamedArray array(const std::string& name, std::vector<std::int64_t> shape, float base) {
  NamedArray a;
  a.name = name;
  a.shape = std::move(shape);
  std::size_t count = 1;
  for (auto d : a.shape) count *= static_cast<std::size_t>(d);
  for (std::size_t i = 0; i < count; ++i) a.values.push_back(base + 0.125f * static_cast<float>(i));
  return a;
}

// Three groups of arrays whose order is not alphabetical, with PEFT-style dotted names.
TrainState sample_state(std::int64_t step) {
  TrainState state;
  state.step = step;
  state.epoch = 2;
  state.position = 37;
  state.adapter = {
      array("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", {8, 4}, 1.0f),
      array("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16}, -3.0f),
      array("zeta", {3}, 0.5f),
      array("alpha.scalar", {}, 7.0f),
      array("empty", {0, 4}, 0.0f),
  };
  // Special values, bit for bit: signed zeros, infinities, a denormal, extremes, NaNs.
  auto& special = state.adapter[0].values;
  special[0] = -0.0f;
  special[1] = 0.0f;
  special[2] = std::numeric_limits<float>::infinity();
  special[3] = -std::numeric_limits<float>::infinity();
  special[4] = std::numeric_limits<float>::denorm_min();
  special[5] = -std::numeric_limits<float>::max();
  special[6] = std::numeric_limits<float>::quiet_NaN();
  special[7] = from_bits(0x7fc00001u);  // a quiet NaN with a payload
  special[8] = from_bits(0xffc00000u);  // a negative NaN
  special[9] = std::numeric_limits<float>::min();
  for (const NamedArray& a : state.adapter) {
    NamedArray m = a;
    for (float& v : m.values) v = v * 0.5f + 1.0f;
    state.adam_m.push_back(m);
    NamedArray v2 = a;
    for (float& v : v2.values) v = v * v;
    state.adam_v.push_back(v2);
  }
  state.rng_state = "mt19937 1 2 3\n4 5 6\n\tend\n";
  state.config_yaml = "model: /models/qwén\n# 日本語のコメント ✓\nlora:\n  r: 8\n\nsystem_prompt: \"a\\nb\"\n";
  state.fingerprint = "model:00112233445566778899aabbccddeeff data:ffeeddccbbaa99887766554433221100 config:0123";
  return state;
}

void expect_bit_equal(const std::vector<NamedArray>& expected, const std::vector<NamedArray>& actual) {
  ASSERT_EQ(expected.size(), actual.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].name, actual[i].name) << "array " << i;
    EXPECT_EQ(expected[i].shape, actual[i].shape) << expected[i].name;
    ASSERT_EQ(expected[i].values.size(), actual[i].values.size()) << expected[i].name;
    for (std::size_t k = 0; k < expected[i].values.size(); ++k) {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(expected[i].values[k]), std::bit_cast<std::uint32_t>(actual[i].values[k]))
          << expected[i].name << "[" << k << "]";
    }
  }
}

void expect_same_state(const TrainState& expected, const TrainState& actual) {
  EXPECT_EQ(expected.step, actual.step);
  EXPECT_EQ(expected.epoch, actual.epoch);
  EXPECT_EQ(expected.position, actual.position);
  EXPECT_EQ(expected.rng_state, actual.rng_state);
  EXPECT_EQ(expected.config_yaml, actual.config_yaml);
  EXPECT_EQ(expected.fingerprint, actual.fingerprint);
  expect_bit_equal(expected.adapter, actual.adapter);
  expect_bit_equal(expected.adam_m, actual.adam_m);
  expect_bit_equal(expected.adam_v, actual.adam_v);
}

std::vector<std::string> file_names(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Runs `body`, which must throw InputError, and returns its message; fails if anything reached stderr.
template <typename Body>
std::string input_error_message(Body body) {
  std::string message;
  ::testing::internal::CaptureStderr();
  try {
    body();
    ADD_FAILURE() << "no InputError was thrown";
  } catch (const InputError& error) {
    message = error.what();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected an InputError, got: " << error.what();
  }
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(printed, "") << "something was printed to stderr";
  EXPECT_EQ(message.find_first_of("\n\r\t"), std::string::npos) << "not one line: " << message;
  return message;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const std::string kFingerprint =
    "model:00112233445566778899aabbccddeeff data:ffeeddccbbaa99887766554433221100 config:0123";

// ----------------------------------------------------------------------------------------------------------

TEST(Checkpoint, RoundTripIsBitExactAndKeepsOrder) {
  TempDir dir;
  const TrainState state = sample_state(10);
  const fs::path written = save_checkpoint(dir.path(), state, 3);
  EXPECT_EQ(written, dir / "step-00000010.h5");
  EXPECT_TRUE(fs::is_regular_file(written));

  expect_same_state(state, load_checkpoint(written));
  const auto latest = load_latest_checkpoint(dir.path(), state.fingerprint);
  ASSERT_TRUE(latest.has_value());
  expect_same_state(state, *latest);
}

TEST(Checkpoint, RoundTripOfEmptyStringsAndNoMoments) {
  TempDir dir;
  TrainState state;
  state.step = 0;
  state.adapter = {array("b.weight", {2, 2}, 1.0f), array("a.weight", {2}, 2.0f)};
  state.rng_state = "";
  state.config_yaml = std::string("with\0nul\0", 9);  // bytes are kept exactly, trailing NUL included
  state.fingerprint = "";
  const fs::path written = save_checkpoint(dir.path(), state, 1);
  expect_same_state(state, load_checkpoint(written));
}

TEST(Checkpoint, KeepLastLeavesTheNewestAndLatestPointsAtIt) {
  TempDir dir;
  for (std::int64_t step = 1; step <= 5; ++step) save_checkpoint(dir.path(), sample_state(step * 10), 2);
  EXPECT_EQ(file_names(dir.path()),
            (std::vector<std::string>{"latest", "step-00000040.h5", "step-00000050.h5"}));
  EXPECT_EQ(read_file(dir / "latest"), "step-00000050.h5\n");
  const auto latest = load_latest_checkpoint(dir.path(), kFingerprint);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 50);
}

TEST(Checkpoint, KeepLastNeverRemovesTheCheckpointJustWritten) {
  TempDir dir;
  // A newer-numbered file from an abandoned run is there; the one just written stays all the same.
  save_checkpoint(dir.path(), sample_state(90), 5);
  save_checkpoint(dir.path(), sample_state(20), 1);
  EXPECT_TRUE(fs::exists(dir / "step-00000020.h5"));
  EXPECT_EQ(read_file(dir / "latest"), "step-00000020.h5\n");
  EXPECT_EQ(load_latest_checkpoint(dir.path(), kFingerprint)->step, 20);
}

TEST(Checkpoint, CreatesTheDirectory) {
  TempDir dir;
  const fs::path nested = dir / "runs" / "x" / "checkpoints";
  save_checkpoint(nested, sample_state(3), 2);
  EXPECT_TRUE(fs::exists(nested / "step-00000003.h5"));
  EXPECT_TRUE(fs::exists(nested / "latest"));
}

TEST(Checkpoint, StrayTemporaryFilesAreIgnoredThenRemoved) {
  TempDir dir;
  save_checkpoint(dir.path(), sample_state(1), 3);
  // What a crash in the middle of the next save leaves behind.
  write_text(dir / "step-00000002.h5.tmp", "half a file");
  write_text(dir / "latest.tmp", "step-00000002.h5\n");
  const auto latest = load_latest_checkpoint(dir.path(), kFingerprint);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 1);

  save_checkpoint(dir.path(), sample_state(3), 3);
  EXPECT_EQ(file_names(dir.path()),
            (std::vector<std::string>{"latest", "step-00000001.h5", "step-00000003.h5"}));
}

TEST(Checkpoint, NoCheckpointIsNullopt) {
  TempDir dir;
  EXPECT_FALSE(load_latest_checkpoint(dir / "does-not-exist", kFingerprint).has_value());
  EXPECT_FALSE(load_latest_checkpoint(dir.path(), kFingerprint).has_value());
  // A checkpoint file without `latest` (the crash came before the pointer was written) is not loaded.
  save_checkpoint(dir.path(), sample_state(4), 2);
  fs::remove(dir / "latest");
  EXPECT_FALSE(load_latest_checkpoint(dir.path(), kFingerprint).has_value());
}

TEST(Checkpoint, TruncatedCheckpointIsAnInputErrorAndPrintsNothing) {
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  const auto size = fs::file_size(file);
  fs::resize_file(file, size / 2);
  std::string message = input_error_message([&] { load_checkpoint(file); });
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
  message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;

  // Only the superblock left; and cut short of even that.
  fs::resize_file(file, 100);
  input_error_message([&] { load_checkpoint(file); });
  fs::resize_file(file, 5);
  input_error_message([&] { load_checkpoint(file); });
}

TEST(Checkpoint, CorruptCheckpointIsAnInputError) {
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  std::string bytes = read_file(file);
  // Scribble over everything after the superblock.
  for (std::size_t i = 96; i < bytes.size(); ++i) bytes[i] = static_cast<char>(0xa5 ^ (i * 31));
  write_text(file, bytes);
  const std::string message = input_error_message([&] { load_checkpoint(file); });
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
}

TEST(Checkpoint, NonHdf5AndMissingFilesAreInputErrors) {
  TempDir dir;
  write_text(dir / "step-00000001.h5", "model: not a checkpoint\n");
  std::string message = input_error_message([&] { load_checkpoint(dir / "step-00000001.h5"); });
  EXPECT_NE(message.find("step-00000001.h5"), std::string::npos) << message;
  message = input_error_message([&] { load_checkpoint(dir / "nothing.h5"); });
  EXPECT_NE(message.find("nothing.h5"), std::string::npos) << message;
}

TEST(Checkpoint, ErrorsPrintNothingOnOtherThreadsEither) {
  // A thread-safe HDF5 keeps its printing switch per thread.
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  fs::resize_file(file, fs::file_size(file) / 3);
  std::string message;
  ::testing::internal::CaptureStderr();
  std::thread worker([&] {
    try {
      load_checkpoint(file);
    } catch (const InputError& error) {
      message = error.what();
    }
  });
  worker.join();
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
}

TEST(Checkpoint, LatestNamingAMissingOrForeignFileIsAnInputError) {
  TempDir dir;
  write_text(dir / "latest", "step-00000009.h5\n");
  std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_NE(message.find("step-00000009.h5"), std::string::npos) << message;
  write_text(dir / "latest", "../../etc/passwd\n");
  message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_NE(message.find("latest"), std::string::npos) << message;
}

TEST(Checkpoint, OtherFormatVersionIsRefused) {
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  {
    const hid_t h = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(h, 0);
    const hid_t attribute = H5Aopen(h, "format_version", H5P_DEFAULT);
    ASSERT_GE(attribute, 0);
    const std::int64_t version = 3;
    EXPECT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &version), 0);
    H5Aclose(attribute);
    H5Fclose(h);
  }
  const std::string message = input_error_message([&] { load_checkpoint(file); });
  EXPECT_NE(message.find("version 3"), std::string::npos) << message;
  EXPECT_NE(message.find("reads version 2"), std::string::npos) << message;
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
}

// ----------------------------------------------------------------------------------------------------------
// Checksums (format version 2), byte-reproducible files, the older-checkpoint hint, one-line messages.

constexpr std::int64_t kBigRows = 64;
constexpr std::int64_t kBigColumns = 256;

// Three 64x256 arrays in each group (64 KiB each, nine in all), so most of the file is array data; every array's
// values are distinct from every other's, so its bytes can be found in the file.
TrainState big_state(std::int64_t step) {
  TrainState state;
  state.step = step;
  state.epoch = 1;
  state.position = 5;
  int k = 0;
  for (auto* group : {&state.adapter, &state.adam_m, &state.adam_v}) {
    for (int layer = 0; layer < 3; ++layer) {
      NamedArray a;
      a.name = "base_model.model.model.layers." + std::to_string(layer) + ".self_attn.q_proj.lora_A.weight";
      a.shape = {kBigRows, kBigColumns};
      ++k;
      for (std::int64_t i = 0; i < kBigRows * kBigColumns; ++i) a.values.push_back(static_cast<float>(k * 100000 + i));
      group->push_back(std::move(a));
    }
  }
  state.rng_state = "mt19937 rng state 42 43 44";
  state.config_yaml = "model: /models/big\nlora:\n  r: 64\n";
  state.fingerprint = kFingerprint;
  return state;
}

// The values as the file stores them: IEEE float32, little-endian.
std::string little_endian_bytes(const std::vector<float>& values) {
  std::string bytes;
  for (float value : values) {
    const auto bits = std::bit_cast<std::uint32_t>(value);
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>(bits >> (8 * i)));
  }
  return bytes;
}

// Where one dataset's data lies in the file's bytes.
struct Region {
  std::string dataset;  // as the messages name it: "adapter/<name>", "config_yaml"
  std::size_t offset;
  std::size_t size;
};

Region find_region(const std::string& file_bytes, const std::string& dataset, const std::string& data) {
  const std::size_t offset = file_bytes.find(data);
  EXPECT_NE(offset, std::string::npos) << dataset << " not found in the file";
  EXPECT_EQ(file_bytes.find(data, offset + 1), std::string::npos) << dataset << " found twice in the file";
  return Region{dataset, offset, data.size()};
}

std::vector<Region> array_regions(const std::string& file_bytes, const TrainState& state) {
  std::vector<Region> regions;
  const std::pair<const char*, const std::vector<NamedArray>*> groups[] = {
      {"adapter", &state.adapter}, {"adam_m", &state.adam_m}, {"adam_v", &state.adam_v}};
  for (const auto& [group, arrays] : groups) {
    for (const NamedArray& a : *arrays) {
      regions.push_back(find_region(file_bytes, std::string(group) + "/" + a.name, little_endian_bytes(a.values)));
    }
  }
  return regions;
}

// Rewrites a root attribute in place with the HDF5 API, as a tool that knows nothing of the checksums would.
void rewrite_root_attribute(const fs::path& file, const char* name, std::int64_t value) {
  const hid_t h = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(h, 0);
  const hid_t attribute = H5Aopen(h, name, H5P_DEFAULT);
  ASSERT_GE(attribute, 0);
  EXPECT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &value), 0);
  EXPECT_GE(H5Aclose(attribute), 0);
  EXPECT_GE(H5Fclose(h), 0);
}

// Flips one bit of the byte at `offset` of `file`.
void flip_byte(const fs::path& file, std::size_t offset) {
  std::string bytes = read_file(file);
  ASSERT_LT(offset, bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x01);
  write_text(file, bytes);
}

// Flips a byte of the first adapter array's data in the checkpoint of `state` in `dir`.
void corrupt_first_array(const fs::path& dir, const TrainState& state) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld.h5", static_cast<long long>(state.step));
  flip_byte(dir / name, array_regions(read_file(dir / name), state)[0].offset + 1);
}

TEST(Checkpoint, SavesOfTheSameStateAreByteIdentical) {
  TempDir dir;
  const TrainState state = sample_state(12);
  const fs::path first = save_checkpoint(dir / "a", state, 2);
  // HDF5's object times have a resolution of one second: let the clock move on, so that a time stored
  // anywhere in the file would differ between the two.
  const std::time_t after_first = std::time(nullptr);
  while (std::time(nullptr) <= after_first) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const fs::path second = save_checkpoint(dir / "b", state, 2);
  const std::string first_bytes = read_file(first);
  const std::string second_bytes = read_file(second);
  ASSERT_EQ(first_bytes.size(), second_bytes.size());
  const auto differ = std::mismatch(first_bytes.begin(), first_bytes.end(), second_bytes.begin());
  EXPECT_TRUE(differ.first == first_bytes.end())
      << "the files differ from byte " << (differ.first - first_bytes.begin()) << " of " << first_bytes.size();

  // And a bigger one, saved over the first in the same directory.
  const TrainState big = big_state(12);
  const std::string big_first = read_file(save_checkpoint(dir / "c", big, 2));
  EXPECT_EQ(big_first, read_file(save_checkpoint(dir / "c", big, 2)));
}

TEST(Checkpoint, OverwrittenMiddleFailsItsChecksum) {
  TempDir dir;
  const TrainState state = big_state(6);
  const fs::path file = save_checkpoint(dir.path(), state, 2);
  std::string bytes = read_file(file);
  const std::vector<Region> regions = array_regions(bytes, state);
  ASSERT_EQ(regions.size(), 9u);

  // 8 KiB in the middle of the file, inside one array's data.
  const std::size_t start = bytes.size() / 2 - 4096;
  const std::size_t end = start + 8192;
  const auto inside = std::find_if(regions.begin(), regions.end(),
                                   [&](const Region& r) { return r.offset <= start && end <= r.offset + r.size; });
  ASSERT_NE(inside, regions.end()) << "the middle of the file is not array data";
  for (std::size_t i = start; i < end; ++i) bytes[i] = static_cast<char>(0x5a ^ (i * 7));
  write_text(file, bytes);

  const std::string expected =
      file.string() + ": corrupt checkpoint: dataset " + inside->dataset + " fails its checksum";
  EXPECT_EQ(input_error_message([&] { load_checkpoint(file); }), expected);
  // No older checkpoint: `latest` reports the same line and nothing more.
  EXPECT_EQ(input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); }), expected);
}

TEST(Checkpoint, OneFlippedByteInAnyDatasetIsDetected) {
  TempDir dir;
  const TrainState state = big_state(6);
  const fs::path file = save_checkpoint(dir.path(), state, 2);
  const std::string original = read_file(file);
  std::vector<Region> regions = array_regions(original, state);
  regions.push_back(find_region(original, "rng_state", state.rng_state));
  regions.push_back(find_region(original, "config_yaml", state.config_yaml));
  regions.push_back(find_region(original, "fingerprint", state.fingerprint));
  for (const Region& region : regions) {
    for (const std::size_t at : {std::size_t{0}, region.size / 2, region.size - 1}) {
      write_text(file, original);
      flip_byte(file, region.offset + at);
      const std::string message = input_error_message([&] { load_checkpoint(file); });
      EXPECT_EQ(message, file.string() + ": corrupt checkpoint: dataset " + region.dataset + " fails its checksum")
          << "byte " << at << " of " << region.dataset;
    }
  }
  write_text(file, original);
  expect_same_state(state, load_checkpoint(file));
}

TEST(Checkpoint, TamperedRootAttributeFailsTheRootChecksum) {
  TempDir dir;
  const TrainState state = sample_state(7);
  const fs::path file = save_checkpoint(dir.path(), state, 2);
  const std::string original = read_file(file);
  const std::pair<const char*, std::int64_t> changes[] = {{"step", 8}, {"epoch", 3}, {"position", 36}};
  for (const auto& [name, value] : changes) {
    write_text(file, original);
    rewrite_root_attribute(file, name, value);
    const std::string message = input_error_message([&] { load_checkpoint(file); });
    EXPECT_EQ(message, file.string() +
                           ": corrupt checkpoint: the root attributes (format_version, step, epoch, position) fail "
                           "their checksum")
        << name;
  }
  // Written back to what it was, the same file loads again.
  rewrite_root_attribute(file, "position", state.position);
  expect_same_state(state, load_checkpoint(file));
}

TEST(Checkpoint, MissingChecksumIsRefused) {
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  {
    const hid_t h = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(h, 0);
    EXPECT_GE(H5Adelete_by_name(h, "adam_v/zeta", "xxh3_64", H5P_DEFAULT), 0);
    EXPECT_GE(H5Fclose(h), 0);
  }
  const std::string message = input_error_message([&] { load_checkpoint(file); });
  EXPECT_EQ(message, file.string() + ": corrupt checkpoint: dataset adam_v/zeta has no checksum (attribute xxh3_64)");
}

TEST(Checkpoint, CorruptLatestNamesAValidOlderCheckpoint) {
  TempDir dir;
  const TrainState state = big_state(4);
  save_checkpoint(dir.path(), state, 3);
  TrainState later = state;
  later.step = 8;
  const fs::path file = save_checkpoint(dir.path(), later, 3);
  const std::string original = read_file(file);
  const std::string hint = "; the older checkpoint step-00000004.h5 in " + dir.path().string() +
                           " is valid: to resume from it, write its name into " + (dir / "latest").string() +
                           "; or pass --force to start over";

  // A failed checksum.
  flip_byte(file, array_regions(original, later)[4].offset + 100);
  std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_EQ(message, file.string() + ": corrupt checkpoint: dataset adam_m/" + later.adam_m[1].name +
                         " fails its checksum" + hint);
  // A truncated file.
  write_text(file, original.substr(0, original.size() / 2));
  message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_TRUE(contains(message, file.string())) << message;
  EXPECT_TRUE(message.ends_with(hint)) << message;

  // Nothing falls back by itself: `latest` still names the bad one until the user changes it, as the hint says.
  EXPECT_EQ(read_file(dir / "latest"), "step-00000008.h5\n");
  write_text(dir / "latest", "step-00000004.h5\n");
  const auto resumed = load_latest_checkpoint(dir.path(), kFingerprint);
  ASSERT_TRUE(resumed.has_value());
  expect_same_state(state, *resumed);
}

TEST(Checkpoint, CorruptLatestSkipsBadOlderCheckpointsInTheHint) {
  TempDir dir;
  for (const std::int64_t step : {2, 4, 8}) save_checkpoint(dir.path(), big_state(step), 5);
  for (const std::int64_t step : {4, 8}) corrupt_first_array(dir.path(), big_state(step));
  const std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_TRUE(contains(message, "the older checkpoint step-00000002.h5 in " + dir.path().string() + " is valid"))
      << message;
  EXPECT_FALSE(contains(message, "step-00000004.h5")) << message;
}

TEST(Checkpoint, CorruptLatestWithoutAValidOlderOneSaysNothingMore) {
  TempDir dir;
  // Older ones that are corrupt too, or were written for another run, and a newer-numbered valid one: none of
  // them is offered.
  TrainState other = big_state(2);
  other.fingerprint = "model:aaaa data:bbbb config:cccc";
  save_checkpoint(dir.path(), other, 10);
  save_checkpoint(dir.path(), big_state(90), 10);
  save_checkpoint(dir.path(), big_state(4), 10);
  const fs::path file = save_checkpoint(dir.path(), big_state(8), 10);
  for (const std::int64_t step : {4, 8}) corrupt_first_array(dir.path(), big_state(step));

  const std::string direct = input_error_message([&] { load_checkpoint(file); });
  const std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_EQ(message, direct);
  EXPECT_FALSE(contains(message, "older")) << message;
  EXPECT_FALSE(contains(message, "step-00000002.h5")) << message;
  EXPECT_FALSE(contains(message, "step-00000090.h5")) << message;

  // `latest` naming a file that is not there, with no older one either.
  TempDir empty;
  write_text(empty / "latest", "step-00000003.h5\n");
  EXPECT_FALSE(contains(input_error_message([&] { load_latest_checkpoint(empty.path(), kFingerprint); }), "older"));
}

TEST(Checkpoint, VersionOneFileIsRefusedAsUnverifiable) {
  TempDir dir;
  const fs::path file = save_checkpoint(dir.path(), sample_state(7), 2);
  // What slearn wrote before checksums: format_version 1, no xxh3_64 attributes. (Changing the version alone
  // also breaks the root checksum; the version is checked first.)
  rewrite_root_attribute(file, "format_version", 1);
  const std::string expected = file.string() +
                               ": checkpoint format version 1 was written by an older slearn without checksums, so "
                               "it cannot be verified and is not loaded; start over with --force";
  EXPECT_EQ(input_error_message([&] { load_checkpoint(file); }), expected);
  {
    const hid_t h = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(h, 0);
    EXPECT_GE(H5Adelete(h, "xxh3_64"), 0);
    for (const char* name : {"rng_state", "config_yaml", "fingerprint"}) {
      EXPECT_GE(H5Adelete_by_name(h, name, "xxh3_64", H5P_DEFAULT), 0);
    }
    EXPECT_GE(H5Fclose(h), 0);
  }
  EXPECT_EQ(input_error_message([&] { load_checkpoint(file); }), expected);
  EXPECT_EQ(input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); }), expected);
}

TEST(Checkpoint, ErrorMessagesAreOneLine) {
  TempDir dir;
  // `latest` holding several lines.
  write_text(dir / "latest", "step-00000001.h5\nstep-00000002.h5\r\n\tstep-3\n");
  const std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), kFingerprint); });
  EXPECT_TRUE(contains(message, "step-00000001.h5 step-00000002.h5 step-3")) << message;

  // Corrupt files of every kind (input_error_message checks each message is one line).
  const fs::path file = save_checkpoint(dir / "ckpt", big_state(3), 2);
  const std::string original = read_file(file);
  for (const std::size_t size : {std::size_t{5}, std::size_t{100}, std::size_t{700}, std::size_t{3000},
                                 original.size() / 3, original.size() - 8}) {
    write_text(file, original.substr(0, size));
    input_error_message([&] { load_checkpoint(file); });
  }
  for (std::size_t from = 96; from < 4096; from += 256) {
    std::string bytes = original;
    for (std::size_t i = from; i < from + 64; ++i) bytes[i] = static_cast<char>(0xa5 ^ (i * 31));
    write_text(file, bytes);
    try {
      load_checkpoint(file);
    } catch (const std::exception& error) {
      const std::string what = error.what();
      EXPECT_EQ(what.find_first_of("\n\r\t"), std::string::npos) << "not one line: " << what;
    }
  }
}

TEST(Checkpoint, DiskFullIsAnErrorOnOneLine) {
  // The disk filling up during a write, through /dev/full: HDF5's detail for a failed write names the time as
  // ctime() prints it, with a newline.
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir;
  fs::create_symlink("/dev/full", dir / "step-00000001.h5.tmp");
  std::string message;
  ::testing::internal::CaptureStderr();
  try {
    save_checkpoint(dir.path(), big_state(1), 2);
    ADD_FAILURE() << "no Error was thrown";
  } catch (const InputError& error) {
    ADD_FAILURE() << "a failed write is not the user's input error: " << error.what();
  } catch (const Error& error) {
    message = error.what();
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_TRUE(contains(message, (dir / "step-00000001.h5.tmp").string() + ": cannot write the checkpoint"))
      << message;
  EXPECT_TRUE(contains(message, "HDF5: ")) << message;
  EXPECT_EQ(message.find_first_of("\n\r\t"), std::string::npos) << "not one line: " << message;
  EXPECT_FALSE(fs::exists(dir / "latest"));
}

TEST(Checkpoint, FingerprintMismatchNamesWhatDiffers) {
  TempDir dir;
  TrainState state = sample_state(10);
  state.fingerprint = "model:aaaa data:bbbb config:cccc";
  const fs::path file = save_checkpoint(dir.path(), state, 2);

  std::string message = input_error_message([&] { load_latest_checkpoint(dir.path(), "model:ffff data:bbbb config:cccc"); });
  EXPECT_EQ(message, file.string() +
                         " was written for another base model (model fingerprint differs); start a new run "
                         "directory or pass --force");

  message = input_error_message([&] { load_latest_checkpoint(dir.path(), "model:aaaa data:ffff config:cccc"); });
  EXPECT_NE(message.find("data fingerprint differs"), std::string::npos) << message;
  EXPECT_EQ(message.find("model"), std::string::npos) << message;
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;

  message = input_error_message([&] { load_latest_checkpoint(dir.path(), "model:aaaa data:bbbb config:ffff"); });
  EXPECT_NE(message.find("config fingerprint differs"), std::string::npos) << message;
  EXPECT_EQ(message.find("model"), std::string::npos) << message;
  EXPECT_EQ(message.find("data"), std::string::npos) << message;

  message = input_error_message([&] { load_latest_checkpoint(dir.path(), "model:ffff data:bbbb config:ffff"); });
  EXPECT_NE(message.find("model, config fingerprints differ"), std::string::npos) << message;

  // The same fingerprint loads.
  EXPECT_TRUE(load_latest_checkpoint(dir.path(), "model:aaaa data:bbbb config:cccc").has_value());
}

TEST(Checkpoint, BadArrayNamesAreRefusedBeforeWriting) {
  TempDir dir;
  TrainState state = sample_state(1);
  state.adapter[1].name = "layers/0/lora_A";
  state.adam_m.clear();
  state.adam_v.clear();
  EXPECT_THROW(save_checkpoint(dir / "ckpt", state, 2), InputError);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "step-00000001.h5"));
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "latest"));
}

TEST(Checkpoint, InconsistentStateIsRefused) {
  TempDir dir;
  TrainState state = sample_state(1);
  state.adapter[0].values.pop_back();  // values no longer match the shape
  EXPECT_THROW(save_checkpoint(dir.path(), state, 2), Error);
  state = sample_state(1);
  state.adam_v.pop_back();  // moments no longer match the adapter
  EXPECT_THROW(save_checkpoint(dir.path(), state, 2), Error);
  EXPECT_FALSE(fs::exists(dir / "latest"));
}

// ----------------------------------------------------------------------------------------------------------

const fs::path kShardedModel = slearn::testing::fixtures_dir() / "models" / "qwen2-untied-theta1e6";

bool is_hex32(const std::string& text) {
  return text.size() == 32 &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

TEST(Fingerprint, ModelIsStableAndFollowsConfigAndShards) {
  const std::string first = fingerprint_model(kShardedModel);
  EXPECT_TRUE(is_hex32(first)) << first;
  EXPECT_EQ(first, fingerprint_model(kShardedModel));

  TempDir dir;
  const fs::path copy = dir / "model";
  fs::copy(kShardedModel, copy, fs::copy_options::recursive);
  EXPECT_EQ(first, fingerprint_model(copy)) << "the directory's location is not part of the model";

  // Files other than config.json and the safetensors do not count.
  write_text(copy / "README.md", "notes\n");
  EXPECT_EQ(first, fingerprint_model(copy));

  const std::string config = read_file(copy / "config.json");
  write_text(copy / "config.json", config + " ");
  const std::string changed = fingerprint_model(copy);
  EXPECT_TRUE(is_hex32(changed));
  EXPECT_NE(first, changed);
  write_text(copy / "config.json", config);
  EXPECT_EQ(first, fingerprint_model(copy));

  // A shard that grows (another size) or goes away changes it.
  const fs::path shard = copy / "model-00002-of-00003.safetensors";
  const std::string bytes = read_file(shard);
  write_text(shard, bytes + std::string(8, '\0'));
  EXPECT_NE(first, fingerprint_model(copy));
  write_text(shard, bytes);
  EXPECT_EQ(first, fingerprint_model(copy));
  // By design the tensor data is not read (cheap for huge models): only names, sizes and headers count.
  std::string flipped = bytes;
  flipped.back() = static_cast<char>(flipped.back() ^ 0x01);
  write_text(shard, flipped);
  EXPECT_EQ(first, fingerprint_model(copy));
  write_text(shard, bytes);
  fs::rename(shard, copy / "renamed.safetensors");
  EXPECT_NE(first, fingerprint_model(copy));
}

TEST(Fingerprint, ModelWithoutConfigIsAnInputError) {
  TempDir dir;
  fs::copy(kShardedModel, dir / "model", fs::copy_options::recursive);
  fs::remove(dir / "model" / "config.json");
  EXPECT_THROW(fingerprint_model(dir / "model"), InputError);
  EXPECT_THROW(fingerprint_model(dir / "missing"), InputError);
}

TEST(Fingerprint, CorruptSafetensorsHeaderIsAnInputError) {
  TempDir dir;
  fs::copy(kShardedModel, dir / "model", fs::copy_options::recursive);
  write_text(dir / "model" / "model-00001-of-00003.safetensors", std::string("\xff\xff\xff\xff\x00\x00\x00\x00{}", 10));
  EXPECT_THROW(fingerprint_model(dir / "model"), InputError);
}

TEST(Fingerprint, FileAndTextAgree) {
  TempDir dir;
  std::string big(3 * (1 << 20) + 17, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) ^ (i >> 9));
  write_text(dir / "data.jsonl", big);
  const std::string hash = fingerprint_file(dir / "data.jsonl");
  EXPECT_TRUE(is_hex32(hash)) << hash;
  EXPECT_EQ(hash, fingerprint_text(big));
  EXPECT_NE(hash, fingerprint_text(big.substr(1)));
  EXPECT_TRUE(is_hex32(fingerprint_text("")));
  EXPECT_NE(fingerprint_text("a"), fingerprint_text("b"));
  EXPECT_EQ(fingerprint_text("lora: {r: 8}"), fingerprint_text("lora: {r: 8}"));
  EXPECT_THROW(fingerprint_file(dir / "missing.jsonl"), InputError);
}

}  // namespace
