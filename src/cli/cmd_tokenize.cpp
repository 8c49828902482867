// slearn_dist tokenize: {"text": ...} lines in, {"ids": [...]} lines out; --decode does the inverse.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/jsonl.hpp"
#include "slearn/error.hpp"
#include "slearn/tokenizer.hpp"

namespace slearn::cli {

Command add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer_dir;
    bool decode = false;
    bool add_special_tokens = false;
    bool skip_special_tokens = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("tokenize", "Encode {\"text\"} JSON lines from stdin to {\"ids\"} lines (or --decode)");
  sub->add_option("--tokenizer", options->tokenizer_dir, "Directory with tokenizer.json (a model directory works)")
      ->required();
  sub->add_flag("--decode", options->decode, "Read {\"ids\": [...]} lines and write {\"text\": ...} lines");
  sub->add_flag("--add-special-tokens", options->add_special_tokens,
                "Add the tokenizer's BOS/EOS as its post-processor says (encode only)");
  sub->add_flag("--skip-special-tokens", options->skip_special_tokens, "Drop special tokens when decoding");

  return [options]() {
    const Tokenizer tokenizer = Tokenizer::from_dir(options->tokenizer_dir);
    std::ios::sync_with_stdio(false);
    for_each_json_line(std::cin, "<stdin>", [&](const nlohmann::json& record, std::size_t line) {
      const std::string where = "<stdin>:" + std::to_string(line) + ": ";
      if (options->decode) {
        auto ids = record.find("ids");
        if (ids == record.end() || !ids->is_array()) throw InputError(where + "expected {\"ids\": [...]}");
        std::vector<TokenId> values;
        for (const auto& id : *ids) {
          if (!id.is_number_integer()) throw InputError(where + "\"ids\" must hold integers");
          values.push_back(id.get<TokenId>());
        }
        std::cout << nlohmann::json{{"text", tokenizer.decode(values, options->skip_special_tokens)}}.dump() << '\n';
      } else {
        auto text = record.find("text");
        if (text == record.end() || !text->is_string()) throw InputError(where + "expected {\"text\": \"...\"}");
        auto ids = tokenizer.encode(text->get_ref<const std::string&>(), options->add_special_tokens);
        std::cout << nlohmann::json{{"ids", ids}}.dump() << '\n';
      }
    });
    std::cout.flush();
    return 0;
  };
}

}  // namespace slearn::cli
