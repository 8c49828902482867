// Fuzz target: the YAML configuration loaders (parse_run_config and parse_train_config).
//
// Byte 0, bit 0: run config or train config. The rest is "<YAML>" or "<YAML>\0<overrides>", the overrides one
// per line as given to --set. A configuration that loads must load again from its effective YAML (the text
// written to run_config.yaml / train_config.yaml) to the same effective YAML.
#include <vector>

#include "fuzz_common.hpp"
#include "slearn/run_config.hpp"
#include "slearn/train_config.hpp"

namespace {

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  while (!text.empty() && lines.size() < 8) {
    const std::size_t newline = text.find('\n');
    lines.emplace_back(text.substr(0, newline));
    if (newline == std::string_view::npos) break;
    text.remove_prefix(newline + 1);
  }
  return lines;
}

template <class Parse>
void check(Parse parse, const std::string& yaml, const std::vector<std::string>& overrides) {
  std::string effective;
  if (!slearn_fuzz::expect_slearn_errors_only([&] { effective = parse(yaml, overrides).source_text; })) return;
  std::string again;
  if (!slearn_fuzz::expect_slearn_errors_only([&] { again = parse(effective, {}).source_text; }))
    slearn_fuzz::fail("the effective YAML does not load again:\n" + effective);
  if (again != effective)
    slearn_fuzz::fail("the effective YAML changes when loaded again:\n" + effective + "\n----\n" + again);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::size_t nul = rest.find('\0');
  const std::string yaml(rest.substr(0, nul));
  const std::vector<std::string> overrides =
      nul == std::string_view::npos ? std::vector<std::string>() : split_lines(rest.substr(nul + 1));
  if (data[0] & 1) {
    check([](const std::string& text, const std::vector<std::string>& o) {
      return slearn::parse_train_config(text, "train.yaml", o);
    }, yaml, overrides);
  } else {
    check([](const std::string& text, const std::vector<std::string>& o) {
      return slearn::parse_run_config(text, "run.yaml", o);
    }, yaml, overrides);
  }
  return 0;
}
