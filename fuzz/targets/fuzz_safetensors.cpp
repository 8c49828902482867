// Fuzz target: the safetensors header parser (SafetensorsFile::open) on a file holding the input.
//
// Input: byte 0 picks the layout of the rest.
//  - even: the rest is the whole file (the 8-byte header length, the header, the data);
//  - odd:  the rest is "<header JSON>\0<data>": the length is written for the header, so mutations reach the
//          JSON checks instead of failing on the length (JSON text cannot hold a raw NUL).
// Every tensor the parser accepts must lie inside the mapping; its bytes are all read.
#include <cstring>

#include "fuzz_common.hpp"
#include "slearn/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static slearn_fuzz::MemoryFile file;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string bytes;
  if ((data[0] & 1) == 0) {
    bytes.assign(rest);
  } else {
    const std::size_t nul = rest.find('\0');
    const std::string_view header = rest.substr(0, nul);
    const std::string_view tensor_data = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
    const std::uint64_t length = header.size();
    bytes.resize(8);
    std::memcpy(bytes.data(), &length, 8);
    bytes.append(header);
    bytes.append(tensor_data);
  }
  file.write(bytes);

  slearn_fuzz::expect_slearn_errors_only([&] {
    const auto st = slearn::SafetensorsFile::open(file.path());
    std::uint64_t total = 0;
    unsigned checksum = 0;
    for (const slearn::TensorInfo& info : st->tensors()) {
      if (st->find(info.name) != &info) slearn_fuzz::fail("find() does not return the tensor \"" + info.name + "\"");
      const auto span = st->bytes(info);
      if (span.size() != info.end - info.begin) slearn_fuzz::fail("bytes() size differs from the offsets");
      for (const std::byte b : span) checksum += static_cast<unsigned>(b);
      total += span.size();
      (void)info.numel();
    }
    if (8 + total > bytes.size()) slearn_fuzz::fail("tensors cover more bytes than the file holds");
    for (const auto& [key, value] : st->metadata()) checksum += static_cast<unsigned>(key.size() + value.size());
    volatile unsigned sink = checksum;
    (void)sink;
  });
  return 0;
}
