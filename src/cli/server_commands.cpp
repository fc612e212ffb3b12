// `moe serve` (the OpenAI-compatible server and chat page), `moe bench-serve` (a load generator for it) and
// `moe feedback export` (ratings from the chat page as JSONL).
#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/default_model.h"
#include "cli/common.h"
#include "cli/expert_parallel_args.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/ep_serving.h"
#include "engine/scheduler.h"
#include "server/feedback_store.h"
#include "server/loading_server.h"
#include "server/server.h"

namespace moe::cli {

namespace {

struct ServeArgs {
  std::string model, host = "127.0.0.1", api_key, api_key_file, feedback_db, name, reasoning = "auto", allowed_origins, allowed_hosts;
  BackendArgs backend;
  int port = 8000;
  int32_t max_batch = 64, step_tokens = 512, default_max_tokens = 2048;
  int64_t cache_tokens = 65536, page_size = 16, max_context = 0;
  size_t max_body = 4 << 20;
  int body_timeout = 60;
  bool ignore_eos = false, no_access_log = false, log_prompts = false;
  bool prefix_cache = true;
  int32_t speculative = 0;  // MTP draft tokens per sequence and step
  bool device_sampling = true;
  int fault_load_delay_ms = 0;  // tests: a model that takes this much longer to load
  EpArgs ep;
  RandomWeightsArgs random;  // --random-weights: --model is a config.json, weights made in memory (no files)
  std::string tokenizer;     // --tokenizer: the tokenizer's directory (default: --model's)
  std::string generation_config = "auto";
};

std::string trim(std::string s) {
  while (!s.empty() && std::isspace((unsigned char)s.back())) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace((unsigned char)s[i])) ++i;
  return s.substr(i);
}

// SIGTERM/SIGINT end `moe serve` within this time: in-flight requests are cancelled (non-streamed ones answered
// 503) and connections closed; past it the process exits at once.
constexpr std::chrono::seconds kShutdownGrace{5};

void run_serve(const ServeArgs& a) {
  apply_thread_count();
  // SIGINT/SIGTERM are handled by one thread (sigwait) that stops the server; blocked before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  // --ep N: MPI's threads start with the signals blocked (the sigwait thread below gets them on rank 0). Ranks
  // other than 0 serve nothing: they run rank 0's steps (engine/ep_serving.h) until it stops, and a signal ends them.
  SchedulerOptions sopt;
  sopt.cache_tokens = a.cache_tokens;
  sopt.page_size = a.page_size;
  sopt.max_batch = a.max_batch;
  sopt.max_step_tokens = a.step_tokens;
  sopt.max_context = a.max_context;
  sopt.prefix_cache = a.prefix_cache;
  sopt.device_sampling = a.device_sampling;
  if (a.random.enabled && a.tokenizer.empty())
    fail("--random-weights: --model {} is a config.json without a tokenizer; give --tokenizer DIR (a directory with "
         "tokenizer.json, e.g. models/deepseek-v3-tokenizer)", a.model);
  const EpRuntime ep = open_ep(a.ep, model_config(a.model, a.random), a.backend.device,
                               /*count_load=*/a.backend.device == "cpu");
  if (a.ep.dp_attention) {
    // Each rank its sequences, in its part of the pages (the cache rounded up to whole parts); the prefix cache
    // would share pages across sequences, hence across ranks: off.
    sopt.cache_partitions = a.ep.ep;
    const int64_t pages = pages_for(a.cache_tokens, a.page_size);
    sopt.cache_tokens = (pages + a.ep.ep - 1) / a.ep.ep * a.ep.ep * a.page_size;
    sopt.prefix_cache = false;
  }
  if (ep.ep && a.speculative > 0)
    fail("--speculative with --ep is not supported yet (the other ranks replay only the main model's steps, not the "
         "MTP module's drafting passes, whose MoE layer is expert-parallel too)");
  if (!ep.root()) {
    pthread_sigmask(SIG_UNBLOCK, &sigs, nullptr);
    auto backend = open_backend(a.backend);
    DeepseekV3::Options o;
    ep.apply(o);
    const auto model = open_model(a.model, a.random, *backend, o);
    run_ep_follower(*model, sopt);
    return;
  }

  server::ServerOptions so;
  so.default_sampling = generation_defaults(a.generation_config, a.model);
  if (so.default_sampling.temperature > 0 || so.default_sampling.repetition_penalty != 1.0f)
    std::fprintf(stderr,
                 "moe serve: requests that leave them out get %s/generation_config.json's temperature %g, top_p %g, "
                 "top_k %d, min_p %g, repetition_penalty %g (--generation-config none: greedy)\n",
                 a.model.c_str(), so.default_sampling.temperature, so.default_sampling.top_p, so.default_sampling.top_k,
                 so.default_sampling.min_p, so.default_sampling.repetition_penalty);
  so.host = a.host;
  so.port = a.port;
  so.max_body_bytes = a.max_body;
  so.body_timeout_s = a.body_timeout;
  so.access_log = !a.no_access_log;
  so.log_prompts = a.log_prompts;
  so.default_max_tokens = a.default_max_tokens;
  so.ignore_eos = a.ignore_eos;
  if (a.reasoning == "on") so.reasoning = server::ReasoningMode::on;
  else if (a.reasoning == "off") so.reasoning = server::ReasoningMode::off;
  else if (a.reasoning != "auto") fail("--reasoning must be auto, on or off");
  for (size_t i = 0; i <= a.allowed_origins.size();) {  // comma-separated
    const size_t j = std::min(a.allowed_origins.find(',', i), a.allowed_origins.size());
    if (std::string o = trim(a.allowed_origins.substr(i, j - i)); !o.empty()) {
      while (o.size() > 1 && o.back() == '/') o.pop_back();
      if (o != "*" && o.rfind("http://", 0) != 0 && o.rfind("https://", 0) != 0)
        fail("--allowed-origins: '{}' is not an origin (scheme://host[:port]) or *", o);
      so.allowed_origins.push_back(o);
    }
    i = j + 1;
  }
  for (size_t i = 0; i <= a.allowed_hosts.size();) {  // comma-separated host names
    const size_t j = std::min(a.allowed_hosts.find(',', i), a.allowed_hosts.size());
    if (std::string h = trim(a.allowed_hosts.substr(i, j - i)); !h.empty()) {
      if (h.find_first_of("/ ") != std::string::npos)
        fail("--allowed-hosts: '{}' is not a host name (give names like chat.example.com, without a scheme)", h);
      so.allowed_hosts.push_back(h);
    }
    i = j + 1;
  }
  so.api_key = trim(a.api_key);  // --api-key or MOE_API_KEY (CLI11 reads the environment); the key file wins
  if (!a.api_key_file.empty()) {
    std::ifstream f(a.api_key_file);
    if (!f) fail("cannot read --api-key-file {}", a.api_key_file);
    std::string key((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    so.api_key = trim(key);
    if (so.api_key.empty()) fail("--api-key-file {} is empty", a.api_key_file);
  }
  so.model_name = a.name.empty() ? std::filesystem::path(a.model).lexically_normal().filename().string() : a.name;
  if (a.random.enabled && a.name.empty())  // "deepseek-v3.json" -> "random-deepseek-v3"
    so.model_name = "random-" + std::filesystem::path(a.model).stem().string();
  if (so.model_name.empty()) so.model_name = std::filesystem::path(a.model).parent_path().filename().string();

  // Listen at once: while the model loads, /health answers 503 {"status":"loading","progress":p} and the API 503
  // model_loading (server/loading_server.h); the Server then takes over the listening socket.
  server::LoadingServer loading(server::HostPolicy{so.host, so.allowed_hosts, !so.api_key.empty()}, so.model_name);
  const int port = loading.bind(so.host, so.port);
  std::printf("moe serve: listening on http://%s:%d (loading %s)\n", a.host.c_str(), port, a.model.c_str());
  std::fflush(stdout);

  // SIGINT/SIGTERM: while loading, the process exits at once; once serving, the server stops gracefully.
  std::atomic<bool> served{false};
  std::atomic<server::Server*> live{nullptr};
  struct SignalThread {  // joined however run_serve ends (a checkpoint that fails to load throws)
    std::atomic<bool>& served;
    std::thread t;
    ~SignalThread() {
      served = true;
      pthread_kill(t.native_handle(), SIGTERM);  // wakes sigwait if no signal came
      t.join();
    }
  } signals{served, std::thread([&] {
              int sig = 0;
              sigwait(&sigs, &sig);
              if (served) return;  // woken by ~SignalThread: the server stopped some other way
              const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
              server::Server* srv = live.load();
              if (!srv) {
                std::printf("moe serve: stopping while loading (%s)\n", name);
                std::fflush(stdout);
                std::_Exit(0);
              }
              std::printf("moe serve: stopping (%s)\n", name);
              std::fflush(stdout);
              // The bound on a graceful shutdown: whatever has not ended within kShutdownGrace (a long step, a
              // client that does not read) is cut off, and a second signal ends the process at once.
              std::thread([sigs] {
                timespec ts{std::chrono::duration_cast<std::chrono::seconds>(kShutdownGrace).count(), 0};
                const bool again = sigtimedwait(&sigs, nullptr, &ts) > 0;
                std::fprintf(stderr, "moe serve: %s; exiting now\n",
                             again ? "a second signal" : "in-flight work did not end within the shutdown grace period");
                std::_Exit(1);
              }).detach();
              srv->stop();
            })};

  // Progress: 5 % for the backend, 80 % for the weights by bytes (most of the time), then the rest by stages.
  auto backend = open_backend(a.backend);
  loading.set_progress(0.05);
  if (a.fault_load_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(a.fault_load_delay_ms));
  ProgressBar bar = ProgressBar::on_stderr("moe serve: loading " + a.model);
  DeepseekV3::Options mopt{.progress = [&](uint64_t done, uint64_t total) {
    bar.update(done, total);
    loading.set_progress(0.05 + 0.8 * (total ? double(done) / double(total) : 1.0));
  }};
  mopt.load_mtp = a.speculative > 0;
  ep.apply(mopt);
  const auto model_ptr = open_model(a.model, a.random, *backend, mopt);
  DeepseekV3& model = *model_ptr;
  if (a.speculative > 0 && !model.has_mtp())
    fail("{}: --speculative needs the checkpoint's MTP module (num_nextn_predict_layers)", a.model);
  sopt.speculative = a.speculative;
  loading.set_progress(0.85);
  const Tokenizer tokenizer = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
  loading.set_progress(0.9);
  // --ep: the leader sends each step to the other ranks, and tells them to stop once the scheduler has stopped
  // (declared first, so destroyed after the scheduler's thread has joined).
  struct Leader {
    std::optional<EpLeader> leader;
    ~Leader() {
      if (leader) leader->stop();
    }
  } lead;
  std::optional<DpStepRunner> dp;  // --dp-attention: rank 0's part of the step (outlives the scheduler)
  if (a.ep.dp_attention) {
    dp.emplace(model, sopt);
    sopt.run_step = [&dp](const std::vector<SequenceChunk>& chunks) { return dp->step(chunks); };
  }
  if (ep.ep) sopt.on_step = [&lead](const std::vector<SequenceChunk>& chunks) { lead.leader->on_step(chunks); };
  Scheduler scheduler(model, &tokenizer, sopt);
  if (ep.ep) lead.leader.emplace(model, EplbOptions{a.ep.eplb_interval}, &scheduler.metrics());
  std::unique_ptr<server::FeedbackStore> feedback;
  if (!a.feedback_db.empty()) feedback = std::make_unique<server::FeedbackStore>(a.feedback_db);

  server::Server srv(scheduler, tokenizer, feedback.get(), so);
  srv.adopt(loading.release());
  live = &srv;
  std::printf("moe serve: ready: %s on %s, context %lld tokens, cache %lld tokens, api key %s\n",
              so.model_name.c_str(), backend->name().c_str(), (long long)scheduler.max_context(),
              (long long)scheduler.cache_capacity_tokens(), so.api_key.empty() ? "off" : "on");
  std::fflush(stdout);
  srv.serve();
  std::printf("moe serve: stopped\n");
  std::fflush(stdout);
}

// ---- bench-serve ----

struct BenchArgs {
  std::string url = "http://127.0.0.1:8000", api_key, model, prompt = "Write a short story about a robot.";
  int concurrency = 8, requests = 64, max_tokens = 64;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

void run_bench(const BenchArgs& a) {
  using nlohmann::json;
  using Clock = std::chrono::steady_clock;
  if (a.concurrency < 1 || a.requests < 1) fail("--concurrency and --requests must be >= 1");
  const std::string& key = a.api_key;  // --api-key or MOE_API_KEY
  httplib::Headers headers;
  if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
  std::string model = a.model;
  if (model.empty()) {
    httplib::Client cli(a.url);
    auto res = cli.Get("/v1/models", headers);
    if (!res || res->status != 200) fail("GET {}/v1/models failed", a.url);
    model = json::parse(res->body)["data"][0]["id"].get<std::string>();
  }
  std::mutex mu;
  std::vector<double> ttft, itl, latency;
  std::atomic<int> next{0}, failed{0};
  std::atomic<int64_t> tokens{0};
  std::string first_error;
  const auto start = Clock::now();
  auto worker = [&] {
    httplib::Client cli(a.url);
    cli.set_read_timeout(300, 0);
    for (int i; (i = next++) < a.requests;) {
      json body = {{"model", model},
                   {"messages", {{{"role", "user"}, {"content", a.prompt}}}},
                   {"max_tokens", a.max_tokens},
                   {"stream", true},
                   {"stream_options", {{"include_usage", true}}},
                   {"ignore_eos", true}};
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/chat/completions";
      req.headers = headers;
      req.headers.emplace("Content-Type", "application/json");
      req.body = body.dump();
      std::string buf;
      std::vector<double> my_itl;
      double my_ttft = -1;
      int64_t completion = -1;
      bool done = false;
      const auto t0 = Clock::now();
      auto last = t0;
      req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        buf.append(data, len);
        size_t pos;
        while ((pos = buf.find("\n\n")) != std::string::npos) {
          std::string ev = buf.substr(0, pos);
          buf.erase(0, pos + 2);
          if (ev.rfind("data: ", 0) != 0) continue;
          ev.erase(0, 6);
          if (ev == "[DONE]") {
            done = true;
            continue;
          }
          json j = json::parse(ev, nullptr, false);
          if (j.is_discarded()) return false;
          if (j.contains("usage") && j["usage"].is_object()) completion = j["usage"]["completion_tokens"].get<int64_t>();
          if (!j.contains("choices") || j["choices"].empty()) continue;
          const json& d = j["choices"][0]["delta"];
          const bool has_text = (d.contains("content") && d["content"].is_string() && !d["content"].get<std::string>().empty()) ||
                                (d.contains("reasoning_content") && d["reasoning_content"].is_string());
          if (!has_text) continue;
          const auto now = Clock::now();
          if (my_ttft < 0) my_ttft = std::chrono::duration<double>(now - t0).count();
          else my_itl.push_back(std::chrono::duration<double>(now - last).count());
          last = now;
        }
        return true;
      };
      auto res = cli.send(req);
      const double total = std::chrono::duration<double>(Clock::now() - t0).count();
      std::lock_guard lock(mu);
      if (!res || res->status != 200 || !done || completion < 0) {
        ++failed;
        if (first_error.empty())
          first_error = !res ? "connection error " + httplib::to_string(res.error())
                             : fmt::format("status {} {}", res->status, res->body.substr(0, 200));
        continue;
      }
      tokens += completion;
      latency.push_back(total);
      if (my_ttft >= 0) ttft.push_back(my_ttft);
      itl.insert(itl.end(), my_itl.begin(), my_itl.end());
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < a.concurrency; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const int ok = a.requests - failed;
  std::printf("bench-serve: %d requests (%d ok, %d failed), concurrency %d, %.2f s\n", a.requests, ok, failed.load(),
              a.concurrency, wall);
  std::printf("throughput: %.2f requests/s, %.1f output tokens/s\n", ok / wall, double(tokens) / wall);
  auto line = [](const char* name, const std::vector<double>& v) {
    std::printf("%-20s p50 %8.1f ms  p90 %8.1f ms  p99 %8.1f ms  max %8.1f ms  (n=%zu)\n", name, 1e3 * percentile(v, 0.5),
                1e3 * percentile(v, 0.9), 1e3 * percentile(v, 0.99), v.empty() ? 0.0 : 1e3 * *std::max_element(v.begin(), v.end()), v.size());
  };
  line("time to first token", ttft);
  line("inter-token latency", itl);
  line("request latency", latency);
  if (failed) {
    std::printf("first error: %s\n", first_error.c_str());
    fail("{} of {} requests failed", failed.load(), a.requests);
  }
}

}  // namespace

void register_server_commands(CLI::App& app) {
  auto* serve = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching and a chat page");
  auto s = std::make_shared<ServeArgs>();
  serve->add_option("--model", s->model, "Checkpoint directory (with tokenizer.json; default: models/moe-tiny)");
  serve->add_option("--host", s->host, "Address to bind (default 127.0.0.1: this machine only)");
  serve->add_option("--port", s->port, "Port (0: any free port; the bound port is printed)");
  serve->add_option("--api-key-file", s->api_key_file, "File holding the API key clients must send (or set MOE_API_KEY)");
  // The key itself: from MOE_API_KEY (set below, like every flag's variable). A command line is visible to every
  // user of the machine (ps), so the help points at the variable and the file.
  serve->add_option("--api-key", s->api_key,
                    "API key clients must send; prefer MOE_API_KEY or --api-key-file (a command line is visible in ps)");
  serve->add_option("--allowed-origins", s->allowed_origins,
                    "Comma-separated origins (scheme://host[:port], or *) whose web pages may call the API (CORS); "
                    "default: none besides the server's own");
  serve->add_option("--allowed-hosts", s->allowed_hosts,
                    "Comma-separated Host names the server answers to besides loopback names, IP addresses and "
                    "--host (DNS rebinding), or *; bound to another address with an API key, /v1/ answers any");
  serve->add_option("--feedback-db", s->feedback_db, "SQLite file for ratings from the chat page (POST /v1/feedback)");
  add_backend_options(serve, s->backend);
  add_ep_options(serve, s->ep, /*serve=*/true);
  add_random_weights_options(serve, s->random);
  serve->add_option("--tokenizer", s->tokenizer, "Directory with tokenizer.json (default: --model's; required with "
                    "--random-weights)");
  serve->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  serve->add_option("--max-batch", s->max_batch, "Most sequences in the running batch");
  serve->add_option("--cache-tokens", s->cache_tokens, "Latent cache capacity in tokens (all requests together)");
  serve->add_option("--page-size", s->page_size, "Tokens per cache page");
  serve->add_flag("--prefix-cache,!--no-prefix-cache", s->prefix_cache,
                  "Reuse the cached latents of prompt prefixes seen before (default on)");
  serve->add_option("--speculative", s->speculative,
                    "MTP speculative decoding: draft tokens per sequence and step, verified by the main model (0: off)")
      ->check(CLI::Range(0, 8));
  serve->add_flag("--device-sampling,!--no-device-sampling", s->device_sampling,
                  "On a GPU, sample on the device: only token ids and logprobs come back (default on)");
  serve->add_option("--step-tokens", s->step_tokens, "Token budget per step (decodes plus prefill chunks)");
  serve->add_option("--max-context", s->max_context, "Longest prompt + completion (default: the model's)");
  serve->add_option("--default-max-tokens", s->default_max_tokens, "Completion length when a request sets none");
  serve->add_option("--served-model-name", s->name, "Model id in the API (default: the model directory's name)");
  add_generation_config_option(serve, s->generation_config);
  serve->add_option("--reasoning", s->reasoning, "Split <think> into reasoning_content: auto (from the chat template), on, off");
  serve->add_option("--max-body-bytes", s->max_body, "Largest request body accepted (413 above)");
  serve->add_option("--body-timeout", s->body_timeout,
                    "Seconds a request body may take to arrive after its headers (408 past it)")
      ->check(CLI::Range(1, 3600));
  serve->add_flag("--no-access-log", s->no_access_log, "Do not log a line per request on stderr");
  serve->add_flag("--log-prompts", s->log_prompts, "Put each request's prompt text in its access-log line");
  serve->add_option("--fault-load-delay-ms", s->fault_load_delay_ms, "Tests: load the model this much later")
      ->group("");  // hidden
  serve->add_flag("--ignore-eos", s->ignore_eos, "Never stop at EOS (for benchmarks and tests with random weights)");
  serve->callback([s] {
    s->model = resolve_model(s->model);
    run_serve(*s);
  });
  // Every flag can come from the environment: --max-body-bytes from MOE_MAX_BODY_BYTES (a flag on the command
  // line wins). For containers and service managers.
  for (CLI::Option* o : serve->get_options()) {
    if (o->get_lnames().empty() || o->get_lnames()[0] == "help" || !o->get_envname().empty()) continue;
    std::string env = "MOE_" + o->get_lnames()[0];
    for (auto& c : env) c = c == '-' ? '_' : char(std::toupper((unsigned char)c));
    o->envname(env);
  }

  auto* bench = app.add_subcommand("bench-serve", "Load a running server with streaming chat requests and report latencies");
  auto b = std::make_shared<BenchArgs>();
  bench->add_option("--url", b->url, "Server base URL");
  bench->add_option("--concurrency", b->concurrency, "Clients sending at once");
  bench->add_option("--requests", b->requests, "Requests in all");
  bench->add_option("--max-tokens", b->max_tokens, "Tokens per completion (EOS ignored)");
  bench->add_option("--prompt", b->prompt, "User message");
  bench->add_option("--model", b->model, "Model id (default: the first of /v1/models)");
  bench->add_option("--api-key", b->api_key, "API key (default: MOE_API_KEY)")->envname("MOE_API_KEY");
  bench->callback([b] { run_bench(*b); });

  auto* fb = app.add_subcommand("feedback", "Ratings stored by the server");
  fb->require_subcommand(1);
  auto* ex = fb->add_subcommand("export", "Write ratings and chosen/rejected pairs as JSONL");
  auto db = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  ex->add_option("--db", *db, "The server's --feedback-db file")->required()->check(CLI::ExistingFile);
  ex->add_option("--out", *out, "Output file (default: stdout)");
  ex->callback([db, out] {
    server::FeedbackStore store(*db);
    int64_t n;
    if (out->empty()) {
      n = store.export_jsonl(std::cout);
      std::cout.flush();
    } else {
      std::ofstream f(*out);
      if (!f) fail("cannot write {}", *out);
      n = store.export_jsonl(f);
    }
    std::fprintf(stderr, "moe feedback export: %lld lines\n", (long long)n);
  });
}

}  // namespace moe::cli
