// Reading safetensors files through mmap, validated as the reference implementation validates them.
// (The model-directory WeightStore is in weight_store.cpp, the writer in safetensors_write.cpp.)
#include "slearn/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>
#include <string_view>

#include "io/io_util.hpp"
#include "slearn/error.hpp"

namespace slearn {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code reads it in place");

namespace {

using nlohmann::json;
using io_detail::json_type_name;
using io_detail::shape_to_string;

// The reference implementation refuses headers above this size.
constexpr std::uint64_t kMaxHeaderSize = 100'000'000;
// And, as its JSON parser (serde_json) does, JSON nested deeper than this: json::dump recurses, so showing a
// deeper value in a message would overflow the stack.
constexpr int kMaxHeaderDepth = 128;

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw InputError(path.string() + ": " + what);
}

[[noreturn]] void fail_tensor(const std::filesystem::path& path, const std::string& tensor,
                              const std::string& what) {
  throw InputError(path.string() + ": tensor \"" + tensor + "\": " + what);
}

// The byte offset of the first invalid UTF-8 sequence in `text`, or npos when it is all valid.
std::size_t invalid_utf8_offset(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t length;
    std::uint32_t code;
    std::uint32_t minimum;
    if ((c & 0xe0) == 0xc0) {
      length = 2, code = c & 0x1fu, minimum = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      length = 3, code = c & 0x0fu, minimum = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      length = 4, code = c & 0x07u, minimum = 0x10000;
    } else {
      return i;
    }
    if (n - i < length) return i;
    for (std::size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      code = (code << 6) | (s[i + k] & 0x3fu);
    }
    if (code < minimum || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return i;
    i += length;
  }
  return std::string_view::npos;
}

// A non-negative JSON integer that fits in int64, or nullopt.
std::optional<std::uint64_t> as_size(const json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const auto v = value.get<std::uint64_t>();
  if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  return v;
}

TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name, const json& entry) {
  if (!entry.is_object()) {
    fail_tensor(path, name, "expected an object with dtype, shape and data_offsets, found " + json_type_name(entry));
  }
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) fail_tensor(path, name, "missing \"dtype\"");
  if (!dtype_it->is_string()) fail_tensor(path, name, "\"dtype\" must be a string, found " + json_type_name(*dtype_it));
  const auto& dtype_text = dtype_it->get_ref<const std::string&>();
  try {
    info.dtype = dtype_from_name(dtype_text);
  } catch (const InputError&) {
    fail_tensor(path, name, "dtype \"" + dtype_text + "\" is not supported (expected one of F32, F16, BF16, I32, I64, U8)");
  }

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) fail_tensor(path, name, "missing \"shape\"");
  if (!shape_it->is_array()) fail_tensor(path, name, "\"shape\" must be an array, found " + json_type_name(*shape_it));
  std::uint64_t elements = 1;
  bool overflow = false;
  for (const auto& dim : *shape_it) {
    const auto size = as_size(dim);
    if (!size) {
      fail_tensor(path, name, "\"shape\" must hold non-negative integers, found " + dim.dump());
    }
    info.shape.push_back(static_cast<std::int64_t>(*size));
    overflow = overflow || __builtin_mul_overflow(elements, *size, &elements);
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) fail_tensor(path, name, "missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    fail_tensor(path, name, "\"data_offsets\" must be an array [begin, end], found " + offsets_it->dump());
  }
  const auto begin = as_size((*offsets_it)[0]);
  const auto end = as_size((*offsets_it)[1]);
  if (!begin || !end) {
    fail_tensor(path, name, "\"data_offsets\" must hold two non-negative integers, found " + offsets_it->dump());
  }
  if (*begin > *end) {
    fail_tensor(path, name, "data_offsets [" + std::to_string(*begin) + ", " + std::to_string(*end) +
                                "]: begin is past end");
  }
  info.begin = *begin;
  info.end = *end;

  std::uint64_t expected_bytes = 0;
  overflow = overflow || __builtin_mul_overflow(elements, dtype_size(info.dtype), &expected_bytes);
  if (overflow) fail_tensor(path, name, "shape " + shape_to_string(info.shape) + " is too large");
  if (info.end - info.begin != expected_bytes) {
    fail_tensor(path, name,
                "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "] span " +
                    std::to_string(info.end - info.begin) + " bytes, but shape " + shape_to_string(info.shape) +
                    " of " + std::string(dtype_name(info.dtype)) + " needs " + std::to_string(expected_bytes) +
                    " bytes");
  }
  return info;
}

}  // namespace

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (const auto dim : shape) n *= dim;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) {
    ::munmap(const_cast<std::byte*>(mapping_), mapping_size_);
  }
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    // strerror's "Too many levels of symbolic links" does not say that the links go round in a circle.
    if (err == ELOOP)
      fail(path, "a symlink loop (too many levels of symbolic links) where a safetensors file was expected");
    fail(path, std::string("cannot open: ") + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(file_size) +
                   " bytes, shorter than the 8-byte header length that starts a safetensors file");
  }
  void* mapped = ::mmap(nullptr, static_cast<std::size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapped == MAP_FAILED) fail(path, std::string("cannot mmap: ") + std::strerror(map_errno));
  file->mapping_ = static_cast<const std::byte*>(mapped);
  file->mapping_size_ = static_cast<std::size_t>(file_size);
  // Weights are read front to back, once: ask for aggressive read-ahead. A hint only, so failure is fine.
  (void)::madvise(mapped, file->mapping_size_, MADV_SEQUENTIAL);

  std::uint64_t header_size;
  std::memcpy(&header_size, file->mapping_, sizeof header_size);
  if (header_size > kMaxHeaderSize) {
    fail(path, "header length " + std::to_string(header_size) + " is above the limit of " +
                   std::to_string(kMaxHeaderSize) + " bytes (not a safetensors file?)");
  }
  if (header_size > file_size - 8) {
    fail(path, "header length " + std::to_string(header_size) + " runs past the end of the file (at most " +
                   std::to_string(file_size - 8) + " bytes follow the length)");
  }
  const std::string_view header(reinterpret_cast<const char*>(file->mapping_) + 8,
                                static_cast<std::size_t>(header_size));
  if (const auto bad = invalid_utf8_offset(header); bad != std::string_view::npos) {
    fail(path, "header is not valid UTF-8 (at byte " + std::to_string(bad) + " of the header)");
  }
  json root;
  try {
    root = json::parse(header, [&path](int depth, json::parse_event_t, json&) {
      if (depth > kMaxHeaderDepth)
        fail(path, "header nests JSON values deeper than " + std::to_string(kMaxHeaderDepth) + " levels");
      return true;
    });
  } catch (const json::exception& e) {
    fail(path, "header is not valid JSON (" + io_detail::json_error_text(e) + ")");
  }
  if (!root.is_object()) fail(path, "header must be a JSON object, found " + json_type_name(root));

  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(path, "\"__metadata__\" must be an object of strings, found " + json_type_name(value));
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string()) {
          fail(path, "\"__metadata__\" entry \"" + meta_key + "\" must be a string, found " + json_type_name(meta_value));
        }
        file->metadata_.emplace(meta_key, meta_value.get<std::string>());
      }
      continue;
    }
    file->tensors_.push_back(parse_entry(path, key, value));
  }

  // Sorted by (begin, end), the tensors must tile the data section from 0 without gaps or overlaps
  // (zero-size tensors sit anywhere a boundary is).
  std::sort(file->tensors_.begin(), file->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : (a.end != b.end ? a.end < b.end : a.name < b.name);
  });
  std::uint64_t position = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& info : file->tensors_) {
    if (info.begin != position) {
      const std::string previous_end =
          previous == nullptr ? "the data section starts at byte 0"
                              : "the previous tensor \"" + previous->name + "\" ends at byte " + std::to_string(position);
      const std::string problem =
          info.begin < position ? "overlaps it"
                                : "leaves a gap of " + std::to_string(info.begin - position) + " bytes";
      fail_tensor(path, info.name,
                  "data_offsets begin at byte " + std::to_string(info.begin) + ", expected " +
                      std::to_string(position) + ": " + previous_end + " and this tensor " + problem +
                      " (tensor data must be contiguous)");
    }
    position = info.end;
    previous = &info;
  }
  const std::uint64_t expected_size = 8 + header_size + position;
  if (expected_size != file_size) {
    const std::string tail = previous == nullptr ? "no tensor data" : "data ending at byte " + std::to_string(position) +
                                                                           " (tensor \"" + previous->name + "\")";
    if (expected_size < file_size) {
      fail(path, "file is " + std::to_string(file_size) + " bytes but the header describes " +
                     std::to_string(expected_size) + " (8 + " + std::to_string(header_size) + "-byte header + " +
                     tail + "): " + std::to_string(file_size - expected_size) + " trailing bytes after the data");
    }
    fail(path, "file is " + std::to_string(file_size) + " bytes but the header describes " +
                   std::to_string(expected_size) + " (8 + " + std::to_string(header_size) + "-byte header + " +
                   tail + "): the data is truncated");
  }

  file->data_ = file->mapping_ + 8 + header_size;
  for (std::size_t i = 0; i < file->tensors_.size(); ++i) file->index_.emplace(file->tensors_[i].name, i);
  return file;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& info) const {
  const std::size_t data_size = mapping_size_ - static_cast<std::size_t>(data_ - mapping_);
  if (info.begin > info.end || info.end > data_size) {
    throw Error(path_.string() + ": tensor \"" + info.name + "\" is not a tensor of this file");
  }
  return {data_ + info.begin, static_cast<std::size_t>(info.end - info.begin)};
}

}  // namespace slearn
