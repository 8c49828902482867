// JSON lines on a stream: one object per line, errors naming the source and the line number.
#pragma once

#include <functional>
#include <istream>
#include <string>

#include <nlohmann/json.hpp>

namespace slearn::cli {

// Calls `handle` with each non-blank line parsed as a JSON object; a line that is not one throws InputError
// naming `source` and the line.
void for_each_json_line(std::istream& in, const std::string& source,
                        const std::function<void(const nlohmann::json&, std::size_t line)>& handle);

}  // namespace slearn::cli
