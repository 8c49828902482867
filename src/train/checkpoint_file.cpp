// The checkpoint file itself, in HDF5 (C API): writing, reading, checksums, validation. Layout, format_version 2:
//   /                 attributes format_version, step, epoch, position (int64) and xxh3_64 (uint64): the checksum
//                     of the four scalars
//   /rng_state        scalar fixed-length UTF-8 string dataset (null dataspace when the string is empty)
//   /config_yaml      likewise
//   /fingerprint      likewise
//   /parallel         likewise: "tensor T data D", the mesh that wrote it (absent in files written before
//                     tensor parallelism: read as tensor 1 data 1)
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
// (Where the files go, `latest`, what is kept and the fingerprint check: checkpoint.cpp.)
#include "train/checkpoint_file.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <bit>
#include <limits>
#include <mutex>
#include <set>
#include <utility>

#include "slearn/error.hpp"
#include "util/xxh3_stream.hpp"

namespace slearn::checkpoint_file {

namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kFormatVersion = 2;
constexpr std::int64_t kFirstVersionWithChecksums = 2;
constexpr const char* kIndexAttribute = "index";
constexpr const char* kChecksumAttribute = "xxh3_64";

// ---------------------------------------------------------------------------------------------------------
// HDF5 plumbing: a per-call session (lock + silenced error printing), error reporting, owning handles.

std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

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

// Float arrays as little-endian IEEE bytes whatever the host.

class Checksum : public Xxh3Stream {
 public:
  Checksum() : Xxh3Stream(Width::Bits64) {}
  void add_floats(const std::vector<float>& values) {
    if constexpr (std::endian::native == std::endian::little) {
      update(values.data(), values.size() * sizeof(float));
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
        update(swapped, n * sizeof(std::uint32_t));
      }
    }
  }
};

std::uint64_t root_checksum(std::int64_t version, std::int64_t step, std::int64_t epoch, std::int64_t position) {
  Checksum checksum;
  for (const std::int64_t value : {version, step, epoch, position}) checksum.update_u64(static_cast<std::uint64_t>(value));
  return checksum.digest64();
}

std::uint64_t string_checksum(const std::string& text) {
  Checksum checksum;
  checksum.update(text.data(), text.size());
  return checksum.digest64();
}

// Covers the name, shape and index as well as the values: together they are everything an array is read as.
std::uint64_t array_checksum(const NamedArray& array, std::int64_t index) {
  Checksum checksum;
  checksum.update_u64(array.name.size());
  checksum.update(array.name.data(), array.name.size());
  checksum.update_u64(array.shape.size());
  for (const std::int64_t dim : array.shape) checksum.update_u64(static_cast<std::uint64_t>(dim));
  checksum.update_u64(static_cast<std::uint64_t>(index));
  checksum.add_floats(array.values);
  return checksum.digest64();
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

}  // namespace

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

namespace {

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

}  // namespace

void write(const fs::path& path, const TrainState& state) {
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
  write_string(file.get(), "parallel",
               "tensor " + std::to_string(state.tensor_parallel) + " data " + std::to_string(state.data_parallel),
               dcpl.get(), where);
  write_arrays(file.get(), "adapter", state.adapter, gcpl.get(), dcpl.get(), where);
  write_arrays(file.get(), "adam_m", state.adam_m, gcpl.get(), dcpl.get(), where);
  write_arrays(file.get(), "adam_v", state.adam_v, gcpl.get(), dcpl.get(), where);
  check(H5Fflush(file.get(), H5F_SCOPE_LOCAL), where, "H5Fflush");
  check(file.close(), where, "H5Fclose");
}

// ---------------------------------------------------------------------------------------------------------
// Reading.

namespace {

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

}  // namespace

TrainState read(const fs::path& path) {
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
  const htri_t has_parallel = H5Lexists(file.get(), "parallel", H5P_DEFAULT);
  check(has_parallel, where, "H5Lexists", "dataset parallel");
  if (has_parallel > 0) {
    const std::string mesh = read_string(file.get(), "parallel", file_size, where);
    long long tensor = 0, data = 0;
    char tail = 0;
    if (std::sscanf(mesh.c_str(), "tensor %lld data %lld%c", &tensor, &data, &tail) != 2 || tensor < 1 || data < 1)
      fail(where, "corrupt checkpoint: dataset parallel is \"" + mesh + "\", not \"tensor T data D\"");
    state.tensor_parallel = tensor;
    state.data_parallel = data;
  }
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


Hdf5Session::Hdf5Session() : lock_(hdf5_mutex()) { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

}  // namespace slearn::checkpoint_file
