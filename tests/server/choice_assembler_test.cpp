// ChoiceAssembler / ResponseAssembler: events -> OpenAI choices. The streamed chunks and the whole response
// are built from the same events and must agree exactly; events come from the real scheduler (stop strings
// across token boundaries) or from the tiny tokenizer's tokens through a StreamingDecoder, as the scheduler
// makes them.
#include "server/choice_assembler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/backend.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "server/responses_api.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {
namespace {

using nlohmann::json;

const char* kModel = "models/tiny-dsv3";

const Tokenizer& tokenizer() {
  static const Tokenizer t = Tokenizer::load(kModel);
  return t;
}

// One event per token, text decoded incrementally (the scheduler's path without stop strings); the last event
// carries the decoder's rest and the finish.
std::vector<GenerationEvent> events_for(const std::vector<int32_t>& tokens, FinishReason finish,
                                        int32_t index = 0, int32_t top_logprobs = -1) {
  StreamingDecoder dec(tokenizer(), /*skip_special_tokens=*/true);
  std::vector<GenerationEvent> out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    GenerationEvent e;
    e.index = index;
    e.tokens = {tokens[i]};
    e.text = dec.push(tokens[i]);
    if (top_logprobs >= 0) {
      TokenLogprob lp{tokens[i], -0.25f * float(i + 1), {}};
      for (int32_t k = 0; k < top_logprobs; ++k)
        lp.top.push_back({int32_t((tokens[i] + k) % 2000), -0.5f * float(k)});
      e.logprobs.push_back(lp);
    }
    e.completion_tokens = int32_t(i + 1);
    if (i + 1 == tokens.size()) {
      e.text += dec.flush();
      e.finish = finish;
    }
    out.push_back(std::move(e));
  }
  return out;
}

GenerationEvent text_event(std::string text, FinishReason finish = FinishReason::none) {
  GenerationEvent e;
  e.text = std::move(text);
  e.finish = finish;
  return e;
}

ResponseInfo info(bool chat, bool include_usage = false) {
  return {"id-1", "tiny", 1234, chat, include_usage, 7};
}

// What a streamed response says per choice: the concatenated text fields, logprobs and the finish reason.
struct Streamed {
  std::string content, reasoning;
  json logprobs = json::array();  // chat: the content entries; completions: the tokens
  json finish = nullptr;
  int chunks = 0;
};

// Feeds the events to a fresh assembler as the streamed path does and to another as the whole-response path
// does.
std::pair<std::vector<Streamed>, json> both_paths(const std::vector<GenerationEvent>& events, ResponseInfo ri,
                                                  int32_t n, const ChoiceOptions& o) {
  ResponseAssembler streamed(tokenizer(), ri, n, o), whole(tokenizer(), ri, n, o);
  std::vector<Streamed> s(static_cast<size_t>(n));
  auto take = [&](const json& chunk) {
    EXPECT_EQ(chunk["object"], ri.chat ? "chat.completion.chunk" : "text_completion");
    EXPECT_EQ(chunk["id"], ri.id);
    EXPECT_EQ(chunk.contains("usage"), ri.include_usage);
    for (const auto& c : chunk["choices"]) {
      Streamed& st = s.at(c["index"].get<size_t>());
      EXPECT_TRUE(st.finish.is_null()) << "chunk after the finish";
      ++st.chunks;
      st.finish = c["finish_reason"];
      if (ri.chat) {
        const json& d = c["delta"];
        if (d.contains("content")) st.content += d["content"].get<std::string>();
        if (d.contains("reasoning_content")) st.reasoning += d["reasoning_content"].get<std::string>();
        if (!c["logprobs"].is_null())
          for (const auto& e : c["logprobs"]["content"]) st.logprobs.push_back(e);
      } else {
        st.content += c["text"].get<std::string>();
        if (!c["logprobs"].is_null())
          for (const auto& t : c["logprobs"]["tokens"]) st.logprobs.push_back(t);
      }
    }
  };
  for (const auto& c : streamed.opening_chunks()) take(c);
  for (const auto& e : events) {
    const json chunk = streamed.feed(e);
    EXPECT_FALSE(streamed.failed());
    if (!chunk.is_null()) take(chunk);
    whole.feed(e);
  }
  EXPECT_TRUE(streamed.done());
  EXPECT_TRUE(whole.done());
  if (ri.include_usage) {
    EXPECT_EQ(streamed.usage_chunk()["usage"], whole.response()["usage"]);
  }
  return {s, whole.response()};
}

// Every choice of the whole response equals its streamed concatenation.
void expect_same(const std::vector<Streamed>& s, const json& whole, bool chat) {
  ASSERT_EQ(whole["choices"].size(), s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const json& c = whole["choices"][i];
    EXPECT_EQ(c["index"].get<size_t>(), i);
    EXPECT_EQ(c["finish_reason"], s[i].finish) << i;
    if (chat) {
      EXPECT_EQ(c["message"]["content"].get<std::string>(), s[i].content) << i;
      const json r = c["message"].value("reasoning_content", json());
      EXPECT_EQ(r.is_null() ? std::string() : r.get<std::string>(), s[i].reasoning) << i;
      if (!c["logprobs"].is_null()) {
        EXPECT_EQ(c["logprobs"]["content"], s[i].logprobs) << i;
      }
    } else {
      EXPECT_EQ(c["text"].get<std::string>(), s[i].content) << i;
      if (!c["logprobs"].is_null()) {
        EXPECT_EQ(c["logprobs"]["tokens"], s[i].logprobs) << i;
      }
    }
  }
}

TEST(ChoiceAssembler, StopStringSplitAcrossTokensAndLength) {
  auto backend = make_backend("cpu");
  DeepseekV3 model(kModel, *backend);
  const std::vector<int32_t> prompt = {311, 811, 1336, 101, 151, 1684, 1100};
  Generator gen(model, int64_t(prompt.size()) + 25);
  GenerateOptions go;
  go.max_new_tokens = 24;
  const auto ref = gen.generate(prompt, go);
  // A stop string from inside token 5's text to inside token 7's text.
  const std::string before = tokenizer().decode(std::span(ref).first(5), true);
  const std::string upto7 = tokenizer().decode(std::span(ref).first(7), true);
  ASSERT_GT(upto7.size(), before.size() + 2);
  const size_t start = before.empty() ? 0 : before.size() - 1;
  const std::string stop = upto7.substr(start, upto7.size() - 1 - start);
  const std::string full = tokenizer().decode(ref, true);
  const std::string expected = full.substr(0, full.find(stop));

  SchedulerOptions so;
  so.cache_tokens = 1024;
  Scheduler sched(model, &tokenizer(), so);
  for (bool chat : {true, false}) {
    for (bool with_stop : {true, false}) {
      auto sink = std::make_shared<EventSink>();
      GenerationRequest r;
      r.prompt = prompt;
      r.max_tokens = 24;
      r.ignore_eos = true;
      if (with_stop) r.stop = {stop};
      sched.submit(r, sink, 0);
      std::vector<GenerationEvent> events;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while ((events.empty() || events.back().finish == FinishReason::none) &&
             std::chrono::steady_clock::now() < deadline)
        for (auto& e : sink->pop(std::chrono::milliseconds(50))) events.push_back(std::move(e));
      ASSERT_FALSE(events.empty());
      ChoiceOptions o;
      o.chat = chat;
      auto [s, whole] = both_paths(events, info(chat, true), 1, o);
      expect_same(s, whole, chat);
      EXPECT_EQ(s[0].content, with_stop ? expected : full);
      EXPECT_EQ(s[0].finish, with_stop ? "stop" : "length");
      EXPECT_EQ(whole["usage"]["completion_tokens"], with_stop ? int(events.back().completion_tokens) : 24);
      EXPECT_EQ(whole["usage"]["prompt_tokens"], 7);
    }
  }
}

TEST(ChoiceAssembler, ReasoningTagsAsTokens) {
  const Tokenizer& tok = tokenizer();
  ASSERT_EQ(tok.encode("<think>", false),
            std::vector<int32_t>{2046});  // one token each: tags split at tokens
  ChoiceOptions o;
  o.reasoning = true;
  {
    const auto tokens = tok.encode("<think>Let me think.</think>\n\nThe answer is 4.", false);
    auto [s, whole] = both_paths(events_for(tokens, FinishReason::stop), info(true), 1, o);
    expect_same(s, whole, true);
    EXPECT_EQ(whole["choices"][0]["message"]["reasoning_content"], "Let me think.");
    EXPECT_EQ(whole["choices"][0]["message"]["content"], "The answer is 4.");
  }
  {  // The prompt opened <think>: only the end tag comes, and an immediately closed think is "" (not null).
    o.in_reasoning = true;
    auto [s, whole] =
        both_paths(events_for(tok.encode("</think>ok", false), FinishReason::stop), info(true), 1, o);
    expect_same(s, whole, true);
    EXPECT_EQ(whole["choices"][0]["message"]["reasoning_content"], "");
    EXPECT_EQ(whole["choices"][0]["message"]["content"], "ok");
  }
  {  // Tags split inside their text, as a byte-level tokenizer without added tokens would produce them.
    o.in_reasoning = false;
    std::vector<GenerationEvent> ev = {text_event(" <th"),   text_event("ink>a"),
                                       text_event("b</thi"), text_event("nk>\n"),
                                       text_event("\nc"),    text_event("d", FinishReason::length)};
    auto [s, whole] = both_paths(ev, info(true), 1, o);
    expect_same(s, whole, true);
    EXPECT_EQ(s[0].reasoning, "ab");
    EXPECT_EQ(s[0].content, "cd");
    EXPECT_EQ(s[0].finish, "length");
  }
  {  // Reasoning off: the tags are content.
    o.reasoning = false;
    auto [s, whole] =
        both_paths(events_for(tok.encode("<think>x</think>y", false), FinishReason::stop), info(true), 1, o);
    EXPECT_EQ(whole["choices"][0]["message"]["content"], "<think>x</think>y");
    EXPECT_FALSE(whole["choices"][0]["message"].contains("reasoning_content"));
  }
}

TEST(ChoiceAssembler, Logprobs) {
  const Tokenizer& tok = tokenizer();
  const auto tokens = tok.encode("Hello world, 4.", false);
  ChoiceOptions o;
  o.logprobs = true;
  auto events = events_for(tokens, FinishReason::length, 0, 2);
  auto [s, whole] = both_paths(events, info(true), 1, o);
  expect_same(s, whole, true);
  const json& lp = whole["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    EXPECT_EQ(lp[i]["token"], tok.decode(std::span(&id, 1)));
    EXPECT_FLOAT_EQ(lp[i]["logprob"].get<float>(), -0.25f * float(i + 1));
    json bytes = json::array();
    for (unsigned char c : tok.decode_bytes(std::span(&id, 1))) bytes.push_back(int(c));
    EXPECT_EQ(lp[i]["bytes"], bytes);
    ASSERT_EQ(lp[i]["top_logprobs"].size(), 2u);
    EXPECT_FLOAT_EQ(lp[i]["top_logprobs"][1]["logprob"].get<float>(), -0.5f);
  }
  // Completions: tokens, token_logprobs, top_logprobs, text_offset counted after the echoed prompt.
  o.chat = false;
  o.echo = "Say: ";
  auto [s2, whole2] = both_paths(events, info(false), 1, o);
  const json& c = whole2["choices"][0];
  EXPECT_EQ(c["text"], "Say: Hello world, 4.");
  EXPECT_EQ(s2[0].content, c["text"]);  // the opening chunk carries the echo
  ASSERT_EQ(c["logprobs"]["tokens"].size(), tokens.size());
  EXPECT_EQ(c["logprobs"]["tokens"], s2[0].logprobs);
  EXPECT_EQ(c["logprobs"]["text_offset"][0], 5);
  size_t offset = 5;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(c["logprobs"]["text_offset"][i], offset);
    offset += c["logprobs"]["tokens"][i].get<std::string>().size();
  }
  EXPECT_EQ(c["logprobs"]["top_logprobs"][0].size(), 2u);
  // Without logprobs requested, they are null everywhere.
  o.logprobs = false;
  auto [s3, whole3] = both_paths(events_for(tokens, FinishReason::stop), info(false), 1, o);
  EXPECT_TRUE(whole3["choices"][0]["logprobs"].is_null());
}

// Completions echo with logprobs: the prompt's tokens lead the logprobs object (the first with null logprob and
// null alternatives), each text_offset is where the token's text starts in the echoed prompt, and the streamed
// path sends the echo and the prompt's entries in the first event's chunk.
TEST(ChoiceAssembler, EchoWithPromptLogprobs) {
  const Tokenizer& tok = tokenizer();
  auto chars = [](const std::string& s) {  // text_offset counts code points
    return size_t(std::count_if(s.begin(), s.end(), [](char c) { return (uint8_t(c) & 0xC0) != 0x80; }));
  };
  const std::string prompt_text = "Say: caf\xc3\xa9 4.";  // a two-byte character, split or not by the tokenizer
  const auto prompt = tok.encode(prompt_text, true);        // BOS first: special, so not in the echo
  ASSERT_GE(prompt.size(), 4u);
  const auto tokens = tok.encode(" ok", false);
  auto events = events_for(tokens, FinishReason::length, 0, 2);
  std::vector<TokenLogprob> plp;
  for (size_t i = 1; i < prompt.size(); ++i)
    plp.push_back({prompt[i], -1.0f - float(i), {{prompt[i], -1.0f - float(i)}, {7, -9.0f}}});
  events[0].prompt_logprobs = plp;
  ChoiceOptions o;
  o.chat = false;
  o.logprobs = true;
  o.echo = prompt_text;
  o.echo_tokens = prompt;
  auto [s, whole] = both_paths(events, info(false), 1, o);
  expect_same(s, whole, false);
  const json& c = whole["choices"][0];
  EXPECT_EQ(c["text"], prompt_text + " ok");
  const json& lp = c["logprobs"];
  const size_t n = prompt.size() + tokens.size();
  ASSERT_EQ(lp["tokens"].size(), n);
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  ASSERT_EQ(lp["top_logprobs"].size(), n);
  ASSERT_EQ(lp["text_offset"].size(), n);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["text_offset"][0], 0);
  for (size_t i = 0; i < prompt.size(); ++i) {
    const int32_t id = prompt[i];
    EXPECT_EQ(lp["tokens"][i], tok.decode(std::span(&id, 1))) << i;
    // The offset is the length of the text of the tokens before it (skipping BOS), which the echo starts with.
    const std::string before = tok.decode(std::span(prompt.data(), i), true);
    const size_t offset = lp["text_offset"][i].get<size_t>();
    if (before.find("\xef\xbf\xbd") == std::string::npos) {
      EXPECT_EQ(prompt_text.compare(0, before.size(), before), 0) << i;
      EXPECT_EQ(offset, chars(before)) << i;
    } else {
      EXPECT_LT(offset, chars(before)) << i;  // inside a split character: the character's start
    }
    if (i == 0) continue;
    EXPECT_FLOAT_EQ(lp["token_logprobs"][i].get<float>(), -1.0f - float(i)) << i;
    EXPECT_EQ(lp["top_logprobs"][i].size(), 2u) << i;
  }
  // The completion's entries follow, counted from the end of the echo.
  EXPECT_EQ(lp["text_offset"][prompt.size()], chars(prompt_text));
  EXPECT_EQ(chars(prompt_text), prompt_text.size() - 1);  // é: two bytes, one character
  EXPECT_FLOAT_EQ(lp["token_logprobs"][prompt.size()].get<float>(), -0.25f);
  // Streamed: no opening chunk; the first chunk carries the echo, the prompt's entries and the first token's.
  ResponseAssembler streamed(tok, info(false), 1, o);
  EXPECT_TRUE(streamed.opening_chunks().empty());
  const json first = streamed.feed(events[0]);
  const json& fc = first["choices"][0];
  EXPECT_EQ(fc["text"].get<std::string>().rfind(prompt_text, 0), 0u);
  ASSERT_EQ(fc["logprobs"]["tokens"].size(), prompt.size() + 1);
  EXPECT_TRUE(fc["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_EQ(fc["logprobs"]["text_offset"][prompt.size()], chars(prompt_text));

  // max_tokens 0 (scoring): one event, no tokens; the choice is the prompt and its logprobs, finish "length".
  GenerationEvent score;
  score.finish = FinishReason::length;
  score.prompt_logprobs = plp;
  auto [s0, whole0] = both_paths({score}, info(false, true), 1, o);
  expect_same(s0, whole0, false);
  EXPECT_EQ(whole0["choices"][0]["text"], prompt_text);
  EXPECT_EQ(whole0["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(whole0["choices"][0]["logprobs"]["tokens"].size(), prompt.size());
  EXPECT_EQ(whole0["usage"]["completion_tokens"], 0);
  // Without echo, max_tokens 0 is an empty text.
  o.echo.clear();
  o.echo_tokens.clear();
  o.logprobs = false;
  auto [s1, whole1] = both_paths({score}, info(false), 1, o);
  EXPECT_EQ(whole1["choices"][0]["text"], "");
  EXPECT_EQ(whole1["choices"][0]["finish_reason"], "length");
}

TEST(ChoiceAssembler, FinishReasonsAndFailures) {
  ChoiceOptions o;
  for (auto [reason, name] :
       {std::pair{FinishReason::stop, "stop"}, std::pair{FinishReason::length, "length"}}) {
    auto [s, whole] = both_paths({text_event("a"), text_event("b", reason)}, info(true), 1, o);
    EXPECT_EQ(whole["choices"][0]["finish_reason"], name);
    EXPECT_EQ(s[0].finish, name);
    EXPECT_EQ(s[0].chunks, 3);  // role, "a", "b" + finish
  }
  // A finish without text still gets its chunk; an empty event gets none.
  {
    ResponseAssembler r(tokenizer(), info(true), 1, o);
    EXPECT_TRUE(r.feed(text_event("")).is_null());
    const json last = r.feed(text_event("", FinishReason::stop));
    EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(last["choices"][0]["delta"], json::object());
    EXPECT_TRUE(r.feed(text_event("late")).is_null());  // after the finish: ignored
    EXPECT_EQ(r.response()["choices"][0]["message"]["content"], "");
  }
  // A failed choice: the stream gets the error object; the whole response throws the 500.
  for (FinishReason f : {FinishReason::error, FinishReason::cancelled}) {
    ResponseAssembler r(tokenizer(), info(false), 2, o);
    r.feed(text_event("x", FinishReason::stop));
    GenerationEvent e = text_event("", f);
    e.index = 1;
    e.error = f == FinishReason::error ? "boom" : "";
    const json err = r.feed(e);
    EXPECT_TRUE(r.failed());
    EXPECT_TRUE(r.done());
    EXPECT_EQ(err["error"]["code"], "generation_failed");
    EXPECT_EQ(err["error"]["message"],
              f == FinishReason::error ? "Generation failed: boom" : "Generation failed: cancelled");
    try {
      r.response();
      ADD_FAILURE() << "no throw";
    } catch (const ApiError& a) {
      EXPECT_EQ(a.status, 500);
    }
  }
}

TEST(ChoiceAssembler, StreamedDeltasConcatenateToWholeResponse) {
  std::mt19937 rng(7);
  for (int round = 0; round < 40; ++round) {
    const bool chat = round % 2 == 0;
    ChoiceOptions o;
    o.chat = chat;
    o.logprobs = round % 3 == 0;
    o.reasoning = chat && round % 4 != 2;
    o.in_reasoning = o.reasoning && round % 8 == 4;
    if (!chat && round % 4 == 1) o.echo = "prompt text";
    // Two interleaved choices of random tokens, with the think tags (2046, 2047) and multi-byte pieces
    // likely.
    const int32_t n = 2;
    std::vector<std::vector<GenerationEvent>> per(n);
    for (int32_t i = 0; i < n; ++i) {
      std::vector<int32_t> tokens;
      const size_t len = 1 + rng() % 30;
      for (size_t k = 0; k < len; ++k)
        tokens.push_back(rng() % 5 == 0 ? int32_t(2046 + rng() % 2) : int32_t(rng() % 2046));
      per[size_t(i)] =
          events_for(tokens, rng() % 2 ? FinishReason::stop : FinishReason::length, i, o.logprobs ? 1 : -1);
    }
    std::vector<GenerationEvent> events;
    size_t a = 0, b = 0;
    while (a < per[0].size() || b < per[1].size())
      events.push_back((b == per[1].size() || (a < per[0].size() && rng() % 2)) ? per[0][a++] : per[1][b++]);
    auto [s, whole] = both_paths(events, info(chat, round % 5 == 0), n, o);
    expect_same(s, whole, chat);
    if (!chat) {  // completions keep every byte of the decoded text
      std::string text = o.echo;
      for (const auto& e : per[0]) text += e.text;
      EXPECT_EQ(whole["choices"][0]["text"], text);
    }
  }
}

// usage.prompt_tokens_details.cached_tokens as OpenAI reports it: the prompt tokens the prefix cache gave; with
// n choices (one request each), the fewest any of them reused; the same streamed (include_usage) and whole.
TEST(ResponseAssembler, UsageReportsCachedPromptTokens) {
  for (const bool chat : {true, false}) {
    ChoiceOptions o;
    o.chat = chat;
    auto a = events_for({300, 301, 302}, FinishReason::length, 0), b = events_for({400, 401}, FinishReason::stop, 1);
    for (auto& e : a) e.cached_tokens = 32;
    for (auto& e : b) e.cached_tokens = 16;
    auto events = a;
    events.insert(events.end(), b.begin(), b.end());
    auto [s, whole] = both_paths(events, info(chat, true), 2, o);
    EXPECT_EQ(whole["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
    EXPECT_EQ(whole["usage"]["prompt_tokens"], 7);
    EXPECT_EQ(whole["usage"]["total_tokens"], 7 + 5);
    auto [s1, one] = both_paths(a, info(chat, true), 1, o);
    EXPECT_EQ(one["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
  }
}

// The reference for reasoning_tokens: the shortest prefix of the reply whose decoded text holds "</think>" (the
// tokens up to and including the end tag), found on the whole decoded prefix rather than token by token.
int32_t tokens_through_end_tag(const std::vector<int32_t>& tokens) {
  for (size_t k = 1; k <= tokens.size(); ++k)
    if (tokenizer().decode(std::span(tokens.data(), k), true).find("</think>") != std::string::npos) return int32_t(k);
  return int32_t(tokens.size());
}

TEST(ChoiceAssembler, ReasoningTokensCountTheSection) {
  const Tokenizer& tok = tokenizer();
  const auto tokens = tok.encode("<think>Let me think it over: 2 + 2.</think>\n\nThe answer is 4, surely.", false);
  const int32_t expected = tokens_through_end_tag(tokens);
  ASSERT_GT(expected, 5);
  ASSERT_LT(expected, int32_t(tokens.size()) - 3);  // content tokens follow, which must not count
  ChoiceOptions o;
  o.reasoning = true;
  {  // One event per token.
    ChoiceAssembler c(tok, 0, o);
    for (const auto& e : events_for(tokens, FinishReason::stop)) c.feed(e);
    EXPECT_EQ(c.reasoning_tokens(), expected);
    EXPECT_EQ(c.completion_tokens(), int32_t(tokens.size()));
  }
  {  // Several tokens per event (speculative decoding) across the end of the section.
    ChoiceAssembler c(tok, 0, o);
    auto per_token = events_for(tokens, FinishReason::stop);
    for (size_t i = 0; i < per_token.size(); i += 3) {
      GenerationEvent e;
      for (size_t j = i; j < std::min(i + 3, per_token.size()); ++j) {
        e.tokens.push_back(per_token[j].tokens[0]);
        e.text += per_token[j].text;
        e.finish = per_token[j].finish;
        e.completion_tokens = per_token[j].completion_tokens;
      }
      c.feed(e);
    }
    EXPECT_EQ(c.reasoning_tokens(), expected);
    EXPECT_EQ(c.reasoning(), "Let me think it over: 2 + 2.");
  }
  {  // The prompt opened <think>: the reply's tokens up to the end tag.
    o.in_reasoning = true;
    const auto rest = tok.encode("Hmm, fine.</think>Yes it is.", false);
    ChoiceAssembler c(tok, 0, o);
    for (const auto& e : events_for(rest, FinishReason::stop)) c.feed(e);
    EXPECT_EQ(c.reasoning_tokens(), tokens_through_end_tag(rest));
    EXPECT_GT(c.reasoning_tokens(), 2);
  }
  {  // Reasoning off: the tags are content, nothing counts.
    o.reasoning = false;
    ChoiceAssembler c(tok, 0, o);
    for (const auto& e : events_for(tokens, FinishReason::stop)) c.feed(e);
    EXPECT_EQ(c.reasoning_tokens(), 0);
  }
}

TEST(ResponsesAssembler, UsageDetailsFromEventsAndReasoning) {
  const Tokenizer& tok = tokenizer();
  const auto tokens = tok.encode("<think>Short thought.</think>Done here.", false);
  ChoiceOptions o;
  o.reasoning = true;
  ResponsesAssembler r(tok, "resp_abcdefgh12345678", "tiny", 1234, 40, json::object(), o);
  r.start();
  EXPECT_TRUE(r.response()["usage"].is_null());  // not finished
  for (auto e : events_for(tokens, FinishReason::stop)) {
    e.prompt_tokens = 40;
    e.cached_tokens = 32;
    r.feed(e);
  }
  ASSERT_TRUE(r.done());
  const json u = r.response()["usage"];
  EXPECT_EQ(u["input_tokens"], 40);
  EXPECT_EQ(u["input_tokens_details"]["cached_tokens"], 32);
  EXPECT_EQ(u["output_tokens"], int32_t(tokens.size()));
  EXPECT_EQ(u["output_tokens_details"]["reasoning_tokens"], tokens_through_end_tag(tokens));
  EXPECT_EQ(u["total_tokens"], 40 + int32_t(tokens.size()));
}

}  // namespace
}  // namespace moe::server
