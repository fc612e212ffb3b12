#pragma once
// Text <-> token ids for Hugging Face tokenizer.json files (BPE models; byte-level or Metaspace style), matching
// HF tokenizers 0.23.2 id for id, plus the chat template from tokenizer_config.json (chat_template.h).
//
// Invalid UTF-8 input never fails: ill-formed bytes pass through the pipeline as single bytes (regexes never match
// them) and a byte-level tokenizer encodes each as its byte token, so decode_bytes() gives the input back exactly;
// decode() returns valid UTF-8 with U+FFFD in their place, as HF's decode does.
//
// A Tokenizer is cheap to copy (shared, immutable state) and safe to use from several threads at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

class ChatTemplate;  // tokenizer/chat_template.h

class Tokenizer {
 public:
  // Reads dir/tokenizer.json (or dir/tiktoken.model) and, when present, dir/tokenizer_config.json and
  // dir/chat_template.jinja (used when the config has no chat_template).
  static Tokenizer load(const std::string& dir);
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& config_json = "");
  // Kimi-K2's tokenizer (tokenizer/tiktoken.h): tiktoken.model's ranks, Kimi's pre-tokenizer regex, and the special
  // tokens of tokenizer_config.json's added_tokens_decoder after the ranks. load() takes this path for a directory
  // with tiktoken.model and no tokenizer.json. `source` names the file in errors.
  static Tokenizer from_tiktoken(const std::string& tiktoken_model, const std::string& config_json = "",
                                 const std::string& source = "tiktoken.model");

  // add_special_tokens: apply tokenizer.json's post-processor when it adds tokens (TemplateProcessing, Bert,
  // Roberta); otherwise prepend BOS / append EOS when tokenizer_config says add_bos_token / add_eos_token (as
  // transformers does for DeepSeek's LlamaTokenizerFast config). False gives exactly HF tokenizers' ids.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Throws moe::Error for an id that names no token.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The decoded bytes before invalid UTF-8 is replaced (what the streaming decoder works on).
  std::string decode_bytes(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t token_id(std::string_view token) const;  // -1 if absent (added tokens first, then the model vocab)
  std::string id_to_token(int32_t id) const;       // throws moe::Error if absent
  int32_t vocab_size() const;                      // one past the highest id of any token
  std::optional<int32_t> bos_id() const;           // from tokenizer_config bos_token / eos_token
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;
  bool is_added(int32_t id) const;  // one of tokenizer.json's added_tokens (special or not)
  bool has_chat_template() const;
  const ChatTemplate& chat_template() const;  // throws moe::Error if tokenizer_config has none

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamingDecoder;
};

// Turns ids into text as they are generated: push() returns the text that became complete (possibly empty), never
// a partial UTF-8 character; a character split across tokens comes out whole, once. flush() returns what is left
// (an unfinished character becomes U+FFFD) and starts over.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::vector<int32_t> window_;  // ids whose text is not fully emitted, after one id of context
  size_t emitted_ = 0;           // bytes of decode_bytes(window_) already returned (or the context's own text)
};

}  // namespace moe
