#pragma once
// Generated tokens -> OpenAI choices, in one place for the streamed and the whole-response paths.
//
// The scheduler sends a GenerationEvent per step of a request: its tokens, their stop-string-safe text (the
// scheduler detokenises incrementally and matches stop strings, because a stop string ends the generation and
// frees the request's cache), their logprobs, and at the end the finish reason. A ChoiceAssembler is fed
// those events for one choice and turns each into a Delta: reasoning text, content text, logprob entries, and
// the finish reason on the last one. The streamed path sends each Delta as an SSE chunk (chunk_choice); the
// whole-response path sends the accumulated state once (message_choice). Both read the same Deltas, so the
// streamed text concatenates to exactly the whole-response text.
//
// Pipeline of feed(): event text -> ReasoningParser (reasoning_content / content) -> content stage -> Delta.
// The content stage is where tool calls (a parser that moves tool-call markup out of content into tool_calls
// deltas) and structured output (validating content against a response_format schema) plug in later: both see
// the content after reasoning is split off, and both emit into the same Delta for both paths.
//
// ResponseAssembler holds the n choices of one request with the response envelope (id, object, created,
// model) and usage.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/scheduler.h"
#include "server/api.h"
#include "server/reasoning.h"
#include "server/tool_call_parser.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {

struct ChoiceOptions {
  bool chat = true;           // chat.completion (message/delta) or text_completion (text)
  bool logprobs = false;      // the request asked for logprobs (top_logprobs >= 0)
  bool reasoning = false;     // split reasoning_content off (chat, reasoning template or --reasoning on)
  bool in_reasoning = false;  // the rendered prompt opened <think>: the reply starts inside reasoning
  std::string echo;           // completions with echo: the prompt text that precedes the choice's text
  // Completions with echo and logprobs: the prompt's token ids, whose logprobs (the scheduler's prompt_logprobs,
  // in the first event) lead the logprobs object, the first token's null; their text_offsets (in characters, as
  // every text_offset) index `echo`, the
  // text of these ids decoded with special tokens skipped or not (echo_skip_special: a text prompt's BOS is not
  // in its echo). Streamed, the echo and these logprobs come in the first event's chunk instead of an opening one.
  std::vector<int32_t> echo_tokens;
  bool echo_skip_special = true;
  bool tools = false;         // parse DeepSeek tool-call markup out of content into tool_calls (chat with tools)
  ToolCallFormat tool_format = ToolCallFormat::v3;
  bool parallel_tool_calls = true;  // false: only the first call is reported
  std::string tool_call_id_prefix = "call_";  // + choice index + "_" + call index
};

class ChoiceAssembler {
 public:
  // `tok` renders logprob entries (token strings and bytes); it must outlive the assembler.
  ChoiceAssembler(const Tokenizer& tok, int32_t index, ChoiceOptions options);

  struct Delta {
    std::string reasoning, content;
    std::vector<ToolCallDelta> tool_calls;
    std::vector<TokenLogprob> logprobs;  // one per token of the event (when requested)
    FinishReason finish = FinishReason::none;
    bool echo = false;  // the echoed prompt and its logprobs lead this Delta (echo_tokens: the first one)
  };
  // Feeds one event of this choice (its index is not checked). The event that finishes the choice also
  // flushes text held back by the reasoning split. Events after the finish are ignored (an empty Delta).
  Delta feed(const GenerationEvent& e);

  bool finished() const { return finish_ != FinishReason::none; }
  bool failed() const { return finish_ == FinishReason::error || finish_ == FinishReason::cancelled; }
  FinishReason finish_reason() const { return finish_; }
  const std::string& content() const { return content_; }
  const std::string& reasoning() const { return reasoning_; }
  std::vector<ToolCall> tool_calls() const;  // the calls reported (parallel_tool_calls false: at most one)
  const std::vector<TokenLogprob>& logprobs() const { return logprobs_; }
  int32_t completion_tokens() const { return completion_tokens_; }
  // Tokens of the reasoning section: those fed while inside <think> ... </think>, the tags' tokens included.
  int32_t reasoning_tokens() const { return reasoning_tokens_; }
  ApiError failure() const;  // the 500 a failed choice answers with

  // OpenAI JSON. Streamed: the choice of the first chunk (chat: the assistant role; completions: the echoed
  // prompt), null when none is sent; the choice of one Delta's chunk, null when the Delta carries nothing.
  nlohmann::json opening_choice() const;
  nlohmann::json chunk_choice(const Delta& d) const;
  // Whole response: the choice with everything accumulated so far.
  nlohmann::json message_choice() const;

 private:
  nlohmann::json chat_logprobs(const std::vector<TokenLogprob>& lps) const;  // {"content": [...]}
  // with_prompt: the prompt's entries (echo_tokens) first.
  nlohmann::json text_logprobs(const std::vector<TokenLogprob>& lps, size_t text_offset, bool with_prompt = false) const;
  bool echo_logprobs() const { return !opt_.chat && opt_.logprobs && !opt_.echo_tokens.empty(); }
  nlohmann::json finish_json(FinishReason r) const;

  const Tokenizer& tok_;
  int32_t index_;
  ChoiceOptions opt_;
  ReasoningParser parser_;
  ToolCallParser tool_parser_;
  std::string content_, reasoning_, error_;
  std::vector<TokenLogprob> logprobs_;
  std::vector<TokenLogprob> prompt_logprobs_;  // echo_logprobs(): entry i is echo_tokens[i + 1]'s
  bool echo_sent_ = false;                     // streamed: the Delta with the echo went out
  FinishReason finish_ = FinishReason::none;
  int32_t completion_tokens_ = 0;
  // A second parser fed token by token, so that a token is counted as reasoning by its own text even when one
  // event carries several (speculative decoding) across the end of the section.
  ReasoningParser token_parser_;
  int32_t reasoning_tokens_ = 0;
};

struct ResponseInfo {
  std::string id, model;
  int64_t created = 0;
  bool chat = true;
  bool include_usage = false;  // streamed: every chunk carries "usage": null, and a last chunk the totals
  int32_t prompt_tokens = 0;
};

class ResponseAssembler {
 public:
  ResponseAssembler(const Tokenizer& tok, ResponseInfo info, int32_t n, const ChoiceOptions& options);

  // Feeds an event to its choice. Streamed: returns the chunk to send (null when there is nothing to send),
  // or, when the event fails its choice, the error object to send before ending the stream (failed() is then
  // true).
  nlohmann::json feed(const GenerationEvent& e);
  bool done() const { return done_ == int32_t(choices_.size()); }  // every choice finished
  bool failed() const;

  std::vector<nlohmann::json> opening_chunks() const;  // streamed: sent before any event
  nlohmann::json usage_chunk() const;  // streamed, with include_usage: after the last choice ends
  // Whole response, once done(); throws the ApiError of the first failed choice.
  nlohmann::json response() const;

  const ResponseInfo& info() const { return info_; }
  const ChoiceAssembler& choice(size_t i) const { return choices_.at(i); }

 private:
  nlohmann::json chunk(nlohmann::json choices) const;
  nlohmann::json usage() const;

  ResponseInfo info_;
  std::vector<ChoiceAssembler> choices_;
  int32_t done_ = 0;
  std::vector<int32_t> cached_tokens_;  // per choice, as its events report (prompt tokens from the prefix cache)
};

}  // namespace moe::server
