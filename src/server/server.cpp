#include "server/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <cctype>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <sys/socket.h>
#include <set>

#include "core/error.h"
#include "engine/grammar/constraint.h"
#include "server/access_log.h"
#include "server/api.h"
#include "server/choice_assembler.h"
#include "server/http_body.h"
#include "server/host_check.h"
#include "server/http_connection.h"
#include "server/messages_api.h"
#include "server/responses_api.h"
#include "server/tool_constraint.h"
#include "server/web_assets.h"
#include "server/reasoning.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/dsv32_encoding.h"

namespace moe::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

bool authorized(const std::string& header_value, const std::string& api_key) {
  const std::string expected = "Bearer " + api_key;
  // Touch every byte of the expected value whatever the input, so timing tells nothing about the key.
  unsigned diff = header_value.size() == expected.size() ? 0u : 1u;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char a = i < header_value.size() ? (unsigned char)header_value[i] : 0;
    diff |= unsigned(a ^ (unsigned char)expected[i]);
  }
  return diff == 0;
}

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower((unsigned char)c));
  return s;
}

}  // namespace

namespace {

std::string to_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(to_text(e.to_json()), "application/json");
}

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), uint32_t(rng()));
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct Server::Impl {
  Scheduler& sched;
  Tokenizer tok;
  FeedbackStore* feedback;
  ServerOptions opt;
  HttpServer http{size_t(opt.http_threads)};
  int64_t created = unix_now();
  bool reasoning_template = false;
  ToolCallFormat tool_format = ToolCallFormat::v3;
  bool template_tools = false;  // the chat template renders `tools` itself
  bool dsv32_encoder = false;   // prompts by DeepSeek-V3.2's encoder instead of a chat template
  ToolCallMarkers tool_markers;  // the tool-call markers' token ids, for forced calls

  mutable std::mutex metrics_mu;
  std::map<std::pair<std::string, int>, uint64_t> http_requests;  // (path, status) -> count
  std::atomic<int64_t> open_streams{0};
  std::set<std::string> post_paths;  // routes that read their body through read_body (set up in routes())

  HostPolicy hosts;  // which Host headers are answered (DNS rebinding)

  // The vocabulary as byte strings for structured output, built on the first request that needs it.
  std::once_flag vocab_once;
  std::shared_ptr<const grammar::Vocabulary> vocab;
  const std::shared_ptr<const grammar::Vocabulary>& grammar_vocab() {
    std::call_once(vocab_once, [&] { vocab = grammar::Vocabulary::build(tok); });
    return vocab;
  }

  Impl(Scheduler& s, const Tokenizer& t, FeedbackStore* f, ServerOptions o)
      : sched(s), tok(t), feedback(f), opt(std::move(o)), hosts{opt.host, opt.allowed_hosts, !opt.api_key.empty()} {
    if (tok.has_chat_template()) {
      const std::string& src = tok.chat_template().source();
      reasoning_template = template_supports_reasoning(src);
      tool_format = tool_call_format(src);
      template_tools = template_renders_tools(src);
    } else if (sched.model_config().architecture == "DeepseekV32ForCausalLM") {
      // V3.2 ships no chat template: DeepSeek's encoder format, written natively (tokenizer/dsv32_encoding.h).
      dsv32_encoder = true;
      reasoning_template = true;
      tool_format = ToolCallFormat::dsml;
      template_tools = true;
    }
    tool_markers = tool_call_markers(tok);
  }

  // ---- shared request plumbing ----

  struct Prepared {
    std::vector<int32_t> prompt;
    std::string prompt_text;
    int32_t max_tokens = 0;
    int32_t prompt_logprobs = -1;  // completions with echo and logprobs: the prompt's logprobs, this many alternatives
    bool prompt_from_text = true;  // the prompt came as text (its echo has no special tokens) or as token ids
    bool reasoning_enabled = false, in_reasoning = false;
    bool tools = false;  // parse tool calls out of the reply
    std::function<std::shared_ptr<TokenConstraint>()> constraint;  // one per choice: each keeps its own state
  };

  void check_model(const std::string& model) const {
    if (!model.empty() && model != opt.model_name)
      throw ApiError(404, fmt::format("The model '{}' does not exist (this server serves '{}')", model, opt.model_name),
                     "model", "model_not_found");
  }

  void finish_prepare(Prepared& p, const CommonParams& c) const {
    const int64_t ctx = sched.max_context();
    if (p.prompt.empty()) throw ApiError(400, "The prompt is empty", "prompt");
    if (int64_t(p.prompt.size()) >= ctx)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your prompt has {} "
                                 "tokens. Please reduce the length of the prompt.",
                                 ctx, p.prompt.size()),
                     "messages", "context_length_exceeded");
    const int64_t room = ctx - int64_t(p.prompt.size());
    if (c.max_tokens) {
      if (*c.max_tokens > room)
        throw ApiError(400,
                       fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                   "tokens ({} in the prompt, {} for the completion). Please reduce the prompt or "
                                   "max_tokens.",
                                   ctx, int64_t(p.prompt.size()) + *c.max_tokens, p.prompt.size(), *c.max_tokens),
                       "max_tokens", "context_length_exceeded");
      p.max_tokens = int32_t(*c.max_tokens);
    } else {
      p.max_tokens = int32_t(std::min<int64_t>(room, opt.default_max_tokens));
      // Fit the default into the cache too, so a request without max_tokens is not refused for its size.
      const int64_t cache_room = sched.cache_capacity_tokens() - int64_t(p.prompt.size());
      if (cache_room >= 1) p.max_tokens = int32_t(std::min<int64_t>(p.max_tokens, cache_room));
    }
    const int64_t vocab = sched.model_config().vocab_size;
    for (const auto& [id, bias] : c.sampling.logit_bias)
      if (id >= vocab)
        throw ApiError(400, fmt::format("logit_bias names token {}, outside the vocabulary (0..{})", id, vocab - 1),
                       "logit_bias");
    for (int32_t t : p.prompt)
      if (t < 0 || t >= vocab)
        throw ApiError(400, fmt::format("Token id {} is outside the vocabulary (0..{})", t, vocab - 1), "prompt");
  }

  Prepared prepare_chat(const ChatRequest& r) {
    check_model(r.model);
    if (!tok.has_chat_template() && !dsv32_encoder)
      throw ApiError(400, "This model has no chat template; use /v1/completions");
    json extra = thinking_kwargs(r.chat_template_kwargs);
    Prepared p;
    p.tools = r.tool_choice.mode != ToolChoice::Mode::none;
    if (dsv32_encoder && (r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named))
      throw ApiError(400, "tool_choice 'required' or a named function is not supported yet for DeepSeek-V3.2's DSML tool "
                          "format; use 'auto'", "tool_choice");
    json messages = r.messages;
    if (p.tools) {  // the template describes the tools, or the system prompt does
      if (template_tools) extra["tools"] = r.tools;
      else messages = messages_with_tools(std::move(messages), r.tools, tool_format);
    }
    json prefill;  // DeepSeek's assistant prefix: render the turns before it, then continue its text
    if (r.assistant_prefix) {
      prefill = messages.back();
      messages.erase(messages.size() - 1);
    }
    try {
      if (dsv32_encoder)  // tools go into the encoder's own system section (extra["tools"] above)
        p.prompt_text = dsv32::chat_prompt(nlohmann::ordered_json::parse(messages.dump()),
                                           p.tools ? nlohmann::ordered_json::parse(r.tools.dump()) : nullptr,
                                           thinking_requested(extra));
      else
        p.prompt_text = tok.chat_template().render(messages, true, extra);
    } catch (const std::exception& e) {
      throw ApiError(400, std::string("The chat template could not render these messages: ") + e.what(), "messages");
    }
    if (r.assistant_prefix) p.prompt_text += prefill["content"].get<std::string>();
    p.prompt = tok.encode(p.prompt_text, false);
    finish_prepare(p, r);
    // A constrained reply (response_format) is the JSON from its first token: all content, never split.
    p.reasoning_enabled = !r.response_schema && (opt.reasoning == ReasoningMode::on ||
                                                 (opt.reasoning == ReasoningMode::auto_detect && reasoning_template));
    p.in_reasoning = p.reasoning_enabled && prompt_opens_reasoning(p.prompt_text);
    if (r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named) {
      p.constraint = [this, fns = r.forced_tools] {
        return make_tool_call_constraint(grammar_vocab(), fns, tool_format, tool_markers);
      };
      p.in_reasoning = false;  // the reply starts with the forced call
    }
    return p;
  }

  // DeepSeek's fill-in-the-middle prompt (prefix-suffix-middle): <｜fim▁begin｜>PREFIX<｜fim▁hole｜>SUFFIX<｜fim▁end｜>,
  // the markers checked against the tokenizer's added tokens.
  std::string fim_prompt(const std::string& prefix, const std::string& suffix) const {
    static constexpr const char* kFim[] = {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"};
    for (const char* m : kFim)
      if (tok.token_id(m) < 0)
        throw ApiError(400, fmt::format("'suffix' needs the model's fill-in-the-middle tokens; its tokenizer has no {}", m),
                       "suffix");
    return std::string(kFim[0]) + prefix + kFim[1] + suffix + kFim[2];
  }

  Prepared prepare_completion(const CompletionRequest& r) const {
    check_model(r.model);
    Prepared p;
    if (r.prompt_text && r.suffix) {
      p.prompt_text = fim_prompt(*r.prompt_text, *r.suffix);
      p.prompt = tok.encode(p.prompt_text, true);
    } else if (r.prompt_text) {
      p.prompt_text = *r.prompt_text;
      p.prompt = tok.encode(p.prompt_text, true);
    } else {
      p.prompt = r.prompt_tokens;
      p.prompt_from_text = false;
      finish_prepare(p, r);  // ids checked before decoding them
      p.prompt_text = tok.decode(p.prompt, false);
      return p;
    }
    finish_prepare(p, r);
    return p;
  }

  struct Job {
    std::shared_ptr<EventSink> sink = std::make_shared<EventSink>();
    std::vector<std::shared_ptr<RequestHandle>> handles;
    void cancel_all() {
      for (auto& h : handles) h->cancel();
    }
  };

  Job submit(const Prepared& p, const CommonParams& c) {
    Job job;
    try {
      for (int32_t i = 0; i < c.n; ++i) {
        GenerationRequest g;
        g.prompt = p.prompt;
        g.max_tokens = p.max_tokens;
        g.sampling = c.sampling;
        if (g.sampling.seed) g.sampling.seed = *g.sampling.seed + uint64_t(i);
        g.stop = c.stop;
        g.ignore_eos = c.ignore_eos || opt.ignore_eos;
        g.top_logprobs = c.top_logprobs;
        g.prompt_logprobs = p.prompt_logprobs;
        if (p.constraint) {  // a forced tool call
          g.constraint = p.constraint();
        } else if (c.response_schema) {  // one constraint per choice: each follows its own tokens
          g.constraint = std::make_shared<grammar::GrammarConstraint>(
              grammar_vocab(), std::vector<grammar::Piece>{grammar::Piece::value(*c.response_schema)}, tok.eos_id());
        }
        job.handles.push_back(sched.submit(std::move(g), job.sink, i));
      }
    } catch (const Error& e) {
      job.cancel_all();
      throw ApiError(400, e.what());
    }
    return job;
  }

  // ---- chat / completions ----

  void handle_generation(const std::string& body, httplib::Response& res, bool chat) {
    ChatRequest creq;
    CompletionRequest treq;
    Prepared p;
    if (chat) {
      creq = parse_chat_request(body, opt.default_sampling);
      p = prepare_chat(creq);
    } else {
      treq = parse_completion_request(body, opt.default_sampling);
      p = prepare_completion(treq);
      if (treq.echo && treq.top_logprobs >= 0) p.prompt_logprobs = treq.top_logprobs;
    }
    const CommonParams& c = chat ? static_cast<const CommonParams&>(creq) : static_cast<const CommonParams&>(treq);
    auto job = std::make_shared<Job>(submit(p, c));
    ResponseInfo info{random_id(chat ? "chatcmpl-" : "cmpl-"), opt.model_name, unix_now(), chat, c.include_usage,
                      int32_t(p.prompt.size())};
    ChoiceOptions choice{chat, c.top_logprobs >= 0, chat && p.reasoning_enabled, chat && p.in_reasoning,
                         (!chat && treq.echo) ? p.prompt_text : std::string()};
    if (p.prompt_logprobs >= 0) {
      choice.echo_tokens = p.prompt;
      choice.echo_skip_special = p.prompt_from_text;
    }
    choice.tools = chat && p.tools;
    choice.tool_format = tool_format;
    choice.parallel_tool_calls = !chat || creq.parallel_tool_calls;
    choice.tool_call_id_prefix = "call_" + info.id.substr(info.id.size() - 8) + "_";
    auto out = std::make_shared<ResponseAssembler>(tok, std::move(info), c.n, choice);
    AccessRecord& rec = current_access_record();
    rec.prompt_tokens = int64_t(p.prompt.size());
    rec.completion_tokens = [out, n = c.n] {
      int64_t sum = 0;
      for (int32_t i = 0; i < n; ++i) sum += out->choice(size_t(i)).completion_tokens();
      return sum;
    };
    if (opt.log_prompts) rec.prompt = p.prompt_text;
    if (!c.stream) {
      // Waiting for the whole answer: a client that goes away, or a server that stops, cancels the request at once
      // (its pages are freed before the next step), so nobody's abandoned request runs on and holds the cache.
      if (!wait_whole(*job, [&](const GenerationEvent& e) { out->feed(e); }, [&] { return out->done(); }, res)) return;
      res.set_content(to_text(out->response()), "application/json");
    } else {
      stream_response(res, job, out);
    }
  }

  // Feeds a job's events until done(); false when the client went away (499 set). Throws the 503 of a stopping server.
  template <class Feed, class Done>
  bool wait_whole(Job& job, Feed feed, Done done, httplib::Response& res) {
    const int sock = HttpServer::current_socket();
    while (!done()) {
      for (auto& e : job.sink->pop(std::chrono::milliseconds(100))) feed(e);
      if (done()) break;
      if (http.stopping()) {
        job.cancel_all();
        throw ApiError(503, "The server is shutting down", "", "server_shutting_down", "server_error");
      }
      if (sock >= 0 && client_gone(sock)) {
        job.cancel_all();
        res.status = 499;  // nobody reads it: counted in moe_http_requests_total as the client's close
        return false;
      }
    }
    return true;
  }

  // ---- Anthropic Messages API (messages_api.h) ----

  void handle_messages(const std::string& body, httplib::Response& res) {
    try {
      MessagesRequest m = parse_messages_request(body, opt.default_sampling);
      const Prepared p = prepare_chat(m.chat);
      auto job = std::make_shared<Job>(submit(p, m.chat));
      ChoiceOptions choice{true, false, p.reasoning_enabled, p.in_reasoning, ""};
      choice.tools = p.tools;
      choice.tool_format = tool_format;
      choice.parallel_tool_calls = m.chat.parallel_tool_calls;
      const std::string id = random_id("msg_");
      choice.tool_call_id_prefix = "toolu_" + id.substr(id.size() - 8) + "_";
      auto out = std::make_shared<MessagesAssembler>(tok, id, opt.model_name, int32_t(p.prompt.size()), choice);
      if (m.chat.stream)
        return stream_events(res, job, out, "event: ping\ndata: {\"type\":\"ping\"}\n\n",
                             [](const ApiError& e) { return anthropic_error(e); });
      if (!wait_whole(*job, [&](const GenerationEvent& e) { out->feed(e); }, [&] { return out->done(); }, res)) return;
      if (out->failed()) throw out->failure();
      res.set_content(to_text(out->message()), "application/json");
    } catch (const ApiError& e) {
      res.status = e.status;
      res.set_content(to_text(anthropic_error(e)), "application/json");
    } catch (const Error& e) {
      res.status = 400;
      res.set_content(to_text(anthropic_error(ApiError(400, e.what()))), "application/json");
    }
  }

  // What a stream's callbacks tell the loop below: go on, end the stream cleanly, or stop (the client is gone).
  enum class Flow { more, end, broken };
  using RawWrite = std::function<bool(const std::string&)>;

  // The scaffolding of every event stream: headers, the open-stream count, the job's events popped every 100 ms,
  // `keep_alive` written after a second without output (keeps proxies from timing out and finds clients that went
  // away while queued), and the request cancelled when the stream ends for any reason (no effect on finished
  // requests; frees the pages of a client that went away). open(write) -> bool writes the opening events once;
  // feed(event, write) and finish(write) (after each batch) return a Flow.
  template <class Open, class Feed, class Finish>
  void stream_sse(httplib::Response& res, std::shared_ptr<Job> job, std::string keep_alive, Open open, Feed feed,
                  Finish finish) {
    struct State {
      bool started = false, ended = false;
      Clock::time_point last_write = Clock::now();
    };
    auto st = std::make_shared<State>();
    open_streams++;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, st, job, keep_alive, open, feed, finish](size_t, httplib::DataSink& sink) -> bool {
          if (http.stopping() || st->ended) return false;  // ends the stream; the releaser cancels the request
          const RawWrite write = [&](const std::string& text) {
            st->last_write = Clock::now();
            return sink.write(text.data(), text.size());
          };
          if (!st->started) {
            st->started = true;
            if (!open(write)) return false;
          }
          auto events = job->sink->pop(std::chrono::milliseconds(100));
          if (events.empty() && Clock::now() - st->last_write > std::chrono::seconds(1) && !write(keep_alive))
            return false;
          auto settle = [&](Flow f) {
            if (f == Flow::end) {
              st->ended = true;
              sink.done();
            }
            return f;
          };
          for (auto& e : events)
            if (const Flow f = settle(feed(e, write)); f != Flow::more) return f == Flow::end;
          return settle(finish(write)) != Flow::broken;
        },
        [this, job](bool) {
          job->cancel_all();
          open_streams--;
        });
  }

  // An event stream of named events ("event: NAME" and "data: JSON", Anthropic's and the Responses API's shape):
  // the assembler's start() events, then each generation event's; a failure sends fail(error) as the "error" event
  // and ends the stream.
  template <class Assembler, class Fail>
  void stream_events(httplib::Response& res, std::shared_ptr<Job> job, std::shared_ptr<Assembler> out,
                     std::string keep_alive, Fail fail) {
    auto named = [](const RawWrite& write, const std::string& name, const json& data) {
      return write("event: " + name + "\ndata: " + to_text(data) + "\n\n");
    };
    stream_sse(
        res, job, std::move(keep_alive),
        [out, named](const RawWrite& write) {
          for (const auto& ev : out->start())
            if (!named(write, ev.name, ev.data)) return false;
          return true;
        },
        [job, out, named, fail](GenerationEvent& e, const RawWrite& write) {
          for (const auto& ev : out->feed(e))
            if (!named(write, ev.name, ev.data)) return Flow::broken;
          if (!out->failed()) return Flow::more;
          named(write, "error", fail(out->failure()));
          job->cancel_all();
          return Flow::end;
        },
        [out](const RawWrite&) { return out->done() ? Flow::end : Flow::more; });
  }

  // ---- OpenAI Responses API (responses_api.h) ----

  void handle_responses(const std::string& body, httplib::Response& res) {
    ResponsesRequest r = parse_responses_request(body, opt.default_sampling);
    const Prepared p = prepare_chat(r.chat);
    auto job = std::make_shared<Job>(submit(p, r.chat));
    ChoiceOptions choice{true, false, p.reasoning_enabled, p.in_reasoning, ""};
    choice.tools = p.tools;
    choice.tool_format = tool_format;
    choice.parallel_tool_calls = r.chat.parallel_tool_calls;
    const std::string id = random_id("resp_");
    choice.tool_call_id_prefix = "call_" + id.substr(id.size() - 8) + "_";
    auto out = std::make_shared<ResponsesAssembler>(tok, id, opt.model_name, unix_now(), int32_t(p.prompt.size()),
                                                    r.echo, choice);
    if (r.chat.stream)
      return stream_events(res, job, out, ": keep-alive\n\n", [](const ApiError& e) {
        json j = e.to_json()["error"];
        j["type"] = "error";
        return j;
      });
    if (!wait_whole(*job, [&](const GenerationEvent& e) { out->feed(e); }, [&] { return out->done(); }, res)) return;
    if (out->failed()) throw out->failure();
    res.set_content(to_text(out->response()), "application/json");
  }

  // Server-sent events exactly as OpenAI sends them: each event's chunk as it comes, keep-alive comments while
  // queued, the usage chunk when asked for, then [DONE]. A failed choice sends its error object and ends the stream.
  void stream_response(httplib::Response& res, std::shared_ptr<Job> job, std::shared_ptr<ResponseAssembler> out) {
    static const std::string done = "data: [DONE]\n\n";
    auto data = [](const RawWrite& write, const json& j) { return write("data: " + to_text(j) + "\n\n"); };
    stream_sse(
        res, job, ": keep-alive\n\n",
        [out, data](const RawWrite& write) {
          for (const auto& j : out->opening_chunks())
            if (!data(write, j)) return false;
          return true;
        },
        [job, out, data](GenerationEvent& e, const RawWrite& write) {
          const json j = out->feed(e);
          if (out->failed()) {
            data(write, j);
            job->cancel_all();
            write(done);
            return Flow::end;
          }
          return j.is_null() || data(write, j) ? Flow::more : Flow::broken;
        },
        [out, data](const RawWrite& write) {
          if (!out->done()) return Flow::more;
          if (out->info().include_usage && !data(write, out->usage_chunk())) return Flow::broken;
          return write(done) ? Flow::end : Flow::broken;
        });
  }

  // ---- cross-site requests ----

  bool origin_allowed(const std::string& origin) const {
    for (const auto& a : opt.allowed_origins)
      if (a == "*" || lower(a) == lower(origin)) return true;
    return false;
  }

  // A page in the user's browser can send simple requests (text/plain, form or no Content-Type) to any server
  // without a CORS preflight, and reach a server on loopback through a DNS name it controls (rebinding): such
  // requests are refused before anything is read or run. Allowed cross-origin requests get CORS headers.
  std::optional<ApiError> check_cross_site(const httplib::Request& req, httplib::Response& res, bool json_endpoint) {
    if (req.has_header("Host"))
      if (auto why = hosts.refusal(req.get_header_value("Host"), req.path)) return ApiError(403, *why, "", "host_not_allowed");
    if (req.has_header("Origin")) {
      const std::string origin = req.get_header_value("Origin");
      const bool same = same_origin(origin, req.get_header_value("Host"));
      if (!same && !origin_allowed(origin))
        return ApiError(403,
                        fmt::format("Requests from the origin '{}' are not allowed; start the server with "
                                    "--allowed-origins to allow it",
                                    origin),
                        "", "origin_not_allowed");
      if (!same) {
        res.set_header("Access-Control-Allow-Origin", origin);
        res.set_header("Vary", "Origin");
        if (req.method == "OPTIONS") {
          res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
          res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, x-api-key, anthropic-version");
          res.set_header("Access-Control-Max-Age", "600");
        }
      }
    }
    if (json_endpoint) {
      std::string type = lower(req.get_header_value("Content-Type"));
      type = type.substr(0, type.find(';'));
      while (!type.empty() && type.back() == ' ') type.pop_back();
      if (type != "application/json")
        return ApiError(415, "Send the request body as JSON with 'Content-Type: application/json'", "",
                        "unsupported_media_type");
    }
    return std::nullopt;
  }

  // ---- routes ----

  void routes() {
    // --max-body-bytes is enforced by check_body_framing and read_body (http_body.h), for every framing.
    http.set_payload_max_length(std::numeric_limits<size_t>::max());
    http.set_keep_alive_max_count(1000);
    http.set_read_timeout(30, 0);
    http.set_write_timeout(30, 0);
    http.set_body_timeout(std::chrono::seconds(opt.body_timeout_s));

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      begin_access_record();
      // Before httplib reads the body: what cannot be read within --max-body-bytes is refused unread.
      const bool read_by_server = req.method == "POST" && post_paths.count(req.path);
      if (auto e = check_body_framing(req, opt.max_body_bytes, read_by_server)) {
        send_error_and_close(res, *e);
        return httplib::Server::HandlerResponse::Handled;
      }
      if (auto e = check_cross_site(req, res, read_by_server)) {
        send_error_and_close(res, *e);
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.method == "OPTIONS") {  // a CORS preflight from an allowed origin (check_cross_site set the headers)
        res.status = 204;
        return httplib::Server::HandlerResponse::Handled;
      }
      const bool keyed_path = req.path.rfind("/v1/", 0) == 0 || req.path == "/tokenize" || req.path == "/detokenize";
      if (opt.api_key.empty() || !keyed_path) return httplib::Server::HandlerResponse::Unhandled;
      // Bearer, or Anthropic's x-api-key header (its clients send that).
      if (authorized(req.get_header_value("Authorization"), opt.api_key) ||
          (req.has_header("x-api-key") && authorized("Bearer " + req.get_header_value("x-api-key"), opt.api_key)))
        return httplib::Server::HandlerResponse::Unhandled;
      const bool missing = !req.has_header("Authorization") && !req.has_header("x-api-key");
      // The body is left unread: the connection closes, or the body would be read as the next request.
      const ApiError denied(401,
                            missing ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'"
                                      " (or Anthropic's 'x-api-key: <key>')."
                                    : "Incorrect API key provided.",
                            "", "invalid_api_key");
      // Anthropic's clients read {"type":"error","error":{"type":"authentication_error",...}} on its API.
      if (req.path.rfind("/v1/messages", 0) == 0) send_error_and_close(res, denied, anthropic_error(denied));
      else send_error_and_close(res, denied);
      res.set_header("WWW-Authenticate", "Bearer");
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
      // The request line and headers were too slow or too large (ConnectionStream): the connection closes.
      const auto f = HttpServer::current_header_failure();
      if (f == HeaderFailure::body_timeout && !res.has_header("Connection")) {  // a body httplib read itself
        res.set_header("Connection", "close");
        send_error(res, body_timeout());
        return httplib::Server::HandlerResponse::Handled;
      }
      if (f == HeaderFailure::timeout || f == HeaderFailure::too_large) {
        res.set_header("Connection", "close");
        send_error(res, f == HeaderFailure::timeout
                            ? ApiError(408, fmt::format("The request headers did not arrive within {} s",
                                                        kHeaderTimeout.count()), "", "request_timeout")
                            : ApiError(431, fmt::format("The request headers are larger than {} bytes or {} lines",
                                                        kMaxHeaderBytes, kMaxHeaders), "", "headers_too_large"));
        return httplib::Server::HandlerResponse::Handled;
      }
      // A body of ours already, or an answer that closes the connection (send_error_and_close).
      if (!res.body.empty() || res.has_header("Connection")) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg = res.status == 400 ? "Bad request" : res.status == 405 ? "Method not allowed" : "HTTP error " + std::to_string(res.status);
      std::string code;
      if (res.status == 413) {
        msg = "The request body is larger than this server accepts";
        code = "request_too_large";
      } else if (res.status == 404) {
        msg = "Unknown path";
        code = "not_found";
      }
      send_error(res, ApiError(res.status, msg, "", code));
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      try {
        std::rethrow_exception(ep);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, ApiError(400, e.what()));
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, std::string("Internal error: ") + e.what(), "", "", "server_error"));
      } catch (...) {
        send_error(res, ApiError(500, "Internal error", "", "", "server_error"));
      }
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      std::string path = req.path;
      if (path.rfind("/v1/", 0) != 0 && path != "/health" && path != "/metrics") path = "other";
      {
        std::lock_guard lock(metrics_mu);
        ++http_requests[{req.method + " " + path, res.status}];
      }
      if (opt.access_log) {
        const std::string line = access_line(req, res.status, current_access_record(), opt.log_prompts);
        std::fwrite(line.data(), 1, line.size(), stderr);  // one write: lines of concurrent requests do not mix
      }
      current_access_record() = AccessRecord{};
    });

    auto guarded = [](auto fn) {
      return [fn](const httplib::Request& req, httplib::Response& res) {
        try {
          fn(req, res);
        } catch (const ApiError& e) {
          send_error(res, e);
        } catch (const Error& e) {
          send_error(res, ApiError(400, e.what()));
        }
      };
    };

    // POST routes read their body through read_body (bounded whatever the framing); fn(body, res).
    auto post = [this](const char* path, auto fn) {
      post_paths.insert(path);
      http.Post(path, [this, fn](const httplib::Request&, httplib::Response& res, const httplib::ContentReader& reader) {
        std::string body;
        try {
          body = read_body(reader, res, opt.max_body_bytes);
        } catch (const ApiError& e) {
          send_error_and_close(res, e);
          return;
        }
        try {
          fn(body, res);
        } catch (const ApiError& e) {
          send_error(res, e);
        } catch (const Error& e) {
          send_error(res, ApiError(400, e.what()));
        }
      });
    };

    post("/v1/chat/completions", [this](const std::string& body, auto& res) { handle_generation(body, res, true); });
    post("/v1/completions", [this](const std::string& body, auto& res) { handle_generation(body, res, false); });
    post("/v1/messages", [this](const std::string& body, auto& res) { handle_messages(body, res); });
    post("/v1/responses", [this](const std::string& body, auto& res) { handle_responses(body, res); });
    post("/tokenize", [this](const std::string& body, auto& res) {
      const TokenizeRequest r = parse_tokenize_request(body);
      check_model(r.model);
      const auto ids = tok.encode(r.prompt, r.add_special_tokens);
      res.set_content(to_text({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", sched.max_context()}}),
                      "application/json");
    });
    post("/detokenize", [this](const std::string& body, auto& res) {
      const DetokenizeRequest r = parse_detokenize_request(body);
      check_model(r.model);
      const int64_t vocab = sched.model_config().vocab_size;
      for (int32_t t : r.tokens)
        if (t >= vocab || t >= tok.vocab_size())
          throw ApiError(400, fmt::format("Token id {} is outside the vocabulary (0..{})", t, vocab - 1), "tokens");
      res.set_content(to_text({{"prompt", tok.decode(r.tokens, false)}}), "application/json");
    });
    http.Get("/v1/models", guarded([this](const auto&, auto& res) {
      json m = {{"id", opt.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "moe.cpp"},
                {"max_model_len", sched.max_context()}};
      res.set_content(to_text({{"object", "list"}, {"data", json::array({m})}}), "application/json");
    }));
    http.Get(R"(/v1/models/(.+))", guarded([this](const auto& req, auto& res) {
      if (req.matches[1] != opt.model_name)
        throw ApiError(404, fmt::format("The model '{}' does not exist", std::string(req.matches[1])), "model",
                       "model_not_found");
      json m = {{"id", opt.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "moe.cpp"}};
      res.set_content(to_text(m), "application/json");
    }));
    post("/v1/feedback", [this](const std::string& body, auto& res) {
      const FeedbackRequest f = parse_feedback_request(body);
      if (!feedback) throw ApiError(503, "Feedback is not stored: start the server with --feedback-db", "", "feedback_disabled");
      const int64_t row = feedback->add(f.conversation, f.answer, f.rating, f.model.empty() ? opt.model_name : f.model, f.comment);
      res.set_content(to_text({{"id", row}, {"object", "feedback"}, {"stored", true}}), "application/json");
    });
    http.Get("/health", [this](const auto&, auto& res) {
      res.set_content(to_text({{"status", "ok"}, {"model", opt.model_name}}), "application/json");
    });
    http.Get("/metrics", [this](const auto&, auto& res) { res.set_content(metrics_text(), "text/plain; version=0.0.4"); });
    auto asset = [](std::string_view body, const char* type) {
      return [body, type](const httplib::Request&, httplib::Response& res) {
        res.set_content(body.data(), body.size(), type);
        res.set_header("Cache-Control", "no-cache");
      };
    };
    http.Get("/", asset(web::index_html(), "text/html; charset=utf-8"));
    http.Get("/app.js", asset(web::app_js(), "text/javascript; charset=utf-8"));
    http.Get("/style.css", asset(web::style_css(), "text/css; charset=utf-8"));
  }

  std::string metrics_text() const {
    std::string o;
    auto gauge = [&](const char* name, const char* help, double v) {
      o += fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, v);
    };
    auto counter = [&](const char* name, const char* help, uint64_t v) {
      o += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, v);
    };
    auto histogram = [&](const char* name, const char* help, const Histogram& h) {
      const auto s = h.snapshot();
      o += fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
      for (size_t i = 0; i < s.bounds.size(); ++i) o += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, s.bounds[i], s.cumulative[i]);
      o += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, s.cumulative.back(), name, s.sum, name, s.count);
    };
    {
      std::lock_guard lock(metrics_mu);
      o += "# HELP moe_http_requests_total HTTP requests by endpoint and status\n# TYPE moe_http_requests_total counter\n";
      for (const auto& [k, v] : http_requests)
        o += fmt::format("moe_http_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, v);
    }
    auto& m = sched.metrics();
    counter("moe_requests_submitted_total", "Generation requests accepted by the scheduler", m.requests_submitted);
    counter("moe_requests_finished_total", "Generation requests that finished (stop or length)", m.requests_finished);
    counter("moe_requests_cancelled_total", "Generation requests cancelled (client gone or stopped)", m.requests_cancelled);
    counter("moe_requests_failed_total", "Generation requests that failed", m.requests_failed);
    counter("moe_prompt_tokens_total", "Prompt tokens of admitted requests (from the prefix cache or prefilled)",
            m.prompt_tokens);
    counter("moe_prefix_cache_lookups_total", "Admissions that looked up their prompt in the prefix cache",
            m.prefix_lookups);
    counter("moe_prefix_cache_hits_total", "Admissions that reused at least one cached page", m.prefix_hits);
    counter("moe_prefix_cache_hit_tokens_total", "Prompt tokens reused from the prefix cache (not prefilled)",
            m.cached_prompt_tokens);
    counter("moe_prefix_cache_evicted_pages_total", "Cached pages evicted to make room for admissions",
            m.prefix_evicted_pages);
    gauge("moe_prefix_cache_hit_rate", "Share of prompt tokens reused from the prefix cache, since start",
          m.prompt_tokens ? double(m.cached_prompt_tokens) / double(m.prompt_tokens) : 0.0);
    counter("moe_generation_tokens_total", "Tokens generated", m.generated_tokens);
    counter("moe_engine_steps_total", "Batched forward steps", m.steps);
    counter("moe_spec_verifications_total", "Sequence steps that verified MTP draft tokens (speculative decoding)",
            m.spec_verifications);
    counter("moe_spec_draft_tokens_total", "MTP draft tokens checked by the main model", m.spec_drafted);
    counter("moe_spec_accepted_tokens_total", "MTP draft tokens the main model kept", m.spec_accepted);
    gauge("moe_spec_acceptance_rate", "Share of checked draft tokens kept, since start",
          m.spec_drafted ? double(m.spec_accepted) / double(m.spec_drafted) : 0.0);
    gauge("moe_spec_tokens_per_step", "Tokens a verifying sequence gains per step (kept drafts + 1), since start",
          m.spec_verifications ? double(m.spec_accepted + m.spec_verifications) / double(m.spec_verifications) : 0.0);
    histogram("moe_time_to_first_token_seconds", "Time from submission to the first generated token", m.ttft);
    histogram("moe_inter_token_latency_seconds", "Time between successive tokens of a request", m.inter_token);
    const auto s = sched.stats();
    gauge("moe_queue_depth", "Requests waiting for admission", double(s.waiting));
    gauge("moe_running_batch_size", "Sequences in the running batch", double(s.running));
    gauge("moe_cache_pages_total", "Latent cache pages", double(s.pages_total));
    gauge("moe_cache_pages_used", "Latent cache pages held by requests", double(s.pages_used));
    gauge("moe_cache_pages_free", "Latent cache pages free", double(s.pages_free));
    gauge("moe_cache_pages_cached", "Latent cache pages indexed by the prefix cache", double(s.pages_cached));
    gauge("moe_cache_pages_evictable", "Latent cache pages held only by the prefix cache (reclaimed on demand)",
          double(s.pages_evictable));
    gauge("moe_cache_page_tokens", "Tokens per cache page", double(s.page_size));
    gauge("moe_open_streams", "Streaming responses in progress", double(open_streams.load()));
    expert_metrics(o, gauge, counter);
    return o;
  }

  // Per-expert routed tokens (when the model counts them) and expert parallelism: ranks, all-to-all bytes, EPLB.
  template <class Gauge, class Counter>
  void expert_metrics(std::string& o, const Gauge& gauge, const Counter& counter) const {
    const DeepseekV3& model = sched.model();
    if (const ExpertLoadCounter* load = model.expert_load()) {
      o += "# HELP moe_expert_tokens_total Tokens routed to each routed expert, by layer (the MTP layer last)\n"
           "# TYPE moe_expert_tokens_total counter\n";
      const auto totals = load->totals();
      for (size_t l = 0; l < totals.size(); ++l)
        if (load->is_moe(l))
          for (size_t e = 0; e < totals[l].size(); ++e)
            o += fmt::format("moe_expert_tokens_total{{layer=\"{}\",expert=\"{}\"}} {}\n", l, e, totals[l][e]);
    }
    if (const ExpertParallel* ep = model.expert_parallel()) {
      gauge("moe_ep_ranks", "Ranks the routed experts are spread over (--ep)", double(ep->ranks()));
      gauge("moe_ep_slots_per_rank", "Expert slots per rank (experts plus redundant copies, over the ranks)",
            double(ep->placement().slots_per_rank));
      counter("moe_ep_all_to_all_bytes_total", "Hidden-state bytes rank 0 sent in dispatch and combine",
              ep->bytes_sent());
      auto& m = sched.metrics();
      counter("moe_eplb_rebalances_total", "Expert placements recomputed from the observed load", m.eplb_rebalances);
      gauge("moe_eplb_imbalance_before", "Max / mean tokens per rank over the last EPLB window, before rebalancing",
            m.eplb_imbalance_before.load());
      gauge("moe_eplb_imbalance_after", "Max / mean tokens per rank over the last EPLB window, after rebalancing",
            m.eplb_imbalance_after.load());
    }
  }
};

Server::Server(Scheduler& scheduler, const Tokenizer& tokenizer, FeedbackStore* feedback, ServerOptions options)
    : impl_(std::make_unique<Impl>(scheduler, tokenizer, feedback, std::move(options))) {
  impl_->routes();
}

Server::~Server() = default;

int Server::bind() { return listen_on(impl_->http, impl_->opt.host, impl_->opt.port); }

int Server::adopt(int listen_fd) {
  impl_->http.adopt_listener(listen_fd);
  return listen_fd;
}

void Server::serve() { impl_->http.listen_after_bind(); }
void Server::stop() { impl_->http.shutdown(); }
std::string Server::metrics_text() const { return impl_->metrics_text(); }

}  // namespace moe::server
