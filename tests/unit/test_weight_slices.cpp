// WeightStore's tensor-parallel reads: every rank's row and column slices of a checkpoint in F32, BF16 and
// F16 are bit for bit the matching part of read_f32's full tensor, the slices of all ranks put together are
// the full tensor, and bad requests are refused naming the tensor; even_slice's splits and refusals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "slearn/dtype.hpp"
#include "slearn/error.hpp"
#include "slearn/safetensors.hpp"
#include "test_helpers.hpp"

namespace {

using namespace slearn;
namespace fs = std::filesystem;

using slearn::testing::TempDir;
using slearn::testing::input_error;

#define EXPECT_CONTAINS(text, needle) \
  EXPECT_NE(std::string(text).find(needle), std::string::npos) << "message: " << (text) << "\nlacks: " << (needle)

// Values with many mantissa bits and exponents from about 2^-20 to 2^10, both signs, so that every dtype
// rounds them and a slice taken from the wrong place or converted differently shows.
std::vector<float> varied_values(std::size_t count, std::uint32_t seed) {
  std::vector<float> values(count);
  std::uint32_t state = seed;
  for (auto& value : values) {
    state = state * 1664525u + 1013904223u;
    const float mantissa = 1.0f + static_cast<float>(state >> 9) / static_cast<float>(1u << 23);
    const int exponent = static_cast<int>((state >> 3) % 31u) - 20;
    value = std::ldexp((state & 1u) != 0 ? -mantissa : mantissa, exponent);
  }
  return values;
}

std::vector<std::uint32_t> bits_of(const float* values, std::size_t count) {
  std::vector<std::uint32_t> bits(count);
  std::memcpy(bits.data(), values, count * sizeof(float));
  return bits;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const auto dim : shape) n *= dim;
  return n;
}

const std::vector<std::int64_t> kMatrix = {6, 8};   // rows split by 1, 2, 3; columns by 1, 2 (and 4)
const std::vector<std::int64_t> kWide = {4, 6};     // columns split by 1, 2, 3
const std::vector<std::int64_t> kBias = {6};
const std::vector<std::int64_t> kCube = {6, 2, 3};  // rows of 2 x 3
const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

std::string tensor_name(const std::string& base, DType dtype) { return base + "." + std::string(dtype_name(dtype)); }

// One checkpoint holding each shape above in each dtype.
class WeightSlices : public ::testing::Test {
 protected:
  void SetUp() override {
    const struct {
      const char* base;
      std::vector<std::int64_t> shape;
    } layouts[] = {{"matrix", kMatrix}, {"wide", kWide}, {"bias", kBias}, {"cube", kCube}};
    std::vector<TensorToWrite> tensors;
    std::uint32_t seed = 1;
    for (const auto& layout : layouts) {
      for (const DType dtype : kDtypes) {
        values_.push_back(varied_values(static_cast<std::size_t>(numel(layout.shape)), seed++));
        tensors.push_back({tensor_name(layout.base, dtype), layout.shape, dtype, {}});
      }
    }
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = values_[i];  // values_ no longer grows
    write_safetensors(dir_ / "model.safetensors", tensors);
    store_ = std::make_unique<WeightStore>(WeightStore::open(dir_.path()));
  }

  std::vector<float> full(const std::string& name, const std::vector<std::int64_t>& shape) const {
    std::vector<float> out(static_cast<std::size_t>(numel(shape)));
    store_->read_f32(name, shape, out.data());
    return out;
  }

  TempDir dir_;
  std::vector<std::vector<float>> values_;
  std::unique_ptr<WeightStore> store_;
};

// Each rank's rows are rows [first, first + count) of the full tensor, and the ranks' rows in rank order are
// the full tensor, for every rank (matrices, biases and 3-D tensors alike).
TEST_F(WeightSlices, RowSlicesOfEveryRankMatchTheFullTensor) {
  for (const auto& shape : {kMatrix, kBias, kCube}) {
    const std::string base = shape == kMatrix ? "matrix" : (shape == kBias ? "bias" : "cube");
    const std::int64_t row_size = numel(shape) / shape[0];
    for (const DType dtype : kDtypes) {
      const std::string name = tensor_name(base, dtype);
      const auto whole = full(name, shape);
      for (const int parts : {1, 2, 3}) {
        SCOPED_TRACE(name + " over " + std::to_string(parts) + " ranks");
        std::vector<float> joined;
        for (int rank = 0; rank < parts; ++rank) {
          const Slice rows = even_slice(shape[0], parts, rank);
          std::vector<float> slice(static_cast<std::size_t>(rows.count * row_size), std::nanf(""));
          store_->read_rows_f32(name, shape, rows.first, rows.count, slice.data());
          const float* expected = whole.data() + rows.first * row_size;
          EXPECT_EQ(bits_of(slice.data(), slice.size()), bits_of(expected, slice.size())) << "rank " << rank;
          joined.insert(joined.end(), slice.begin(), slice.end());
        }
        EXPECT_EQ(bits_of(joined.data(), joined.size()), bits_of(whole.data(), whole.size()));
      }
    }
  }
}

// Each rank's columns are columns [first, first + count) of every row, [rows, count] row-major; the ranks'
// columns side by side are the full matrix.
TEST_F(WeightSlices, ColumnSlicesOfEveryRankMatchTheFullTensor) {
  for (const auto& shape : {kMatrix, kWide}) {
    const std::string base = shape == kMatrix ? "matrix" : "wide";
    const std::int64_t rows = shape[0];
    const std::int64_t cols = shape[1];
    for (const DType dtype : kDtypes) {
      const std::string name = tensor_name(base, dtype);
      const auto whole = full(name, shape);
      for (const int parts : {1, 2, 3, 4}) {
        if (cols % parts != 0) {
          EXPECT_CONTAINS(input_error([&] { even_slice(cols, parts, 0); }), std::to_string(cols));
          continue;
        }
        SCOPED_TRACE(name + " over " + std::to_string(parts) + " ranks");
        std::vector<float> joined(whole.size(), std::nanf(""));
        for (int rank = 0; rank < parts; ++rank) {
          const Slice columns = even_slice(cols, parts, rank);
          std::vector<float> slice(static_cast<std::size_t>(rows * columns.count), std::nanf(""));
          store_->read_columns_f32(name, shape, columns.first, columns.count, slice.data());
          std::vector<float> expected;
          for (std::int64_t r = 0; r < rows; ++r) {
            const auto row = whole.begin() + r * cols + columns.first;
            expected.insert(expected.end(), row, row + columns.count);
            std::copy(slice.begin() + r * columns.count, slice.begin() + (r + 1) * columns.count,
                      joined.begin() + r * cols + columns.first);
          }
          EXPECT_EQ(bits_of(slice.data(), slice.size()), bits_of(expected.data(), expected.size()))
              << "rank " << rank;
        }
        EXPECT_EQ(bits_of(joined.data(), joined.size()), bits_of(whole.data(), whole.size()));
      }
    }
  }
}

// Any range inside the tensor works, not only even ones, and an empty one writes nothing.
TEST_F(WeightSlices, UnevenAndEmptyRanges) {
  const std::string name = tensor_name("matrix", DType::BF16);
  const auto whole = full(name, kMatrix);
  std::vector<float> out(48, -7.0f);
  store_->read_rows_f32(name, kMatrix, 5, 1, out.data());
  EXPECT_EQ(bits_of(out.data(), 8), bits_of(whole.data() + 40, 8));
  store_->read_columns_f32(name, kMatrix, 3, 5, out.data());
  for (std::int64_t r = 0; r < 6; ++r) {
    EXPECT_EQ(bits_of(out.data() + r * 5, 5), bits_of(whole.data() + r * 8 + 3, 5)) << "row " << r;
  }
  std::fill(out.begin(), out.end(), -7.0f);
  store_->read_rows_f32(name, kMatrix, 6, 0, out.data());
  store_->read_columns_f32(name, kMatrix, 8, 0, out.data());
  EXPECT_EQ(out, std::vector<float>(48, -7.0f));
}

TEST_F(WeightSlices, OutOfRangeRequestsNameTheTensorTheRangeAndTheExtent) {
  const std::string name = tensor_name("matrix", DType::F16);
  std::vector<float> out(48);
  auto message = input_error([&] { store_->read_rows_f32(name, kMatrix, 4, 3, out.data()); });
  EXPECT_CONTAINS(message, "model.safetensors");
  EXPECT_CONTAINS(message, "\"" + name + "\"");
  EXPECT_CONTAINS(message, "rows [4, 7)");
  EXPECT_CONTAINS(message, "6 rows");
  EXPECT_CONTAINS(input_error([&] { store_->read_rows_f32(name, kMatrix, -1, 2, out.data()); }), "rows [-1, 1)");
  EXPECT_CONTAINS(input_error([&] { store_->read_rows_f32(name, kMatrix, 2, -1, out.data()); }), "rows [2, 1)");
  constexpr auto kHuge = std::numeric_limits<std::int64_t>::max();
  EXPECT_CONTAINS(input_error([&] { store_->read_rows_f32(name, kMatrix, 2, kHuge, out.data()); }),
                  "rows [2, 2 + " + std::to_string(kHuge) + ")");

  message = input_error([&] { store_->read_columns_f32(name, kMatrix, 6, 4, out.data()); });
  EXPECT_CONTAINS(message, "\"" + name + "\"");
  EXPECT_CONTAINS(message, "columns [6, 10)");
  EXPECT_CONTAINS(message, "8 columns");
  EXPECT_CONTAINS(input_error([&] { store_->read_columns_f32(name, kMatrix, 9, 0, out.data()); }),
                  "columns [9, 9)");
  EXPECT_CONTAINS(input_error([&] { store_->read_columns_f32(name, kMatrix, kHuge, kHuge, out.data()); }),
                  "\"" + name + "\"");
}

TEST_F(WeightSlices, WrongShapeAndMissingTensorsAreRefusedAsReadF32RefusesThem) {
  const std::string name = tensor_name("matrix", DType::F32);
  std::vector<float> out(48);
  for (const auto& request : std::vector<std::function<void()>>{
           [&] { store_->read_rows_f32(name, {8, 6}, 0, 1, out.data()); },
           [&] { store_->read_columns_f32(name, {8, 6}, 0, 1, out.data()); }}) {
    const auto message = input_error(request);
    EXPECT_CONTAINS(message, "\"" + name + "\"");
    EXPECT_CONTAINS(message, "[6, 8]");
    EXPECT_CONTAINS(message, "expected [8, 6]");
  }
  EXPECT_CONTAINS(input_error([&] { store_->read_rows_f32("ghost.weight", {6}, 0, 1, out.data()); }),
                  "\"ghost.weight\" is missing");
  EXPECT_CONTAINS(input_error([&] { store_->read_columns_f32("ghost.weight", {6, 8}, 0, 1, out.data()); }),
                  "\"ghost.weight\" is missing");
}

// Column slices are for the row-parallel matrices: a bias or a 3-D tensor has no columns to take.
TEST_F(WeightSlices, ColumnSlicesNeedAMatrix) {
  std::vector<float> out(36);
  const std::string bias = tensor_name("bias", DType::BF16);
  auto message = input_error([&] { store_->read_columns_f32(bias, kBias, 0, 3, out.data()); });
  EXPECT_CONTAINS(message, "\"" + bias + "\"");
  EXPECT_CONTAINS(message, "shape [6]");
  EXPECT_CONTAINS(message, "2-D");
  const std::string cube = tensor_name("cube", DType::F32);
  message = input_error([&] { store_->read_columns_f32(cube, kCube, 0, 1, out.data()); });
  EXPECT_CONTAINS(message, "\"" + cube + "\"");
  EXPECT_CONTAINS(message, "2-D");
}

TEST(WeightSlicesDtype, IntegerTensorsAndScalarsAreRefused) {
  TempDir dir;
  const std::vector<float> one = {1.0f};
  write_safetensors(dir / "model.safetensors", {{"scalar", {}, DType::F32, one}});
  const auto store = WeightStore::open(dir.path());
  float out[1];
  EXPECT_CONTAINS(input_error([&] { store.read_rows_f32("scalar", {}, 0, 1, out); }), "\"scalar\" is a scalar");

  // An integer tensor (raw file: the writer writes floating-point dtypes only).
  TempDir raw;
  const std::string header = R"({"ids":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
  std::string bytes(8, '\0');
  for (std::size_t i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header + std::string(16, '\0');
  {
    std::FILE* file = std::fopen((raw / "model.safetensors").c_str(), "wb");
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), file), bytes.size());
    std::fclose(file);
  }
  const auto ids = WeightStore::open(raw.path());
  float four[4];
  EXPECT_CONTAINS(input_error([&] { ids.read_rows_f32("ids", {2, 2}, 0, 1, four); }), "I32");
  EXPECT_CONTAINS(input_error([&] { ids.read_columns_f32("ids", {2, 2}, 0, 1, four); }), "I32");
}

TEST(EvenSlice, SplitsEvenlyInRankOrder) {
  const Slice whole = even_slice(6, 1, 0);
  EXPECT_EQ(whole.first, 0);
  EXPECT_EQ(whole.count, 6);
  for (int index = 0; index < 4; ++index) {
    const Slice part = even_slice(4096, 4, index);
    EXPECT_EQ(part.first, 1024 * index);
    EXPECT_EQ(part.count, 1024);
  }
  const Slice empty = even_slice(0, 3, 2);
  EXPECT_EQ(empty.first, 0);
  EXPECT_EQ(empty.count, 0);
}

TEST(EvenSlice, RefusesUnevenSplitsAndBadParts) {
  const auto message = input_error([] { even_slice(14, 4, 1); });
  EXPECT_CONTAINS(message, "14");
  EXPECT_CONTAINS(message, "4 parts");
  // A bad part index or count is the caller's bug: Error, not InputError.
  for (const auto& [parts, index] : {std::pair{0, 0}, std::pair{2, 2}, std::pair{2, -1}}) {
    try {
      even_slice(8, parts, index);
      ADD_FAILURE() << "expected Error for part " << index << " of " << parts;
    } catch (const InputError& e) {
      ADD_FAILURE() << "expected Error, not InputError: " << e.what();
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.what(), std::to_string(parts) + " parts");
    }
  }
}

}  // namespace
