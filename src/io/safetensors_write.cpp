// Writing safetensors files: header padded with spaces to a multiple of 8 bytes, tensors in name order,
// written to a temporary file that is flushed and renamed over the destination.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "io/io_util.hpp"
#include "slearn/error.hpp"
#include "slearn/safetensors.hpp"

namespace slearn {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using io_detail::shape_to_string;

// Closes the descriptor and removes the temporary file unless the write completed.
class TempFile {
 public:
  explicit TempFile(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(path_.string() + ": cannot create: " + std::strerror(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* data, std::size_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw Error(path_.string() + ": write failed: " + std::strerror(errno));
      }
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }

  // fsync, close, rename over `destination`, then fsync the directory so the rename itself is durable.
  void commit(const std::filesystem::path& destination) {
    if (::fsync(fd_) != 0) throw Error(path_.string() + ": fsync failed: " + std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Error(path_.string() + ": close failed: " + std::strerror(errno));
    if (::rename(path_.c_str(), destination.c_str()) != 0) {
      throw Error(destination.string() + ": cannot rename " + path_.string() + " over it: " + std::strerror(errno));
    }
    committed_ = true;
    auto dir = destination.parent_path();
    if (dir.empty()) dir = ".";
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
      (void)::fsync(dir_fd);  // best effort: some file systems refuse fsync on directories
      ::close(dir_fd);
    }
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->name < b->name; });

  // The header: __metadata__ first (when given), then the tensors in name order with contiguous offsets.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& meta = header["__metadata__"];
    meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const auto& t = *order[i];
    const std::string where = path.string() + ": tensor \"" + t.name + "\": ";
    if (t.name.empty() || t.name == "__metadata__") throw Error(path.string() + ": invalid tensor name \"" + t.name + "\"");
    if (i > 0 && order[i - 1]->name == t.name) throw Error(where + "given twice");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16) {
      throw Error(where + "cannot write dtype " + std::string(dtype_name(t.dtype)) + " (F32, F16 or BF16 only)");
    }
    std::uint64_t elements = 1;
    for (const auto dim : t.shape) {
      if (dim < 0) throw Error(where + "negative dimension in shape " + shape_to_string(t.shape));
      elements *= static_cast<std::uint64_t>(dim);
    }
    if (elements != t.values.size()) {
      throw Error(where + "shape " + shape_to_string(t.shape) + " holds " + std::to_string(elements) +
                  " elements but " + std::to_string(t.values.size()) + " values were given");
    }
    const std::uint64_t end = offset + elements * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  TempFile out(path.string() + ".tmp." + std::to_string(::getpid()));
  const auto header_size = static_cast<std::uint64_t>(header_text.size());
  out.write(&header_size, sizeof header_size);
  out.write(header_text.data(), header_text.size());

  constexpr std::size_t kChunk = std::size_t{1} << 18;  // elements converted per write
  std::vector<std::uint16_t> buffer;
  for (const auto* t : order) {
    const float* values = t->values.data();
    const std::size_t count = t->values.size();
    if (t->dtype == DType::F32) {
      out.write(values, count * sizeof(float));
      continue;
    }
    buffer.resize(std::min(count, kChunk));
    for (std::size_t first = 0; first < count; first += kChunk) {
      const std::size_t n = std::min(kChunk, count - first);
      if (t->dtype == DType::BF16) {
        for (std::size_t i = 0; i < n; ++i) buffer[i] = f32_to_bf16(values[first + i]);
      } else {
        for (std::size_t i = 0; i < n; ++i) buffer[i] = f32_to_f16(values[first + i]);
      }
      out.write(buffer.data(), n * sizeof(std::uint16_t));
    }
  }
  out.commit(path);
}

}  // namespace slearn
