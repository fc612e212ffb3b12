#include "server/api.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/json_depth.h"

namespace moe::server {

using nlohmann::json;

json ApiError::to_json() const {
  return {{"error",
           {{"message", what()},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

double number(const json& body, const char* key, double lo, double hi) {
  const json& v = body.at(key);
  if (!v.is_number()) bad(key, std::string("'") + key + "' must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(key, std::string("'") + key + "' must be between " + json(lo).dump() + " and " + json(hi).dump());
  return d;
}

int64_t integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json& v = body.at(key);
  if (!v.is_number_integer()) bad(key, std::string("'") + key + "' must be an integer");
  int64_t i;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    i = u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max() : int64_t(u);
  } else {
    i = v.get<int64_t>();
  }
  if (i < lo || i > hi)
    bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return i;
}

bool boolean(const json& body, const char* key) {
  const json& v = body.at(key);
  if (!v.is_boolean()) bad(key, std::string("'") + key + "' must be a boolean");
  return v.get<bool>();
}

bool present(const json& body, const char* key) { return body.contains(key) && !body.at(key).is_null(); }

// Strict requests. Fields every generation endpoint implements, then each endpoint's own; kIgnored are accepted for
// compatibility and change nothing (documented in docs/server.md); kRefused are known OpenAI fields this server
// does not implement, refused with the reason. Anything else is a 400 naming it.
const std::set<std::string> kCommonFields = {
    "model", "n", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "frequency_penalty", "presence_penalty", "repetition_penalty", "logprobs", "ignore_eos",
    "user", "logit_bias"};
const std::set<std::string> kChatFields = {"messages", "top_logprobs", "chat_template_kwargs", "tools", "tool_choice",
                                           "parallel_tool_calls", "response_format"};
const std::set<std::string> kCompletionFields = {"prompt", "suffix", "echo", "best_of"};
const std::set<std::string> kIgnored = {"metadata", "store", "service_tier"};
const std::pair<const char*, const char*> kRefused[] = {
    {"functions", "'functions' is deprecated and not supported; send 'tools'"},
    {"function_call", "'function_call' is deprecated and not supported; send 'tool_choice'"},
    {"audio", "audio output is not supported"},
    {"modalities", "only text output is supported; leave 'modalities' out"},
    {"prediction", "predicted outputs are not supported"},
    {"web_search_options", "web search is not supported"},
    {"reasoning_effort", "'reasoning_effort' is not supported; DeepSeek's hybrid models take chat_template_kwargs.thinking"},
};

void check_fields(const json& b, const std::set<std::string>& own, bool generation = true) {
  for (const auto& [key, value] : b.items()) {
    if ((generation && kCommonFields.count(key)) || own.count(key) || kIgnored.count(key)) continue;
    for (const auto& [name, why] : kRefused)
      if (key == name) throw ApiError(400, why, key, "unsupported_parameter");
    throw ApiError(400,
                   "Unrecognized request argument supplied: '" + key +
                       "' (this server refuses fields it does not implement; see docs/server.md for the supported "
                       "fields)",
                   key, "unknown_parameter");
  }
}

// logit_bias: {"token id": bias}, bias in [-100, 100]; the ids are checked against the vocabulary by the server.
std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& v) {
  if (!v.is_object()) bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases");
  if (v.size() > 1024) bad("logit_bias", "'logit_bias' may hold at most 1024 tokens");
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, bias] : v.items()) {
    char* end = nullptr;
    errno = 0;
    const long long id = key.empty() ? -1 : std::strtoll(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || errno != 0 || id < 0 || id > std::numeric_limits<int32_t>::max() ||
        !std::isdigit((unsigned char)key[0]))
      bad("logit_bias", "'logit_bias' keys must be token ids (non-negative integers), got '" + key + "'");
    if (!bias.is_number() || !std::isfinite(bias.get<double>()) || bias.get<double>() < -100 || bias.get<double>() > 100)
      bad("logit_bias", "'logit_bias' values must be numbers between -100 and 100 (token " + key + ")");
    out.emplace_back(int32_t(id), float(bias.get<double>()));
  }
  return out;
}

void parse_common(const json& b, CommonParams& p, bool chat) {
  if (present(b, "model")) {
    if (!b["model"].is_string()) bad("model", "'model' must be a string");
    p.model = b["model"].get<std::string>();
  }
  if (present(b, "n")) p.n = int32_t(integer(b, "n", 1, 16));
  if (present(b, "stream")) p.stream = boolean(b, "stream");
  if (present(b, "stream_options")) {
    const json& so = b["stream_options"];
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!p.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (present(so, "include_usage")) p.include_usage = boolean(so, "include_usage");
  }
  // max_completion_tokens (the newer name) wins over max_tokens. Completions take 0 (scoring: only the prompt is
  // run, with echo and logprobs its logprobs come back); chat needs at least 1, as OpenAI requires.
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (!present(b, key)) continue;
    if (chat && b[key].is_number_integer() && b[key].get<int64_t>() == 0)
      bad(key, std::string("'") + key + "' must be at least 1 (0, scoring a prompt without generating, is a " +
                   "/v1/completions feature)");
    p.max_tokens = integer(b, key, chat ? 1 : 0, std::numeric_limits<int32_t>::max());
  }
  if (present(b, "temperature")) p.sampling.temperature = float(number(b, "temperature", 0, 2));
  if (present(b, "top_p")) p.sampling.top_p = float(number(b, "top_p", 0, 1));
  if (p.sampling.top_p <= 0) bad("top_p", "'top_p' must be greater than 0");
  if (present(b, "top_k")) {
    const int64_t k = integer(b, "top_k", -1, 1 << 20);
    p.sampling.top_k = int32_t(k < 0 ? 0 : k);
  }
  if (present(b, "min_p")) p.sampling.min_p = float(number(b, "min_p", 0, 1));
  if (present(b, "frequency_penalty")) p.sampling.frequency_penalty = float(number(b, "frequency_penalty", -2, 2));
  if (present(b, "presence_penalty")) p.sampling.presence_penalty = float(number(b, "presence_penalty", -2, 2));
  if (present(b, "repetition_penalty"))
    p.sampling.repetition_penalty = float(number(b, "repetition_penalty", 1e-3, 100));
  if (present(b, "seed"))
    p.sampling.seed = uint64_t(integer(b, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  if (present(b, "ignore_eos")) p.ignore_eos = boolean(b, "ignore_eos");
  if (present(b, "logit_bias")) p.sampling.logit_bias = parse_logit_bias(b["logit_bias"]);
  if (present(b, "user")) {
    if (!b["user"].is_string()) bad("user", "'user' must be a string");
    p.user = b["user"].get<std::string>();
  }
  if (present(b, "stop")) {
    const json& s = b["stop"];
    if (s.is_string()) {
      p.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      if (s.size() > 16) bad("stop", "'stop' may hold at most 16 strings");
      for (const auto& x : s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings");
    }
    for (const auto& x : p.stop)
      if (x.empty()) bad("stop", "stop strings must not be empty");
  }
  if (chat) {
    bool lp = false;
    if (present(b, "logprobs")) lp = boolean(b, "logprobs");
    if (present(b, "top_logprobs")) {
      const int64_t k = integer(b, "top_logprobs", 0, 20);
      if (!lp) bad("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
      p.top_logprobs = int32_t(k);
    } else if (lp) {
      p.top_logprobs = 0;
    }
  } else if (present(b, "logprobs")) {
    p.top_logprobs = int32_t(integer(b, "logprobs", 0, 20));
  }
}

std::string content_text(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // [{"type": "text", "text": "..."}]
    std::string out;
    for (const auto& part : content) {
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
        bad(param, "content parts must be objects with a 'type'");
      if (part["type"] != "text") bad(param, "only text content parts are supported");
      if (!part.contains("text") || !part["text"].is_string()) bad(param, "a text content part needs a string 'text'");
      out += part["text"].get<std::string>();
    }
    return out;
  }
  bad(param, "'content' must be a string, an array of content parts, or null");
}

json normalise_messages(const json& msgs) {
  if (!msgs.is_array()) bad("messages", "'messages' must be an array");
  if (msgs.empty()) bad("messages", "'messages' must not be empty");
  json out = json::array();
  for (size_t i = 0; i < msgs.size(); ++i) {
    const json& m = msgs[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(param, param + " must be an object");
    if (!m.contains("role") || !m["role"].is_string()) bad(param + ".role", param + " needs a string 'role'");
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      bad(param + ".role", "unknown role '" + role + "' (system, developer, user, assistant or tool)");
    json n = {{"role", role}};
    const bool has_tool_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    if (!m.contains("content") || m["content"].is_null()) {
      if (role != "assistant" || !has_tool_calls) bad(param + ".content", param + " needs 'content'");
      n["content"] = nullptr;
    } else {
      n["content"] = content_text(m["content"], param + ".content");
    }
    if (has_tool_calls) {
      if (role != "assistant" || !m["tool_calls"].is_array()) bad(param + ".tool_calls", "'tool_calls' must be an array on an assistant message");
      for (const auto& tc : m["tool_calls"]) {
        if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object() ||
            !tc["function"].contains("name") || !tc["function"]["name"].is_string() ||
            !tc["function"].contains("arguments") || !tc["function"]["arguments"].is_string())
          bad(param + ".tool_calls", "each tool call needs function.name and function.arguments strings");
      }
      json calls = m["tool_calls"];
      for (auto& tc : calls)
        if (!tc.contains("type")) tc["type"] = "function";
      n["tool_calls"] = calls;
    }
    if (role == "tool") {
      if (m.contains("tool_call_id") && !m["tool_call_id"].is_string()) bad(param + ".tool_call_id", "'tool_call_id' must be a string");
      if (m.contains("tool_call_id")) n["tool_call_id"] = m["tool_call_id"];
    }
    // An earlier turn's reasoning, sent back by the client: DeepSeek-V3.2's encoder writes it for the turns after the
    // last user message (templates that do not read it ignore it).
    if (role == "assistant" && present(m, "reasoning_content")) {
      if (!m["reasoning_content"].is_string()) bad(param + ".reasoning_content", "'reasoning_content' must be a string");
      n["reasoning_content"] = m["reasoning_content"];
    }
    if (m.contains("name")) {
      if (!m["name"].is_string()) bad(param + ".name", "'name' must be a string");
      n["name"] = m["name"];
    }
    if (present(m, "prefix")) {  // DeepSeek's assistant prefill: only on the last message, an assistant one
      if (!boolean(m, "prefix")) {
        // "prefix": false is the default: nothing to do
      } else if (role != "assistant" || i + 1 != msgs.size() || n["content"].is_null())
        bad(param + ".prefix", "'prefix': true is allowed only on the last message, an assistant message with content");
      else
        n["prefix"] = true;
    }
    // An assistant turn with tool calls and empty text: the templates write the calls only when content is null.
    if (has_tool_calls && n["content"].is_string() && n["content"].get<std::string>().empty()) n["content"] = nullptr;
    out.push_back(std::move(n));
  }
  return out;
}

// response_format: {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}.
std::shared_ptr<const grammar::Schema> parse_response_format(const json& rf) {
  if (!rf.is_object()) bad("response_format", "'response_format' must be an object");
  if (!rf.contains("type") || !rf["type"].is_string())
    bad("response_format.type", "'response_format' needs a string 'type' (text, json_object or json_schema)");
  const std::string type = rf["type"].get<std::string>();
  if (type == "text") return nullptr;
  if (type == "json_object") return std::make_shared<const grammar::Schema>(grammar::Schema::any_object());
  if (type != "json_schema")
    bad("response_format.type", "unknown response_format type '" + type + "' (text, json_object or json_schema)");
  if (!rf.contains("json_schema") || !rf["json_schema"].is_object())
    bad("response_format.json_schema", "response_format of type json_schema needs a 'json_schema' object");
  const json& js = rf["json_schema"];
  if (!js.contains("name") || !js["name"].is_string() || js["name"].get<std::string>().empty())
    bad("response_format.json_schema.name", "'json_schema' needs a non-empty string 'name'");
  bool strict = false;  // OpenAI's default
  if (present(js, "strict")) {
    if (!js["strict"].is_boolean()) bad("response_format.json_schema.strict", "'strict' must be a boolean");
    strict = js["strict"].get<bool>();
  }
  if (!js.contains("schema") || !(js["schema"].is_object() || js["schema"].is_boolean()))
    bad("response_format.json_schema.schema", "'json_schema' needs a 'schema' (a JSON Schema object)");
  try {
    return std::make_shared<const grammar::Schema>(
        grammar::Schema::compile(js["schema"], grammar::SchemaOptions{.strict = strict}));
  } catch (const Error& e) {
    bad("response_format.json_schema.schema", std::string("Invalid schema for response_format: ") + e.what());
  }
}

}  // namespace

json parse_json_body(std::string_view body) {
  // Before parsing: a deeper document would be built, then copied and converted recursively (stack overflow).
  if (json_nesting_depth(body) > kMaxJsonDepth)
    throw ApiError(400, "The request body is refused: JSON nesting deeper than " + std::to_string(kMaxJsonDepth) +
                            " levels", "", "invalid_json");
  json b;
  try {
    b = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    // The parser's message quotes the offending bytes, which may be invalid UTF-8: keep it ASCII.
    std::string why = e.what();
    for (char& ch : why)
      if ((unsigned char)ch >= 0x80 || (unsigned char)ch < 0x20) ch = '?';
    throw ApiError(400, "The request body is not valid JSON: " + why, "", "invalid_json");
  }
  if (!b.is_object()) throw ApiError(400, "The request body must be a JSON object", "", "invalid_json");
  return b;
}

ChatRequest parse_chat_request(std::string_view body, const SamplingParams& defaults) {
  const json b = parse_json_body(body);
  ChatRequest r;
  r.sampling = defaults;
  check_fields(b, kChatFields);
  parse_common(b, r, true);
  if (!b.contains("messages")) bad("messages", "'messages' is required");
  r.messages = normalise_messages(b["messages"]);
  r.assistant_prefix = r.messages.back().value("prefix", false);
  if (present(b, "tools")) r.tools = validate_tools(b["tools"]);
  r.tool_choice = parse_tool_choice(b.contains("tool_choice") ? &b["tool_choice"] : nullptr, r.tools);
  if (present(b, "parallel_tool_calls")) r.parallel_tool_calls = boolean(b, "parallel_tool_calls");
  if (r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named) {
    // Forced calls are generated by the grammar engine: their schemas must compile (unsupported keywords: a 400).
    for (size_t i = 0; i < r.tools.size(); ++i) {
      const json& f = r.tools[i]["function"];
      if (r.tool_choice.mode == ToolChoice::Mode::named && f["name"] != r.tool_choice.name) continue;
      try {
        const grammar::SchemaOptions o{.strict = f.value("strict", false)};
        r.forced_tools.emplace_back(f["name"].get<std::string>(),
                                    std::make_shared<const grammar::Schema>(grammar::Schema::compile(f["parameters"], o)));
      } catch (const Error& e) {
        bad("tools[" + std::to_string(i) + "].function.parameters",
            "The parameter schema of '" + f["name"].get<std::string>() + "' cannot be enforced for a forced call: " +
                e.what());
      }
    }
  }
  if (r.assistant_prefix && (r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named))
    bad("tool_choice", "a forced tool call cannot continue an assistant prefix ('prefix': true)");
  if (present(b, "response_format")) {
    r.response_schema = parse_response_format(b["response_format"]);
    if (r.response_schema && (r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named))
      bad("response_format", "'response_format' cannot be combined with a forced tool call ('tool_choice')");
  }
  if (present(b, "chat_template_kwargs")) {
    if (!b["chat_template_kwargs"].is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    r.chat_template_kwargs = b["chat_template_kwargs"];
  }
  return r;
}

CompletionRequest parse_completion_request(std::string_view body, const SamplingParams& defaults) {
  const json b = parse_json_body(body);
  CompletionRequest r;
  r.sampling = defaults;
  check_fields(b, kCompletionFields);
  if (present(b, "best_of") && !(b["best_of"].is_number_integer() && b["best_of"] == 1))
    throw ApiError(400, "'best_of' is not supported (only 1, the default); send 'n' for several completions", "best_of",
                   "unsupported_parameter");
  parse_common(b, r, false);
  if (!r.max_tokens) r.max_tokens = 16;  // OpenAI's default for /v1/completions
  if (!b.contains("prompt") || b["prompt"].is_null()) bad("prompt", "'prompt' is required");
  const json& p = b["prompt"];
  auto token_list = [&](const json& arr) {
    std::vector<int32_t> ids;
    for (const auto& t : arr) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max())
        bad("prompt", "token ids must be non-negative integers");
      ids.push_back(int32_t(t.get<int64_t>()));
    }
    return ids;
  };
  if (p.is_string()) {
    r.prompt_text = p.get<std::string>();
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r.prompt_text = p[0].get<std::string>();
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    r.prompt_tokens = token_list(p);
  } else if (p.is_array() && p.size() == 1 && p[0].is_array()) {
    r.prompt_tokens = token_list(p[0]);
  } else {
    bad("prompt", "'prompt' must be a string or an array of token ids (batches of prompts are not supported)");
  }
  if (r.prompt_text && r.prompt_text->empty()) bad("prompt", "'prompt' must not be empty");
  if (present(b, "echo")) r.echo = boolean(b, "echo");
  if (present(b, "suffix")) {
    if (!b["suffix"].is_string()) bad("suffix", "'suffix' must be a string");
    if (!r.prompt_text) bad("suffix", "'suffix' needs the prompt as text (fill-in-the-middle)");
    if (r.echo) bad("suffix", "'suffix' cannot be combined with 'echo'");
    r.suffix = b["suffix"].get<std::string>();
  }
  return r;
}

TokenizeRequest parse_tokenize_request(std::string_view body) {
  const json b = parse_json_body(body);
  check_fields(b, {"model", "prompt", "add_special_tokens"}, false);
  TokenizeRequest r;
  if (present(b, "model")) {
    if (!b["model"].is_string()) bad("model", "'model' must be a string");
    r.model = b["model"].get<std::string>();
  }
  if (!present(b, "prompt") || !b["prompt"].is_string()) bad("prompt", "'prompt' must be a string");
  r.prompt = b["prompt"].get<std::string>();
  if (present(b, "add_special_tokens")) r.add_special_tokens = boolean(b, "add_special_tokens");
  return r;
}

DetokenizeRequest parse_detokenize_request(std::string_view body) {
  const json b = parse_json_body(body);
  check_fields(b, {"model", "tokens"}, false);
  DetokenizeRequest r;
  if (present(b, "model")) {
    if (!b["model"].is_string()) bad("model", "'model' must be a string");
    r.model = b["model"].get<std::string>();
  }
  if (!present(b, "tokens") || !b["tokens"].is_array()) bad("tokens", "'tokens' must be an array of token ids");
  for (const auto& t : b["tokens"]) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad("tokens", "'tokens' must be an array of non-negative integer token ids");
    r.tokens.push_back(int32_t(t.get<int64_t>()));
  }
  return r;
}

FeedbackRequest parse_feedback_request(std::string_view body) {
  const json b = parse_json_body(body);
  FeedbackRequest f;
  if (!b.contains("conversation")) bad("conversation", "'conversation' is required");
  f.conversation = normalise_messages(b["conversation"]);
  if (!b.contains("answer") || !b["answer"].is_string()) bad("answer", "'answer' must be a string");
  f.answer = b["answer"].get<std::string>();
  if (!b.contains("rating")) bad("rating", "'rating' is required");
  const json& r = b["rating"];
  if (r == "up" || r == 1) f.rating = 1;
  else if (r == "down" || r == -1) f.rating = -1;
  else bad("rating", "'rating' must be \"up\", \"down\", 1 or -1");
  if (present(b, "model")) {
    if (!b["model"].is_string()) bad("model", "'model' must be a string");
    f.model = b["model"].get<std::string>();
  }
  if (present(b, "comment")) {
    if (!b["comment"].is_string()) bad("comment", "'comment' must be a string");
    f.comment = b["comment"].get<std::string>();
  }
  return f;
}

}  // namespace moe::server
