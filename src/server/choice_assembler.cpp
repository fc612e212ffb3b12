#include "server/choice_assembler.h"

#include <algorithm>
#include <span>

namespace moe::server {

using nlohmann::json;

namespace {
// Characters (code points) of UTF-8 text: text_offset counts them, as OpenAI's and vLLM's (Python str) do.
size_t code_points(std::string_view s) {
  return size_t(std::count_if(s.begin(), s.end(), [](char c) { return (uint8_t(c) & 0xC0) != 0x80; }));
}
}  // namespace

ChoiceAssembler::ChoiceAssembler(const Tokenizer& tok, int32_t index, ChoiceOptions options)
    : tok_(tok),
      index_(index),
      opt_(std::move(options)),
      parser_(opt_.chat && opt_.reasoning, opt_.in_reasoning),
      tool_parser_(opt_.tool_format, opt_.tool_call_id_prefix + std::to_string(index) + "_"),
      token_parser_(opt_.chat && opt_.reasoning, opt_.in_reasoning) {}

std::vector<ToolCall> ChoiceAssembler::tool_calls() const {
  std::vector<ToolCall> calls = tool_parser_.calls();
  if (!opt_.parallel_tool_calls && calls.size() > 1) calls.resize(1);
  return calls;
}

ChoiceAssembler::Delta ChoiceAssembler::feed(const GenerationEvent& e) {
  Delta d;
  if (finished()) return d;
  for (const int32_t t : e.tokens) {
    const bool before = token_parser_.in_reasoning();
    token_parser_.feed(tok_.decode_bytes(std::span(&t, 1), /*skip_special_tokens=*/true));  // as the events
    if (before || token_parser_.in_reasoning()) ++reasoning_tokens_;
  }
  auto r = parser_.feed(e.text);
  if (e.finish != FinishReason::none) {
    auto f = parser_.flush();
    r.content += f.content;
    r.reasoning += f.reasoning;
  }
  // Content stage: tool calls move out of content (structured output plugs in here too; see the header).
  if (opt_.chat && opt_.tools) {
    auto t = tool_parser_.feed(r.content);
    if (e.finish != FinishReason::none) {
      auto f = tool_parser_.flush();
      t.content += f.content;
      t.calls.insert(t.calls.end(), f.calls.begin(), f.calls.end());
    }
    r.content = std::move(t.content);
    for (auto& c : t.calls)
      if (opt_.parallel_tool_calls || c.index == 0) d.tool_calls.push_back(std::move(c));
  }
  d.reasoning = std::move(r.reasoning);
  d.content = std::move(r.content);
  d.logprobs = e.logprobs;
  d.finish = e.finish;
  if (echo_logprobs() && !echo_sent_) {
    echo_sent_ = d.echo = true;
    prompt_logprobs_ = e.prompt_logprobs;
  }

  reasoning_ += d.reasoning;
  content_ += d.content;
  logprobs_.insert(logprobs_.end(), d.logprobs.begin(), d.logprobs.end());
  if (e.finish != FinishReason::none) {
    finish_ = e.finish;
    error_ = e.error;
    completion_tokens_ = e.completion_tokens;
  }
  return d;
}

ApiError ChoiceAssembler::failure() const {
  return ApiError(500, "Generation failed: " + (error_.empty() ? std::string("cancelled") : error_), "",
                  "generation_failed", "server_error");
}

json ChoiceAssembler::finish_json(FinishReason r) const {
  if (r == FinishReason::none) return nullptr;
  if (r == FinishReason::length) return "length";
  return tool_parser_.calls().empty() ? "stop" : "tool_calls";
}

json ChoiceAssembler::chat_logprobs(const std::vector<TokenLogprob>& lps) const {
  auto entry = [&](int32_t id, float logprob) {
    const std::string bytes = tok_.decode_bytes(std::span(&id, 1));
    json b = json::array();
    for (unsigned char ch : bytes) b.push_back(int(ch));
    return json{{"token", tok_.decode(std::span(&id, 1))}, {"logprob", logprob}, {"bytes", b}};
  };
  json content = json::array();
  for (const auto& lp : lps) {
    json j = entry(lp.token, lp.logprob);
    j["top_logprobs"] = json::array();
    for (auto [id, l] : lp.top) j["top_logprobs"].push_back(entry(id, l));
    content.push_back(std::move(j));
  }
  return {{"content", std::move(content)}};
}

json ChoiceAssembler::text_logprobs(const std::vector<TokenLogprob>& lps, size_t text_offset, bool with_prompt) const {
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
  if (with_prompt) {
    // A prompt token's offset is where its text starts in the echo: the bytes the prompt's tokens before it decode
    // to (a character split across tokens starts at the token that begins it).
    StreamingDecoder dec(tok_, opt_.echo_skip_special);
    const size_t echo_chars = code_points(opt_.echo);
    size_t at = 0;
    for (size_t i = 0; i < opt_.echo_tokens.size(); ++i) {
      const int32_t id = opt_.echo_tokens[i];
      tokens.push_back(tok_.decode(std::span(&id, 1)));
      offsets.push_back(std::min(at, echo_chars));
      at += code_points(dec.push(id));
      const TokenLogprob* lp = i >= 1 && i - 1 < prompt_logprobs_.size() ? &prompt_logprobs_[i - 1] : nullptr;
      if (!lp) {  // the first token has no logprob (nothing precedes it), as OpenAI and vLLM report
        token_lps.push_back(nullptr);
        tops.push_back(nullptr);
        continue;
      }
      token_lps.push_back(lp->logprob);
      json top = json::object();
      for (auto [alt, l] : lp->top) top[tok_.decode(std::span(&alt, 1))] = l;
      tops.push_back(top);
    }
  }
  for (const auto& lp : lps) {
    const std::string t = tok_.decode(std::span(&lp.token, 1));
    tokens.push_back(t);
    token_lps.push_back(lp.logprob);
    json top = json::object();
    for (auto [id, l] : lp.top) top[tok_.decode(std::span(&id, 1))] = l;
    tops.push_back(top);
    offsets.push_back(text_offset);
    text_offset += code_points(t);
  }
  return {
      {"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json ChoiceAssembler::opening_choice() const {
  if (opt_.chat)
    return {{"index", index_},
            {"delta", {{"role", "assistant"}, {"content", ""}}},
            {"logprobs", nullptr},
            {"finish_reason", nullptr}};
  if (opt_.echo.empty() || echo_logprobs()) return nullptr;  // with logprobs, the echo leads the first event's chunk
  return {{"index", index_}, {"text", opt_.echo}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
}

json ChoiceAssembler::chunk_choice(const Delta& d) const {
  if (opt_.chat) {
    json delta = json::object();
    if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
    if (!d.content.empty()) delta["content"] = d.content;
    if (!d.tool_calls.empty()) {
      json calls = json::array();
      for (const auto& c : d.tool_calls) {
        json j = {{"index", c.index}, {"function", {{"arguments", c.arguments}}}};
        if (!c.id.empty()) {  // a call's first delta: id, type and name
          j["id"] = c.id;
          j["type"] = "function";
          j["function"]["name"] = c.name;
        }
        calls.push_back(std::move(j));
      }
      delta["tool_calls"] = std::move(calls);
    }
    json lp = opt_.logprobs && !d.logprobs.empty() ? chat_logprobs(d.logprobs) : json(nullptr);
    if (delta.empty() && lp.is_null() && d.finish == FinishReason::none) return nullptr;
    return {{"index", index_}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", finish_json(d.finish)}};
  }
  if (!d.echo && d.content.empty() && d.logprobs.empty() && d.finish == FinishReason::none) return nullptr;
  // text_offset counts from this chunk's text, as before the assembler existed.
  const std::string& echo = d.echo ? opt_.echo : std::string();
  return {{"index", index_},
          {"text", echo + d.content},
          {"logprobs", opt_.logprobs ? text_logprobs(d.logprobs, code_points(echo), d.echo) : json(nullptr)},
          {"finish_reason", finish_json(d.finish)}};
}

json ChoiceAssembler::message_choice() const {
  if (opt_.chat) {
    json msg = {{"role", "assistant"}, {"content", content_}};
    if (const auto calls = tool_calls(); !calls.empty()) {
      msg["tool_calls"] = json::array();
      for (const auto& c : calls)
        msg["tool_calls"].push_back(
            {{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
      if (content_.empty()) msg["content"] = nullptr;  // as OpenAI answers a turn of calls only
    }
    // null when the model never reasoned; "" when the prompt opened <think> and it closed it at once.
    if (opt_.reasoning)
      msg["reasoning_content"] = reasoning_.empty() && !opt_.in_reasoning ? json(nullptr) : json(reasoning_);
    return {{"index", index_},
            {"message", msg},
            {"logprobs", opt_.logprobs ? chat_logprobs(logprobs_) : json(nullptr)},
            {"finish_reason", finish_json(finish_)}};
  }
  return {{"index", index_},
          {"text", opt_.echo + content_},
          {"logprobs", opt_.logprobs ? text_logprobs(logprobs_, code_points(opt_.echo), echo_logprobs()) : json(nullptr)},
          {"finish_reason", finish_json(finish_)}};
}

// ---- ResponseAssembler ----

ResponseAssembler::ResponseAssembler(const Tokenizer& tok, ResponseInfo info, int32_t n,
                                     const ChoiceOptions& options)
    : info_(std::move(info)), cached_tokens_(size_t(std::max(n, 0)), 0) {
  choices_.reserve(size_t(n));
  for (int32_t i = 0; i < n; ++i) choices_.emplace_back(tok, i, options);
}

bool ResponseAssembler::failed() const {
  for (const auto& c : choices_)
    if (c.failed()) return true;
  return false;
}

json ResponseAssembler::chunk(json choices) const {
  json j = {{"id", info_.id},
            {"object", info_.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", info_.created},
            {"model", info_.model},
            {"system_fingerprint", "moe.cpp"},
            {"choices", std::move(choices)}};
  if (info_.include_usage) j["usage"] = nullptr;
  return j;
}

json ResponseAssembler::usage() const {
  int32_t completion_tokens = 0;
  for (const auto& c : choices_) completion_tokens += c.completion_tokens();
  // OpenAI's prompt_tokens_details.cached_tokens: prompt tokens not recomputed. With n > 1 choices (one request
  // each) the fewest any of them reused: the prompt counts once in prompt_tokens.
  const int32_t cached = cached_tokens_.empty() ? 0 : *std::min_element(cached_tokens_.begin(), cached_tokens_.end());
  return {{"prompt_tokens", info_.prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", info_.prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json ResponseAssembler::feed(const GenerationEvent& e) {
  ChoiceAssembler& c = choices_.at(size_t(e.index));
  if (c.finished()) return nullptr;
  cached_tokens_.at(size_t(e.index)) = e.cached_tokens;
  const auto d = c.feed(e);
  if (c.finished()) ++done_;
  if (c.failed()) return c.failure().to_json();
  json choice = c.chunk_choice(d);
  return choice.is_null() ? json(nullptr) : chunk(json::array({std::move(choice)}));
}

std::vector<json> ResponseAssembler::opening_chunks() const {
  std::vector<json> out;
  for (const auto& c : choices_)
    if (json choice = c.opening_choice(); !choice.is_null())
      out.push_back(chunk(json::array({std::move(choice)})));
  return out;
}

json ResponseAssembler::usage_chunk() const {
  json u = chunk(json::array());
  u["usage"] = usage();
  return u;
}

json ResponseAssembler::response() const {
  json choices = json::array();
  for (const auto& c : choices_) {
    if (c.failed()) throw c.failure();
    choices.push_back(c.message_choice());
  }
  return {{"id", info_.id},
          {"object", info_.chat ? "chat.completion" : "text_completion"},
          {"created", info_.created},
          {"model", info_.model},
          {"system_fingerprint", "moe.cpp"},
          {"choices", std::move(choices)},
          {"usage", usage()}};
}

}  // namespace moe::server
