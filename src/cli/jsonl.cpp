#include "cli/jsonl.hpp"

#include "slearn/error.hpp"

namespace slearn::cli {

void for_each_json_line(std::istream& in, const std::string& source,
                        const std::function<void(const nlohmann::json&, std::size_t line)>& handle) {
  std::string text;
  std::size_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(source + ":" + std::to_string(line) + ": not valid JSON (" + e.what() + ")");
    }
    if (!record.is_object()) throw InputError(source + ":" + std::to_string(line) + ": expected a JSON object");
    handle(record, line);
  }
}

}  // namespace slearn::cli
