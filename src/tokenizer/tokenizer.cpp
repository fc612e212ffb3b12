// Tokenizer: loads tokenizer.json / tokenizer_config.json and runs the pipeline
//   raw added-token split -> normalizer -> normalized added-token split -> pre-tokenizer -> BPE.
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <charconv>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/components.h"
#include "tokenizer/tiktoken.h"
#include "tokenizer/unicode.h"

namespace moe {

using json = nlohmann::json;

struct Tokenizer::Impl {
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Model> model;  // tok::Bpe (tokenizer.json) or tok::Tiktoken (tiktoken.model)
  std::unique_ptr<tok::Decoder> decoder;
  tok::AddedVocabulary added;
  std::vector<int32_t> prefix_ids, suffix_ids;  // what add_special_tokens puts around the text
  std::optional<int32_t> bos, eos;
  std::unique_ptr<ChatTemplate> chat_template;
  int32_t id_limit = 0;

  void encode_piece(tok::Piece piece, std::vector<int32_t>& ids) const {
    std::vector<tok::Piece> pieces;
    pieces.push_back(std::move(piece));
    if (pre_tokenizer) pre_tokenizer->split(pieces);
    for (const tok::Piece& p : pieces) model->tokenize(p.text, ids);
  }

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids;
    for (const auto& raw : added.split(text, false)) {
      if (raw.id >= 0) {
        ids.push_back(raw.id);
        continue;
      }
      std::string normalized(text.substr(raw.start, raw.end - raw.start));
      if (normalizer) normalizer->normalize(normalized);
      for (const auto& seg : added.split(normalized, true)) {
        if (seg.id >= 0)
          ids.push_back(seg.id);
        else
          encode_piece({normalized.substr(seg.start, seg.end - seg.start), raw.start == 0 && seg.start == 0}, ids);
      }
    }
    return ids;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special, bool raw) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      if (const tok::AddedToken* t = added.by_id(id)) {
        if (!(skip_special && t->special)) tokens.push_back(t->content);
      } else if (const std::string* token = model->token(id)) {
        tokens.push_back(*token);
      } else {
        fail("token id {} is outside the vocabulary (ids run from 0 to {})", id, id_limit - 1);
      }
    }
    std::string text;
    if (decoder) {
      decoder->decode(tokens, raw);
      for (const auto& t : tokens) text += t;
    } else {
      for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];  // HF joins with spaces
    }
    return raw ? text : utf8::lossy(text);
  }

  int32_t token_id(std::string_view token) const {
    if (const tok::AddedToken* t = added.by_content(token)) return t->id;
    return model->token_id(token);
  }
};

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// bos_token etc. are either a string or an AddedToken object {"content": ...}.
std::optional<std::string> token_content(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// Ids the post-processor adds around a single sequence: (prefix, suffix). Processors that add nothing give ({}, {}).
void parse_post_processor(const json& spec, std::vector<int32_t>& prefix, std::vector<int32_t>& suffix,
                          bool& adds_tokens) {
  if (spec.is_null()) return;
  const std::string type = spec.at("type").get<std::string>();
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    for (const json& p : spec.at("processors")) parse_post_processor(p, prefix, suffix, adds_tokens);
    return;
  }
  adds_tokens = true;
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    prefix.push_back(spec.at("cls").at(1).get<int32_t>());
    suffix.insert(suffix.begin(), spec.at("sep").at(1).get<int32_t>());
    return;
  }
  if (type == "TemplateProcessing") {
    bool before_sequence = true;
    for (const json& item : spec.at("single")) {
      if (item.contains("Sequence")) {
        before_sequence = false;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      const json& special = spec.at("special_tokens").at(name);
      for (const json& id : special.at("ids")) (before_sequence ? prefix : suffix).push_back(id.get<int32_t>());
    }
    return;
  }
  fail("tokenizer.json: unsupported post_processor type '{}'", type);
}

// tokenizer_config.json: BOS / EOS (and whether encode adds them) and the chat template.
void apply_config(Tokenizer::Impl& impl_ref, const json& config, bool post_processor_adds) {
  Tokenizer::Impl* impl = &impl_ref;
  const auto id_of = [&](const char* key) -> std::optional<int32_t> {
    const auto content = token_content(config, key);
    if (!content) return std::nullopt;
    const int32_t id = impl->token_id(*content);
    if (id < 0) fail("tokenizer_config.json: {} '{}' is not a token", key, *content);
    return id;
  };
  impl->bos = id_of("bos_token");
  impl->eos = id_of("eos_token");
  if (!post_processor_adds) {
    if (impl->bos && config.value("add_bos_token", false)) impl->prefix_ids.push_back(*impl->bos);
    if (impl->eos && config.value("add_eos_token", false)) impl->suffix_ids.push_back(*impl->eos);
  }
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    const json& source = config["chat_template"];
    std::string text;
    if (source.is_string()) {
      text = source.get<std::string>();
    } else if (source.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& named : source)
        if (named.value("name", std::string()) == "default") text = named.at("template").get<std::string>();
      if (text.empty()) fail("tokenizer_config.json: chat_template list has no 'default' entry");
    } else {
      fail("tokenizer_config.json: chat_template must be a string or a list of named templates");
    }
    json special = json::object();
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                            "mask_token"})
      if (auto content = token_content(config, key)) special[key] = *content;
    impl->chat_template = std::make_unique<ChatTemplate>(std::move(text), std::move(special));
  }
}


bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

json parse_config(const std::string& config_json) {
  if (config_json.empty()) return json::object();
  try {
    json config = json::parse(config_json);
    if (!config.is_object()) fail("tokenizer_config.json must be a JSON object");
    return config;
  } catch (const json::exception& e) {
    fail("tokenizer_config.json is not valid JSON: {}", e.what());
  }
}

// Kimi's special tokens: the 256 + 2 ids right after the BPE ranks, named by added_tokens_decoder or
// <|reserved_token_ID|> (as its tokenization_kimi.py names them), plus any other entry of added_tokens_decoder. All
// are matched in text exactly, as tiktoken's allowed_special="all" does. Returned in tokenizer.json's added_tokens
// shape for tok::AddedVocabulary.
json tiktoken_added_tokens(const json& config, int32_t first_id) {
  constexpr int32_t kReserved = 256 + 2;
  std::map<int32_t, std::pair<std::string, bool>> tokens;  // id -> (content, special)
  for (int32_t id = first_id; id < first_id + kReserved; ++id)
    tokens[id] = {"<|reserved_token_" + std::to_string(id) + "|>", true};
  if (config.contains("added_tokens_decoder")) {
    const json& dec = config["added_tokens_decoder"];
    if (!dec.is_object()) fail("tokenizer_config.json: added_tokens_decoder must be an object");
    for (const auto& [key, entry] : dec.items()) {
      int32_t id = -1;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || id < 0)
        fail("tokenizer_config.json: added_tokens_decoder key '{}' is not a token id", key);
      if (id < first_id)
        fail("tokenizer_config.json: added_tokens_decoder id {} is one of tiktoken.model's ranks (0..{})", id,
             first_id - 1);
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
        fail("tokenizer_config.json: added_tokens_decoder['{}'] needs a string 'content'", key);
      tokens[id] = {entry["content"].get<std::string>(), entry.value("special", true)};
    }
  }
  json added = json::array();
  for (const auto& [id, t] : tokens)
    added.push_back({{"id", id}, {"content", t.first}, {"special", t.second}, {"normalized", false},
                     {"lstrip", false}, {"rstrip", false}, {"single_word", false}});
  return added;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& dir) {
  const std::string tokenizer_path = dir + "/tokenizer.json";
  const std::string tiktoken_path = dir + "/tiktoken.model";
  const std::string config_path = dir + "/tokenizer_config.json";
  const bool tiktoken = !file_exists(tokenizer_path) && file_exists(tiktoken_path);
  if (!tiktoken && !file_exists(tokenizer_path))
    fail("cannot read {} (and there is no tiktoken.model beside it)", tokenizer_path);
  std::string config_json;
  if (file_exists(config_path)) config_json = read_file(config_path);
  const std::string template_path = dir + "/chat_template.jinja";  // newer repos keep the template beside the config
  if (file_exists(template_path)) {
    try {
      json config = parse_config(config_json);
      if (!config.contains("chat_template") || config["chat_template"].is_null()) {
        config["chat_template"] = read_file(template_path);
        config_json = config.dump();
      }
    } catch (const Error& e) {
      fail("{}: {}", dir, e.what());
    }
  }
  const std::string model_text = read_file(tiktoken ? tiktoken_path : tokenizer_path);
  try {
    return tiktoken ? from_tiktoken(model_text, config_json, tiktoken_path) : from_json(model_text, config_json);
  } catch (const Error& e) {
    fail("{}: {}", dir, e.what());
  }
}

Tokenizer Tokenizer::from_tiktoken(const std::string& tiktoken_model, const std::string& config_json,
                                   const std::string& source) {
  auto impl = std::make_shared<Impl>();
  const json config = parse_config(config_json);
  auto model = std::make_unique<tok::Tiktoken>(tiktoken_model, source);
  const int32_t n = model->id_limit();
  impl->model = std::move(model);
  impl->pre_tokenizer = tok::make_pre_tokenizer(
      {{"type", "Split"}, {"pattern", {{"Regex", tok::kimi_pattern()}}}, {"behavior", "Isolated"}, {"invert", false}});
  impl->decoder = tok::make_raw_bytes_decoder();
  try {
    impl->added = tok::AddedVocabulary(tiktoken_added_tokens(config, n), nullptr);
    impl->id_limit = n;
    for (const auto& t : impl->added.tokens()) impl->id_limit = std::max(impl->id_limit, t.id + 1);
    apply_config(*impl, config, false);
  } catch (const json::exception& e) {
    fail("tokenizer_config.json has an unexpected shape: {}", e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json) {
  auto impl = std::make_shared<Impl>();
  json spec;
  try {
    spec = json::parse(tokenizer_json);
  } catch (const json::exception& e) {
    fail("tokenizer.json is not valid JSON: {}", e.what());
  }
  json config = json::object();
  if (!config_json.empty()) {
    try {
      config = json::parse(config_json);
    } catch (const json::exception& e) {
      fail("tokenizer_config.json is not valid JSON: {}", e.what());
    }
  }
  try {
    if (!spec.is_object() || !spec.contains("model")) fail("tokenizer.json has no \"model\"");
    const json& model = spec["model"];
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE") fail("tokenizer.json: model type '{}' is not supported (only BPE)", type);
    impl->model = std::make_unique<tok::Bpe>(model);
    impl->normalizer = tok::make_normalizer(spec.value("normalizer", json()));
    impl->pre_tokenizer = tok::make_pre_tokenizer(spec.value("pre_tokenizer", json()));
    impl->decoder = tok::make_decoder(spec.value("decoder", json()));
    impl->added = tok::AddedVocabulary(spec.value("added_tokens", json()), impl->normalizer.get());
    impl->id_limit = impl->model->id_limit();
    for (const auto& t : impl->added.tokens()) impl->id_limit = std::max(impl->id_limit, t.id + 1);

    bool post_processor_adds = false;
    parse_post_processor(spec.value("post_processor", json()), impl->prefix_ids, impl->suffix_ids,
                         post_processor_adds);
    apply_config(*impl, config, post_processor_adds);
  } catch (const json::exception& e) {
    fail("tokenizer.json / tokenizer_config.json has an unexpected shape: {}", e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids = impl_->encode(text);
  if (add_special_tokens) {
    ids.insert(ids.begin(), impl_->prefix_ids.begin(), impl_->prefix_ids.end());
    ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens, false);
}

std::string Tokenizer::decode_bytes(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens, true);
}

int32_t Tokenizer::token_id(std::string_view token) const { return impl_->token_id(token); }

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const tok::AddedToken* t = impl_->added.by_id(id)) return t->content;
  if (const std::string* token = impl_->model->token(id)) return *token;
  fail("token id {} is outside the vocabulary (ids run from 0 to {})", id, impl_->id_limit - 1);
}

int32_t Tokenizer::vocab_size() const { return impl_->id_limit; }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* t = impl_->added.by_id(id);
  return t && t->special;
}

bool Tokenizer::is_added(int32_t id) const { return impl_->added.by_id(id) != nullptr; }

bool Tokenizer::has_chat_template() const { return impl_->chat_template != nullptr; }

const ChatTemplate& Tokenizer::chat_template() const {
  if (!impl_->chat_template) fail("this tokenizer has no chat template (tokenizer_config.json has no chat_template)");
  return *impl_->chat_template;
}

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamingDecoder::push(int32_t id) {
  window_.push_back(id);
  std::string bytes;
  try {
    bytes = tokenizer_.decode_bytes(window_, skip_special_);
  } catch (...) {
    window_.pop_back();
    throw;
  }
  const size_t ready = bytes.size() - utf8::incomplete_tail(bytes);
  std::string out;
  if (ready > emitted_) {
    out = utf8::lossy(std::string_view(bytes).substr(emitted_, ready - emitted_));
    emitted_ = ready;
  }
  if (ready == bytes.size()) {
    // Everything is out: keep only the last id, as context for decoders that treat the first token specially.
    window_.assign(1, id);
    emitted_ = tokenizer_.decode_bytes(window_, skip_special_).size();
  }
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out;
  if (!window_.empty()) {
    const std::string bytes = tokenizer_.decode_bytes(window_, skip_special_);
    if (bytes.size() > emitted_) out = utf8::lossy(std::string_view(bytes).substr(emitted_));
  }
  window_.clear();
  emitted_ = 0;
  return out;
}

}  // namespace moe
