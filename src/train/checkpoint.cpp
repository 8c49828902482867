// Training checkpoints in HDF5 (C API). Layout of a checkpoint file, format_version 2:
//   /                 attributes format_version, step, epoch, position (int64) and xxh3_64 (uint64): the checksum
//                     of the four scalars
//   /rng_state        scalar fixed-length UTF-8 string dataset (null dataspace when the string is empty)
//   /config_yaml      likewise
//   /fingerprint      likewise
//   /adapter/<name>   one float32 dataset per array, dims = shape, int64 attribute `index` = position in the
//   /adam_m/<name>    list (HDF5 lists links alphabetically, so the order is stored explicitly)
//   /adam_v/<name>
// Every dataset carries a uint64 attribute xxh3_64: XXH3-64 (seed 0) of a little-endian byte record, so the
// value is the same on every host and can be recomputed outside slearn:
//   root scalars      format_version, step, epoch, position, each as 8 bytes
//   string dataset    the string's bytes exactly (nothing for an empty string)
//   array dataset     the name's length (8 bytes) and bytes, the rank (8 bytes), each dimension (8 bytes), the
//                     index (8 bytes), then the values as IEEE float32 (4 bytes each)
// HDF5 checks none of this (raw data has no checksum in HDF5, nor do v1 object headers): without ours, bytes
// overwritten in the middle of a file load as garbage weights. Loading verifies every checksum and refuses a
// mismatch; a version-1 file (no checksums) is refused rather than trusted.
// Files are byte-reproducible: object time tracking is off, so the same TrainState always gives the same bytes.
// Saving writes step-NNNNNNNN.h5.tmp, flushes, fsyncs and renames it, then replaces `latest` the same way;
// a crash at any point leaves either the previous checkpoint or the new one as `latest`, never a torn file.
#include "slearn/checkpoint.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <system_error>
#include <utility>

#include "slearn/error.hpp"

namespace slearn {

namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kFormatVersion = 2;
constexpr std::int64_t kFirstVersionWithChecksums = 2;
constexpr const char* kLatestName = "latest";
constexpr const char* kLatestTemporary = "latest.tmp";
constexpr const char* kIndexAttribute = "index";
constexpr const char* kChecksumAttribute = "xxh3_64";
constexpr std::uintmax_t kMaxLatestSize = 4096;

// ---------------------------------------------------------------------------------------------------------
// HDF5 plumbing: a per-call session (lock + silenced error printing), error reporting, owning handles.

std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Held by every public entry point: serialises this module's HDF5 use and turns off HDF5's automatic
// printing of its error stack to stderr. (In a thread-safe HDF5 build that setting is per thread, so it is
// applied on every call rather than once.)
class Hdf5Session {
 public:
  Hdf5Session() : lock_(hdf5_mutex()) { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

 private:
  std::lock_guard<std::mutex> lock_;
};

// Where a failure happened: the file, and whether it is being read (a bad file is the user's to fix:
// InputError) or written (an I/O failure: Error).
struct Where {
  fs::path file;
  bool reading;
};

herr_t first_description(unsigned /*n*/, const H5E_error2_t* error, void* data) {
  auto* detail = static_cast<std::string*>(data);
  if (detail->empty() && error != nullptr && error->desc != nullptr && error->desc[0] != '\0') {
    *detail = error->desc;
  }
  return 0;
}

// `text` on one line: every run of whitespace or other control characters becomes one space, none at the ends.
// HDF5's details are not always one line (a failed write's detail gives the time as ctime() prints it, with its
// newline), and an error must be one line on stderr and in logs.
std::string one_line(std::string_view text) {
  std::string line;
  bool gap = false;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f || byte == ' ') {
      gap = true;
      continue;
    }
    if (gap && !line.empty()) line += ' ';
    gap = false;
    line += c;
  }
  return line;
}

// The most specific message on HDF5's error stack (e.g. "truncated file: eof = ..."), on one line, and clears
// the stack.
std::string hdf5_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_description, &detail);
  H5Eclear2(H5E_DEFAULT);
  return one_line(detail);
}

[[noreturn]] void fail(const Where& where, const std::string& what, bool with_hdf5_detail = false) {
  std::string message = where.file.string() + ": " + what;
  if (with_hdf5_detail) {
    const std::string detail = hdf5_detail();
    if (!detail.empty()) message += " (HDF5: " + detail + ")";
  }
  if (where.reading) throw InputError(message);
  throw Error(message);
}

hid_t check_id(hid_t id, const Where& where, const char* call, const std::string& object = {}) {
  if (id < 0) {
    fail(where, std::string(where.reading ? "corrupt or unreadable checkpoint: " : "cannot write the checkpoint: ") +
                    call + " failed" + (object.empty() ? "" : " for " + object),
         true);
  }
  return id;
}

void check(herr_t rc, const Where& where, const char* call, const std::string& object = {}) {
  if (rc < 0) check_id(-1, where, call, object);
}

// Owns an HDF5 identifier and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() {
    if (id_ >= 0) closer_(id_);
  }
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, -1)), closer_(other.closer_) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle& operator=(Handle&&) = delete;

  hid_t get() const { return id_; }
  // Closes now; the caller checks the result (a failed H5Fclose can mean data never reached the disk).
  herr_t close() { return closer_(std::exchange(id_, -1)); }

 private:
  hid_t id_;
  Closer closer_;
};

Handle make(hid_t id, Handle::Closer closer, const Where& where, const char* call, const std::string& object = {}) {
  return Handle(check_id(id, where, call, object), closer);
}

// File access properties: no file locking (checkpoints live on shared cluster filesystems where flock often
// fails, and nobody else opens a file while it is written under its temporary name).
Handle file_access(const Where& where) {
  Handle fapl = make(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, where, "H5Pcreate");
#if H5_VERSION_GE(1, 10, 7)
  check(H5Pset_file_locking(fapl.get(), false, true), where, "H5Pset_file_locking");
#endif
  return fapl;
}

// ---------------------------------------------------------------------------------------------------------
// Checksums: XXH3-64 over the little-endian byte records described at the top of this file.

class Checksum {
 public:
  Checksum() : state_(XXH3_createState()) {
    if (state_ == nullptr) throw Error("checkpoint: cannot allocate an xxh3 state");
    if (XXH3_64bits_reset(state_) != XXH_OK) {
      XXH3_freeState(state_);
      throw Error("checkpoint: cannot initialise an xxh3 state");
    }
  }
  ~Checksum() { XXH3_freeState(state_); }
  Checksum(const Checksum&) = delete;
  Checksum& operator=(const Checksum&) = delete;

  void add_bytes(const void* data, std::size_t size) {
    if (size != 0 && XXH3_64bits_update(state_, data, size) != XXH_OK) throw Error("checkpoint: xxh3 update failed");
  }
  void add_i64(std::int64_t value) {
    const auto bits = static_cast<std::uint64_t>(value);
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(bits >> (8 * i));
    add_bytes(bytes, sizeof bytes);
  }
  void add_floats(const std::vector<float>& values) {
    if constexpr (std::endian::native == std::endian::little) {
      add_bytes(values.data(), values.size() * sizeof(float));
    } else {
      // Swapped a block at a time rather than copying the whole array (moments can be hundreds of MB).
      constexpr std::size_t kBlock = 4096;
      std::uint32_t swapped[kBlock];
      for (std::size_t start = 0; start < values.size(); start += kBlock) {
        const std::size_t n = std::min(kBlock, values.size() - start);
        for (std::size_t i = 0; i < n; ++i) {
          const auto bits = std::bit_cast<std::uint32_t>(values[start + i]);
          swapped[i] = (bits >> 24) | ((bits >> 8) & 0xff00u) | ((bits << 8) & 0xff0000u) | (bits << 24);
        }
        add_bytes(swapped, n * sizeof(std::uint32_t));
      }
    }
  }
  std::uint64_t digest() const { return XXH3_64bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

std::uint64_t root_checksum(std::int64_t version, std::int64_t step, std::int64_t epoch, std::int64_t position) {
  Checksum checksum;
  for (const std::int64_t value : {version, step, epoch, position}) checksum.add_i64(value);
  return checksum.digest();
}

std::uint64_t string_checksum(const std::string& text) {
  Checksum checksum;
  checksum.add_bytes(text.data(), text.size());
  return checksum.digest();
}

// Covers the name, shape and index as well as the values: together they are everything an array is read as.
std::uint64_t array_checksum(const NamedArray& array, std::int64_t index) {
  Checksum checksum;
  checksum.add_i64(static_cast<std::int64_t>(array.name.size()));
  checksum.add_bytes(array.name.data(), array.name.size());
  checksum.add_i64(static_cast<std::int64_t>(array.shape.size()));
  for (const std::int64_t dim : array.shape) checksum.add_i64(dim);
  checksum.add_i64(index);
  checksum.add_floats(array.values);
  return checksum.digest();
}

// ---------------------------------------------------------------------------------------------------------
// Names and validation.

std::string step_file_name(std::int64_t step) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "step-%08lld.h5", static_cast<long long>(step));
  return buffer;
}

// The step of "step-<digits>.h5" (with `suffix` after it), or -1 for any other name.
std::int64_t parse_step_file_name(const std::string& name, std::string_view suffix = {}) {
  constexpr std::string_view kPrefix = "step-";
  constexpr std::string_view kExtension = ".h5";
  std::string_view view = name;
  if (!view.starts_with(kPrefix) || !view.ends_with(suffix)) return -1;
  view.remove_prefix(kPrefix.size());
  view.remove_suffix(suffix.size());
  if (!view.ends_with(kExtension)) return -1;
  view.remove_suffix(kExtension.size());
  if (view.empty() || !std::all_of(view.begin(), view.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  std::int64_t step = 0;
  const auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), step);
  if (ec != std::errc() || end != view.data() + view.size()) return -1;
  return step;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Number of elements of `shape`, or nullopt when a dimension is negative or the product overflows.
std::optional<std::uint64_t> element_count(const std::vector<std::int64_t>& shape) {
  std::uint64_t count = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    const auto d = static_cast<std::uint64_t>(dim);
    if (d != 0 && count > std::numeric_limits<std::uint64_t>::max() / d) return std::nullopt;
    count *= d;
  }
  return count;
}

void validate_arrays(const std::vector<NamedArray>& arrays, const std::string& group, const fs::path& file) {
  std::set<std::string> seen;
  for (const NamedArray& array : arrays) {
    const std::string label = group + "/" + array.name;
    if (array.name.empty() || array.name == "." || array.name.find('/') != std::string::npos ||
        array.name.find('\0') != std::string::npos) {
      throw InputError(file.string() + ": cannot store array \"" + array.name + "\" in " + group +
                       ": an HDF5 dataset name must be non-empty and contain no '/' or NUL");
    }
    if (!seen.insert(array.name).second) {
      throw Error(file.string() + ": array " + label + " appears twice in the training state");
    }
    const auto count = element_count(array.shape);
    if (!count) throw Error(file.string() + ": array " + label + " has an invalid shape " + shape_text(array.shape));
    if (*count != array.values.size()) {
      throw Error(file.string() + ": array " + label + " has shape " + shape_text(array.shape) + " (" +
                  std::to_string(*count) + " elements) but " + std::to_string(array.values.size()) + " values");
    }
  }
}

// The moments are either empty (no optimizer step yet) or describe exactly the adapter's arrays.
// Returns a description of the first difference, or an empty string.
std::string moments_mismatch(const std::vector<NamedArray>& adapter, const std::vector<NamedArray>& moments,
                             const std::string& group) {
  if (moments.empty()) return {};
  if (moments.size() != adapter.size()) {
    return group + " holds " + std::to_string(moments.size()) + " arrays but adapter holds " +
           std::to_string(adapter.size());
  }
  for (std::size_t i = 0; i < adapter.size(); ++i) {
    if (moments[i].name != adapter[i].name) {
      return group + " array " + std::to_string(i) + " is \"" + moments[i].name + "\" but adapter array " +
             std::to_string(i) + " is \"" + adapter[i].name + "\"";
    }
    if (moments[i].shape != adapter[i].shape) {
      return group + "/" + moments[i].name + " has shape " + shape_text(moments[i].shape) +
             " but the adapter's has " + shape_text(adapter[i].shape);
    }
  }
  return {};
}

void validate_state(const TrainState& state, const fs::path& file) {
  if (state.step < 0 || state.epoch < 0 || state.position < 0) {
    throw Error(file.string() + ": negative step, epoch or position in the training state (" +
                std::to_string(state.step) + ", " + std::to_string(state.epoch) + ", " +
                std::to_string(state.position) + ")");
  }
  validate_arrays(state.adapter, "adapter", file);
  validate_arrays(state.adam_m, "adam_m", file);
  validate_arrays(state.adam_v, "adam_v", file);
  for (const auto* group : {"adam_m", "adam_v"}) {
    const auto& moments = std::string_view(group) == "adam_m" ? state.adam_m : state.adam_v;
    const std::string mismatch = moments_mismatch(state.adapter, moments, group);
    if (!mismatch.empty()) throw Error(file.string() + ": inconsistent training state: " + mismatch);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Plain files: fsync, small writes, renames.

void sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw Error(path.string() + ": cannot open to sync it to disk: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some filesystems cannot sync a directory; the rename is then as durable as they make it.
  if (rc != 0 && !(directory && (error == EINVAL || error == ENOTSUP))) {
    throw Error(path.string() + ": fsync failed: " + std::strerror(error));
  }
}

void write_file_synced(const fs::path& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path.string() + ": cannot create: " + std::strerror(errno));
  std::size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      throw Error(path.string() + ": write failed: " + std::strerror(error));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    throw Error(path.string() + ": fsync failed: " + std::strerror(error));
  }
  if (::close(fd) != 0) throw Error(path.string() + ": close failed: " + std::strerror(errno));
}

void rename_file(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) throw Error(from.string() + ": cannot rename to " + to.string() + ": " + ec.message());
}

void remove_file(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) throw Error(path.string() + ": cannot remove: " + ec.message());
}

// Removes a temporary file unless dismissed (a failed save leaves nothing behind).
class TemporaryFile {
 public:
  explicit TemporaryFile(fs::path path) : path_(std::move(path)) {}
  ~TemporaryFile() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  void dismiss() { path_.clear(); }

 private:
  fs::path path_;
};

// Names of the plain files in `dir` (a missing directory has none).
std::vector<std::string> list_files(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot list the directory: " + ec.message());
  for (const fs::directory_entry& entry : it) {
    std::error_code type_ec;
    if (entry.is_regular_file(type_ec)) names.push_back(entry.path().filename().string());
  }
  return names;
}

// ---------------------------------------------------------------------------------------------------------
// Writing.

void write_integer_attribute(hid_t object, const char* name, hid_t file_type, hid_t memory_type, const void* value,
                             const Where& where, const std::string& object_name) {
  const std::string label = object_name + " attribute " + name;
  Handle space = make(H5Screate(H5S_SCALAR), H5Sclose, where, "H5Screate", label);
  Handle attribute = make(H5Acreate2(object, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                          where, "H5Acreate2", label);
  check(H5Awrite(attribute.get(), memory_type, value), where, "H5Awrite", label);
}

void write_i64_attribute(hid_t object, const char* name, std::int64_t value, const Where& where,
                         const std::string& object_name) {
  write_integer_attribute(object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, where, object_name);
}

void write_checksum(hid_t object, std::uint64_t value, const Where& where, const std::string& object_name) {
  write_integer_attribute(object, kChecksumAttribute, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value, where, object_name);
}

// A creation property list (file, group or dataset) with object time tracking off. HDF5 otherwise stamps
// every object header with the time it was written, so two saves of the same state would differ in bytes;
// the file's own mtime already says when it was written.
Handle untimed_creation_properties(hid_t property_class, const Where& where) {
  Handle properties = make(H5Pcreate(property_class), H5Pclose, where, "H5Pcreate");
  check(H5Pset_obj_track_times(properties.get(), false), where, "H5Pset_obj_track_times");
  return properties;
}

// A fixed-length, null-padded UTF-8 string of exactly the text's bytes (an empty text: a null dataspace,
// since HDF5 string types cannot have size 0).
Handle string_type(std::size_t size, const Where& where, const std::string& label) {
  Handle type = make(H5Tcopy(H5T_C_S1), H5Tclose, where, "H5Tcopy", label);
  check(H5Tset_size(type.get(), std::max<std::size_t>(size, 1)), where, "H5Tset_size", label);
  check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), where, "H5Tset_strpad", label);
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), where, "H5Tset_cset", label);
  return type;
}

void write_string(hid_t file, const char* name, const std::string& text, hid_t dataset_properties,
                  const Where& where) {
  const std::string label = std::string("dataset ") + name;
  Handle type = string_type(text.size(), where, label);
  Handle space = make(H5Screate(text.empty() ? H5S_NULL : H5S_SCALAR), H5Sclose, where, "H5Screate", label);
  Handle dataset =
      make(H5Dcreate2(file, name, type.get(), space.get(), H5P_DEFAULT, dataset_properties, H5P_DEFAULT), H5Dclose,
           where, "H5Dcreate2", label);
  if (!text.empty()) {
    check(H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()), where, "H5Dwrite",
          label);
  }
  write_checksum(dataset.get(), string_checksum(text), where, label);
}

void write_arrays(hid_t file, const char* group_name, const std::vector<NamedArray>& arrays, hid_t group_properties,
                  hid_t dataset_properties, const Where& where) {
  Handle link_properties = make(H5Pcreate(H5P_LINK_CREATE), H5Pclose, where, "H5Pcreate");
  check(H5Pset_char_encoding(link_properties.get(), H5T_CSET_UTF8), where, "H5Pset_char_encoding");
  Handle group = make(H5Gcreate2(file, group_name, H5P_DEFAULT, group_properties, H5P_DEFAULT), H5Gclose, where,
                      "H5Gcreate2", std::string("group ") + group_name);
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    const NamedArray& array = arrays[i];
    const std::string label = std::string("dataset ") + group_name + "/" + array.name;
    std::vector<hsize_t> dims(array.shape.begin(), array.shape.end());
    Handle space = make(dims.empty() ? H5Screate(H5S_SCALAR)
                                     : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                        H5Sclose, where, "H5Screate", label);
    Handle dataset = make(H5Dcreate2(group.get(), array.name.c_str(), H5T_IEEE_F32LE, space.get(),
                                     link_properties.get(), dataset_properties, H5P_DEFAULT),
                          H5Dclose, where, "H5Dcreate2", label);
    if (!array.values.empty()) {
      check(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, array.values.data()), where,
            "H5Dwrite", label);
    }
    const auto index = static_cast<std::int64_t>(i);
    write_i64_attribute(dataset.get(), kIndexAttribute, index, where, label);
    write_checksum(dataset.get(), array_checksum(array, index), where, label);
  }
}

void write_checkpoint_file(const fs::path& path, const TrainState& state) {
  const Where where{path, false};
  Handle fapl = file_access(where);
  // The file creation properties are the root group's creation properties too.
  Handle fcpl = untimed_creation_properties(H5P_FILE_CREATE, where);
  Handle gcpl = untimed_creation_properties(H5P_GROUP_CREATE, where);
  Handle dcpl = untimed_creation_properties(H5P_DATASET_CREATE, where);
  Handle file = make(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose, where, "H5Fcreate");
  write_i64_attribute(file.get(), "format_version", kFormatVersion, where, "/");
  write_i64_attribute(file.get(), "step", state.step, where, "/");
  write_i64_attribute(file.get(), "epoch", state.epoch, where, "/");
  write_i64_attribute(file.get(), "position", state.position, where, "/");
  write_checksum(file.get(), root_checksum(kFormatVersion, state.step, state.epoch, state.position), where, "/");
  write_string(file.get(), "rng_state", state.rng_state, dcpl.get(), where);
  write_string(file.get(), "config_yaml", state.config_yaml, dcpl.get(), where);
  write_string(file.get(), "fingerprint", state.fingerprint, dcpl.get(), where);
  write_arrays(file.get(), "adapter", state.adapter, gcpl.get(), dcpl.get(), where);
  write_arrays(file.get(), "adam_m", state.adam_m, gcpl.get(), dcpl.get(), where);
  write_arrays(file.get(), "adam_v", state.adam_v, gcpl.get(), dcpl.get(), where);
  check(H5Fflush(file.get(), H5F_SCOPE_LOCAL), where, "H5Fflush");
  check(file.close(), where, "H5Fclose");
}

// ---------------------------------------------------------------------------------------------------------
// Reading.

// Reads the scalar integer attribute `name` of `object` into `value` (converted to `memory_type`); false when
// there is no such attribute.
bool read_integer_attribute(hid_t object, const char* name, hid_t memory_type, void* value, const Where& where,
                            const std::string& label) {
  const htri_t exists = H5Aexists(object, name);
  check(exists, where, "H5Aexists", label);
  if (exists == 0) return false;
  Handle attribute = make(H5Aopen(object, name, H5P_DEFAULT), H5Aclose, where, "H5Aopen", label);
  Handle type = make(H5Aget_type(attribute.get()), H5Tclose, where, "H5Aget_type", label);
  Handle space = make(H5Aget_space(attribute.get()), H5Sclose, where, "H5Aget_space", label);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_type(space.get()) != H5S_SCALAR) {
    fail(where, "not a slearn checkpoint: " + label + " is not a scalar integer");
  }
  check(H5Aread(attribute.get(), memory_type, value), where, "H5Aread", label);
  return true;
}

std::int64_t read_i64_attribute(hid_t object, const char* name, const Where& where, const std::string& object_name) {
  const std::string label = object_name + " attribute " + name;
  std::int64_t value = 0;
  if (!read_integer_attribute(object, name, H5T_NATIVE_INT64, &value, where, label)) {
    fail(where, "not a slearn checkpoint: missing " + label);
  }
  return value;
}

// Refuses `object` unless its stored checksum equals `actual` (what was read, hashed again). `what` names what
// the checksum covers in the message, e.g. "dataset adapter/<name>" (`plural`: "the root attributes").
void verify_checksum(hid_t object, std::uint64_t actual, const Where& where, const std::string& object_name,
                     const std::string& what, bool plural = false) {
  std::uint64_t stored = 0;
  if (!read_integer_attribute(object, kChecksumAttribute, H5T_NATIVE_UINT64, &stored, where,
                              object_name + " attribute " + kChecksumAttribute)) {
    fail(where, "corrupt checkpoint: " + what + (plural ? " have" : " has") + " no checksum (attribute " +
                    kChecksumAttribute + ")");
  }
  if (stored != actual) {
    fail(where, "corrupt checkpoint: " + what + (plural ? " fail their checksum" : " fails its checksum"));
  }
}

void require_link(hid_t location, const char* name, const Where& where, const std::string& label) {
  const htri_t exists = H5Lexists(location, name, H5P_DEFAULT);
  check(exists, where, "H5Lexists", label);
  if (exists == 0) fail(where, "not a slearn checkpoint: missing " + label);
}

std::string read_string(hid_t file, const char* name, std::uintmax_t file_size, const Where& where) {
  const std::string label = std::string("dataset ") + name;
  require_link(file, name, where, label);
  Handle dataset = make(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose, where, "H5Dopen2", label);
  Handle file_type = make(H5Dget_type(dataset.get()), H5Tclose, where, "H5Dget_type", label);
  Handle space = make(H5Dget_space(dataset.get()), H5Sclose, where, "H5Dget_space", label);
  if (H5Tget_class(file_type.get()) != H5T_STRING || H5Tis_variable_str(file_type.get()) != 0) {
    fail(where, "not a slearn checkpoint: " + label + " is not a fixed-length string");
  }
  const H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
  if (space_class == H5S_NULL) {
    verify_checksum(dataset.get(), string_checksum({}), where, label, label);
    return {};
  }
  if (space_class != H5S_SCALAR) fail(where, "not a slearn checkpoint: " + label + " is not a scalar string");
  const std::size_t size = H5Tget_size(file_type.get());
  if (size == 0 || size > file_size) fail(where, "corrupt checkpoint: " + label + " has an impossible size");
  Handle memory_type = string_type(size, where, label);
  std::string text(size, '\0');
  check(H5Dread(dataset.get(), memory_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()), where, "H5Dread",
        label);
  verify_checksum(dataset.get(), string_checksum(text), where, label, label);
  return text;
}

std::vector<NamedArray> read_arrays(hid_t file, const char* group_name, std::uintmax_t file_size,
                                    const Where& where) {
  const std::string group_label = std::string("group ") + group_name;
  require_link(file, group_name, where, group_label);
  Handle group = make(H5Gopen2(file, group_name, H5P_DEFAULT), H5Gclose, where, "H5Gopen2", group_label);
  H5G_info_t info{};
  check(H5Gget_info(group.get(), &info), where, "H5Gget_info", group_label);

  const std::size_t count = static_cast<std::size_t>(info.nlinks);
  std::vector<NamedArray> arrays(count);
  std::vector<bool> filled(count, false);
  for (hsize_t link = 0; link < info.nlinks; ++link) {
    const ssize_t length =
        H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, link, nullptr, 0, H5P_DEFAULT);
    check(length < 0 ? -1 : 0, where, "H5Lget_name_by_idx", group_label);
    std::string name(static_cast<std::size_t>(length) + 1, '\0');
    check(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, link, name.data(), name.size(),
                             H5P_DEFAULT) < 0
              ? -1
              : 0,
          where, "H5Lget_name_by_idx", group_label);
    name.resize(static_cast<std::size_t>(length));
    const std::string label = std::string("dataset ") + group_name + "/" + name;

    Handle dataset = make(H5Dopen2(group.get(), name.c_str(), H5P_DEFAULT), H5Dclose, where, "H5Dopen2", label);
    Handle type = make(H5Dget_type(dataset.get()), H5Tclose, where, "H5Dget_type", label);
    Handle space = make(H5Dget_space(dataset.get()), H5Sclose, where, "H5Dget_space", label);
    if (H5Tget_class(type.get()) != H5T_FLOAT) fail(where, "not a slearn checkpoint: " + label + " is not float");
    const H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
    if (space_class != H5S_SCALAR && space_class != H5S_SIMPLE) {
      fail(where, "not a slearn checkpoint: " + label + " has no shape");
    }
    const int rank = H5Sget_simple_extent_ndims(space.get());
    check(rank, where, "H5Sget_simple_extent_ndims", label);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    if (rank > 0) check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where, "H5Sget_simple_extent_dims", label);

    NamedArray array;
    array.name = name;
    for (hsize_t dim : dims) {
      if (dim > static_cast<hsize_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(where, "corrupt checkpoint: " + label + " has an impossible shape");
      }
      array.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const auto elements = element_count(array.shape);
    const std::size_t element_size = H5Tget_size(type.get());
    // Uncompressed storage: a shape whose data cannot fit in the file is corruption, not a huge allocation.
    if (!elements || element_size == 0 || *elements > file_size / element_size) {
      fail(where, "corrupt checkpoint: " + label + " has shape " + shape_text(array.shape) +
                      ", larger than the file");
    }
    array.values.resize(static_cast<std::size_t>(*elements));
    if (!array.values.empty()) {
      check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, array.values.data()), where,
            "H5Dread", label);
    }

    const std::int64_t index = read_i64_attribute(dataset.get(), kIndexAttribute, where, label);
    verify_checksum(dataset.get(), array_checksum(array, index), where, label, label);
    if (index < 0 || static_cast<std::uint64_t>(index) >= count || filled[static_cast<std::size_t>(index)]) {
      fail(where, "corrupt checkpoint: " + label + " has index " + std::to_string(index) + ", out of range or repeated");
    }
    filled[static_cast<std::size_t>(index)] = true;
    arrays[static_cast<std::size_t>(index)] = std::move(array);
  }
  return arrays;
}

TrainState read_checkpoint_file(const fs::path& path) {
  const Where where{path, true};
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw InputError(path.string() + ": checkpoint not found");
  if (!fs::is_regular_file(status)) throw InputError(path.string() + ": not a checkpoint file");
  const std::uintmax_t file_size = fs::file_size(path, ec);
  if (ec) throw Error(path.string() + ": cannot read the file size: " + ec.message());

  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw InputError(path.string() + ": not a checkpoint (not an HDF5 file; truncated or corrupt?)");
  }
  Handle fapl = file_access(where);
  const hid_t file_id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file_id < 0) fail(where, "cannot open the checkpoint: truncated or corrupt HDF5 file", true);
  Handle file(file_id, H5Fclose);

  // The version comes first: an older file is refused for what it is, not as a checksum failure.
  const std::int64_t version = read_i64_attribute(file.get(), "format_version", where, "/");
  if (version >= 1 && version < kFirstVersionWithChecksums) {
    fail(where, "checkpoint format version " + std::to_string(version) +
                    " was written by an older slearn without checksums, so it cannot be verified and is not loaded; "
                    "start over with --force");
  }
  if (version != kFormatVersion) {
    fail(where, "checkpoint format version " + std::to_string(version) + ", but this slearn reads version " +
                    std::to_string(kFormatVersion));
  }
  TrainState state;
  state.step = read_i64_attribute(file.get(), "step", where, "/");
  state.epoch = read_i64_attribute(file.get(), "epoch", where, "/");
  state.position = read_i64_attribute(file.get(), "position", where, "/");
  verify_checksum(file.get(), root_checksum(version, state.step, state.epoch, state.position), where, "/",
                  "the root attributes (format_version, step, epoch, position)", true);
  if (state.step < 0 || state.epoch < 0 || state.position < 0) {
    fail(where, "corrupt checkpoint: negative step, epoch or position");
  }
  state.rng_state = read_string(file.get(), "rng_state", file_size, where);
  state.config_yaml = read_string(file.get(), "config_yaml", file_size, where);
  state.fingerprint = read_string(file.get(), "fingerprint", file_size, where);
  state.adapter = read_arrays(file.get(), "adapter", file_size, where);
  state.adam_m = read_arrays(file.get(), "adam_m", file_size, where);
  state.adam_v = read_arrays(file.get(), "adam_v", file_size, where);
  for (const auto* group : {"adam_m", "adam_v"}) {
    const auto& moments = std::string_view(group) == "adam_m" ? state.adam_m : state.adam_v;
    const std::string mismatch = moments_mismatch(state.adapter, moments, group);
    if (!mismatch.empty()) fail(where, "corrupt checkpoint: " + mismatch);
  }
  check(file.close(), where, "H5Fclose");
  return state;
}

// ---------------------------------------------------------------------------------------------------------
// Fingerprint comparison: "model:<hex> data:<hex> config:<hex>", compared part by part.

std::vector<std::pair<std::string, std::string>> fingerprint_parts(const std::string& fingerprint) {
  std::vector<std::pair<std::string, std::string>> parts;
  std::size_t start = 0;
  while (start < fingerprint.size()) {
    std::size_t end = fingerprint.find(' ', start);
    if (end == std::string::npos) end = fingerprint.size();
    const std::string token = fingerprint.substr(start, end - start);
    if (!token.empty()) {
      const std::size_t colon = token.find(':');
      if (colon == std::string::npos) {
        parts.emplace_back(token, std::string());
      } else {
        parts.emplace_back(token.substr(0, colon), token.substr(colon + 1));
      }
    }
    start = end + 1;
  }
  return parts;
}

std::string describe_part(const std::string& key) {
  if (key == "model") return "another base model";
  if (key == "data") return "other training data";
  if (key == "config") return "another configuration";
  return "a different " + key;
}

[[noreturn]] void refuse_fingerprint(const fs::path& file, const std::string& found, const std::string& expected) {
  const auto found_parts = fingerprint_parts(found);
  const auto expected_parts = fingerprint_parts(expected);
  const auto lookup = [](const auto& parts, const std::string& key) -> std::optional<std::string> {
    for (const auto& [k, v] : parts) {
      if (k == key) return v;
    }
    return std::nullopt;
  };
  std::vector<std::string> differing;
  const auto consider = [&](const std::string& key) {
    if (std::find(differing.begin(), differing.end(), key) != differing.end()) return;
    if (lookup(found_parts, key) != lookup(expected_parts, key)) differing.push_back(key);
  };
  for (const auto& part : expected_parts) consider(part.first);
  for (const auto& part : found_parts) consider(part.first);

  std::string message = file.string() + " was written for ";
  if (differing.empty()) {
    message += "another run (fingerprint differs)";
  } else {
    std::string descriptions;
    std::string keys;
    for (std::size_t i = 0; i < differing.size(); ++i) {
      const char* separator = i == 0 ? "" : (i + 1 == differing.size() ? " and " : ", ");
      descriptions += separator + describe_part(differing[i]);
      keys += (i == 0 ? "" : ", ") + differing[i];
    }
    message += descriptions + " (" + keys + (differing.size() == 1 ? " fingerprint differs)" : " fingerprints differ)");
  }
  throw InputError(message + "; start a new run directory or pass --force");
}

// The newest checkpoint in `dir` older than `step` that loads, verifies completely and has the expected
// fingerprint, or an empty string. It is only named to the user, never loaded in place of `latest`: going back
// repeats steps, and a file that went bad may mean a failing disk, so that is the user's call.
std::string valid_older_checkpoint(const fs::path& dir, std::int64_t step, const std::string& expected_fingerprint) {
  std::vector<std::pair<std::int64_t, std::string>> older;
  try {
    for (const std::string& file : list_files(dir)) {
      const std::int64_t file_step = parse_step_file_name(file);
      if (file_step >= 0 && file_step < step) older.emplace_back(file_step, file);
    }
  } catch (const Error&) {
    return {};
  }
  std::sort(older.begin(), older.end(), std::greater<>());
  for (const auto& [file_step, file] : older) {
    try {
      if (read_checkpoint_file(dir / file).fingerprint == expected_fingerprint) return file;
    } catch (const Error&) {
      // Not valid either: try the next older one.
    }
  }
  return {};
}

}  // namespace

// -------------------------------------------------------------------------------------------------------------

fs::path save_checkpoint(const fs::path& dir, const TrainState& state, std::int64_t keep_last) {
  Hdf5Session session;
  const std::string name = step_file_name(state.step);
  const fs::path final_path = dir / name;
  validate_state(state, final_path);

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create the checkpoint directory: " + ec.message());
  if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": exists and is not a directory");

  // Leftovers of a save that crashed half-way are never loaded; clear them.
  for (const std::string& file : list_files(dir)) {
    if (file == kLatestTemporary || parse_step_file_name(file, ".tmp") >= 0) remove_file(dir / file);
  }

  const fs::path temporary = dir / (name + ".tmp");
  {
    TemporaryFile guard(temporary);
    write_checkpoint_file(temporary, state);
    sync_path(temporary, false);
    rename_file(temporary, final_path);
    guard.dismiss();
  }
  sync_path(dir, true);

  const fs::path latest_temporary = dir / kLatestTemporary;
  {
    TemporaryFile guard(latest_temporary);
    write_file_synced(latest_temporary, name + "\n");
    rename_file(latest_temporary, dir / kLatestName);
    guard.dismiss();
  }
  sync_path(dir, true);

  if (keep_last > 0) {
    std::vector<std::pair<std::int64_t, std::string>> checkpoints;
    for (const std::string& file : list_files(dir)) {
      const std::int64_t step = parse_step_file_name(file);
      if (step >= 0) checkpoints.emplace_back(step, file);
    }
    std::sort(checkpoints.begin(), checkpoints.end(), std::greater<>());
    for (std::size_t i = static_cast<std::size_t>(std::min<std::int64_t>(keep_last, static_cast<std::int64_t>(checkpoints.size())));
         i < checkpoints.size(); ++i) {
      if (checkpoints[i].second != name) remove_file(dir / checkpoints[i].second);
    }
  }
  return final_path;
}

std::optional<TrainState> load_latest_checkpoint(const fs::path& dir, const std::string& expected_fingerprint) {
  Hdf5Session session;
  std::error_code ec;
  const auto dir_status = fs::status(dir, ec);
  if (!fs::exists(dir_status)) return std::nullopt;
  if (!fs::is_directory(dir_status)) throw InputError(dir.string() + ": is not a checkpoint directory");
  const fs::path latest = dir / kLatestName;
  const auto latest_status = fs::status(latest, ec);
  if (!fs::exists(latest_status)) return std::nullopt;
  if (!fs::is_regular_file(latest_status)) throw InputError(latest.string() + ": is not a file");
  const std::uintmax_t size = fs::file_size(latest, ec);
  if (ec) throw Error(latest.string() + ": cannot read the file size: " + ec.message());
  if (size > kMaxLatestSize) throw InputError(latest.string() + ": does not name a checkpoint file (too long)");

  std::string name(static_cast<std::size_t>(size), '\0');
  {
    std::FILE* stream = std::fopen(latest.c_str(), "rb");
    if (stream == nullptr) throw Error(latest.string() + ": cannot open: " + std::strerror(errno));
    const std::size_t got = std::fread(name.data(), 1, name.size(), stream);
    const bool failed = std::ferror(stream) != 0;
    std::fclose(stream);
    if (failed) throw Error(latest.string() + ": read error");
    name.resize(got);
  }
  const auto not_space = [](unsigned char c) { return c != ' ' && c != '\n' && c != '\r' && c != '\t'; };
  name.erase(name.begin(), std::find_if(name.begin(), name.end(), not_space));
  name.erase(std::find_if(name.rbegin(), name.rend(), not_space).base(), name.end());
  const std::int64_t step = parse_step_file_name(name);
  if (step < 0) {
    throw InputError(latest.string() + ": does not name a checkpoint file (it holds \"" + one_line(name) +
                     "\", expected step-NNNNNNNN.h5)");
  }
  const fs::path file = dir / name;
  std::optional<TrainState> state;
  try {
    if (!fs::exists(file, ec)) {
      throw InputError(latest.string() + " names " + name + ", which does not exist in " + dir.string());
    }
    state = read_checkpoint_file(file);
  } catch (const InputError& error) {
    const std::string older = valid_older_checkpoint(dir, step, expected_fingerprint);
    if (older.empty()) throw;
    throw InputError(std::string(error.what()) + "; the older checkpoint " + older + " in " + dir.string() +
                     " is valid: to resume from it, write its name into " + latest.string() +
                     "; or pass --force to start over");
  }
  if (state->fingerprint != expected_fingerprint) refuse_fingerprint(file, state->fingerprint, expected_fingerprint);
  return state;
}

TrainState load_checkpoint(const fs::path& file) {
  Hdf5Session session;
  return read_checkpoint_file(file);
}

}  // namespace slearn
