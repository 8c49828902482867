// Chat prompt formats: ChatML (Qwen), LLaMA-2 chat ([INST], <<SYS>>) and LLaMA-3 headers.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace slearn {

class Tokenizer;

enum class ChatFormat { ChatML, Llama2, Llama3 };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

ChatFormat chat_format_from_name(std::string_view name);  // "chatml", "llama2", "llama3"; else InputError
std::string_view chat_format_name(ChatFormat format);

// The format a model family uses: qwen2 -> ChatML; llama -> Llama3 when the tokenizer knows
// "<|start_header_id|>", else Llama2.
ChatFormat default_chat_format(std::string_view model_type, const Tokenizer& tokenizer);

// Renders the conversation as text, special tokens spelled out (the tokenizer matches them as added tokens).
// With add_generation_prompt the text ends where the assistant's reply begins. LLaMA-2's BOS "<s>" is
// written into the text for each turn, as its reference template does.
std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt);

// The token text that ends an assistant turn: "<|im_end|>", "</s>" or "<|eot_id|>".
std::string_view chat_end_token(ChatFormat format);

}  // namespace slearn
