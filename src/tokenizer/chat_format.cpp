// Chat prompt formats. Conversations are checked first: an optional leading system message, then user
// and assistant turns alternating from a user turn; a generation prompt needs a final user turn.
#include "slearn/chat_format.hpp"

#include "slearn/error.hpp"
#include "slearn/tokenizer.hpp"

namespace slearn {
namespace {

std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// Index of the first non-system message after validating the roles.
std::size_t check_roles(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") first = 1;
  if (first == messages.size()) throw InputError("chat: the conversation has no user message");
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant")
      throw InputError("chat: message " + std::to_string(i) + " has role \"" + role +
                       "\" (expected system, user or assistant)");
    if (i < first) continue;
    const char* expected = (i - first) % 2 == 0 ? "user" : "assistant";
    if (role != expected)
      throw InputError("chat: message " + std::to_string(i) + " has role \"" + role + "\" but \"" + expected +
                       "\" was expected (an optional system message first, then user and assistant alternating)");
  }
  if (add_generation_prompt && messages.back().role != "user")
    throw InputError("chat: a generation prompt needs the conversation to end with a user message");
  return first;
}

std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>";
    out += m.role;
    out += '\n';
    out += m.content;
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Meta's reference: the system prompt is folded into the first user message; each user turn is
// "<s>[INST] {user} [/INST]", each assistant reply " {assistant} </s>"; contents are stripped.
std::string render_llama2(const std::vector<ChatMessage>& messages, std::size_t first) {
  std::string out;
  for (std::size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      std::string content = m.content;
      if (i == first && first == 1) content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + content;
      out += "<s>[INST] ";
      out += trim(content);
      out += " [/INST]";
    } else {
      out += ' ';
      out += trim(m.content);
      out += " </s>";
    }
  }
  return out;
}

std::string render_llama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out = "<|begin_of_text|>";
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>";
    out += m.role;
    out += "<|end_header_id|>\n\n";
    out += trim(m.content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

ChatFormat chat_format_from_name(std::string_view name) {
  if (name == "chatml") return ChatFormat::ChatML;
  if (name == "llama2") return ChatFormat::Llama2;
  if (name == "llama3") return ChatFormat::Llama3;
  throw InputError("unknown chat format \"" + std::string(name) + "\" (expected chatml, llama2 or llama3)");
}

std::string_view chat_format_name(ChatFormat format) {
  switch (format) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama2: return "llama2";
    case ChatFormat::Llama3: return "llama3";
  }
  return "chatml";
}

ChatFormat default_chat_format(std::string_view model_type, const Tokenizer& tokenizer) {
  if (model_type.substr(0, 4) == "qwen") return ChatFormat::ChatML;
  if (model_type == "llama")
    return tokenizer.token_to_id("<|start_header_id|>") ? ChatFormat::Llama3 : ChatFormat::Llama2;
  throw InputError("no default chat format for model type \"" + std::string(model_type) +
                   "\" (known: qwen2, llama); choose one of chatml, llama2, llama3");
}

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  const std::size_t first = check_roles(messages, add_generation_prompt);
  switch (format) {
    case ChatFormat::ChatML: return render_chatml(messages, add_generation_prompt);
    case ChatFormat::Llama2: return render_llama2(messages, first);
    case ChatFormat::Llama3: return render_llama3(messages, add_generation_prompt);
  }
  return {};
}

std::string_view chat_end_token(ChatFormat format) {
  switch (format) {
    case ChatFormat::ChatML: return "<|im_end|>";
    case ChatFormat::Llama2: return "</s>";
    case ChatFormat::Llama3: return "<|eot_id|>";
  }
  return "<|im_end|>";
}

}  // namespace slearn
