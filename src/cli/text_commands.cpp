// `moe chat`: an interactive terminal chat with the model's chat template. Keeps the history (the latent
// cache is reused for the shared prefix), streams the reply, shows tokens/s; /reset and /exit.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/generator.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct ChatArgs {
  std::string model, tokenizer, system;
  BackendArgs backend;
  int32_t max_new_tokens = 512;
  int64_t context = 4096;
  SamplingParams sampling;
};

void run_chat(const ChatArgs& a) {
  apply_thread_count();
  const Tokenizer tok = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
  const ChatTemplate& tmpl = tok.chat_template();
  auto backend = open_backend(a.backend);
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3 model(a.model, *backend, {.progress = bar.fn()});
  Generator gen(model, a.context);
  GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = a.sampling;
  if (auto eos = tok.eos_id()) opts.stop_tokens.push_back(*eos);

  nlohmann::json history = nlohmann::json::array();
  if (!a.system.empty()) history.push_back({{"role", "system"}, {"content", a.system}});
  const size_t base = history.size();
  std::fprintf(stderr, "moe chat: %s on %s. /reset clears the conversation, /exit quits.\n", a.model.c_str(),
               backend->name().c_str());
  std::string line;
  for (;;) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line.empty()) continue;
    if (line == "/reset") {
      history.erase(history.begin() + std::ptrdiff_t(base), history.end());
      gen.reset();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    history.push_back({{"role", "user"}, {"content", line}});
    const std::vector<int32_t> prompt = tok.encode(tmpl.render(history, /*add_generation_prompt=*/true));
    if (int64_t(prompt.size()) + opts.max_new_tokens > gen.max_context()) {
      std::fprintf(stderr, "(the conversation no longer fits in %lld tokens of context: /reset)\n", (long long)gen.max_context());
      history.erase(history.end() - 1);
      continue;
    }
    StreamingDecoder decoder(tok, /*skip_special_tokens=*/true);
    std::string reply;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int32_t> out = gen.generate(prompt, opts, [&](int32_t id) {
      const std::string piece = decoder.push(id);
      reply += piece;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    const std::string rest = decoder.flush();
    reply += rest;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s\n", rest.c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu tokens, %.1f tokens/s]\n", out.size(), double(out.size()) / dt);
    history.push_back({{"role", "assistant"}, {"content", reply}});
  }
}

}  // namespace

void register_text_commands(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Interactive chat in the terminal using the model's chat template");
  auto a = std::make_shared<ChatArgs>();
  cmd->add_option("--model", a->model, "Checkpoint directory")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json and tokenizer_config.json (default: the model directory)");
  add_backend_options(cmd, a->backend);
  cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  cmd->add_option("--system", a->system, "System prompt");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Longest reply in tokens");
  cmd->add_option("--context", a->context, "Context length in tokens (latent cache size)");
  add_sampling_options(cmd, a->sampling);
  cmd->callback([a] { run_chat(*a); });
}

}  // namespace moe::cli
