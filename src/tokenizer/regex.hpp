// A compiled PCRE2 pattern (UTF + UCP, JIT when available), shareable between threads.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace slearn::tok {

class Regex {
 public:
  // Throws InputError("<where>: ...") when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the first match in subject[from..] (subject must be valid UTF-8; lookarounds see only
  // `subject`). On success sets [begin, end) and returns true.
  bool find(std::string_view subject, std::size_t from, std::size_t& begin, std::size_t& end) const;

  // A pattern that matches `literal` exactly.
  static std::string escape(std::string_view literal);

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace slearn::tok
