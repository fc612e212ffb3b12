// `moe chat`: an interactive terminal chat with the model's chat template. Keeps the history (the latent
// cache is reused for the shared prefix), streams the reply, shows tokens/s. Lines are edited with libedit on a
// terminal (cli/line_reader.h); /reset, /save FILE, /load FILE (cli/conversation.h) and /exit; Ctrl-C during a
// reply stops it and keeps the conversation, Ctrl-C at the prompt or Ctrl-D ends.
#include <fmt/format.h>
#include <signal.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/default_model.h"
#include "cli/common.h"
#include "cli/conversation.h"
#include "cli/line_reader.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/generator.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

// Ctrl-C during a reply. A signal handler cannot be handed state, so the flag it sets is the one thing at
// namespace scope; it means something only while a ReplyInterrupt is alive (the handler is installed).
volatile std::sig_atomic_t chat_interrupted = 0;
extern "C" void on_chat_sigint(int) { chat_interrupted = 1; }

// SIGINT handled (sets the flag) for this object's life, the previous disposition restored after: at the
// prompt Ctrl-C keeps its default and ends the program.
class ReplyInterrupt {
 public:
  ReplyInterrupt() {
    chat_interrupted = 0;
    struct sigaction sa {};
    sa.sa_handler = on_chat_sigint;
    sa.sa_flags = SA_RESTART;  // writes of the reply in progress complete; the token callback sees the flag
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_);
  }
  ~ReplyInterrupt() { sigaction(SIGINT, &old_, nullptr); }
  ReplyInterrupt(const ReplyInterrupt&) = delete;
  ReplyInterrupt& operator=(const ReplyInterrupt&) = delete;
  bool fired() const { return chat_interrupted != 0; }

 private:
  struct sigaction old_ {};
};

// "/save FILE" -> "FILE" when `line` is the command `cmd`, else nullopt.
std::optional<std::string> command_arg(const std::string& line, const std::string& cmd) {
  if (line != cmd && line.rfind(cmd + " ", 0) != 0) return std::nullopt;
  size_t i = cmd.size();
  while (i < line.size() && line[i] == ' ') ++i;
  size_t j = line.size();
  while (j > i && std::isspace((unsigned char)line[j - 1])) --j;
  return line.substr(i, j - i);
}

struct ChatArgs {
  std::string model, tokenizer, system;
  BackendArgs backend;
  int32_t max_new_tokens = 512;
  int64_t context = 4096;
  SamplingArgs sampling;
};

void run_chat(const ChatArgs& a) {
  apply_thread_count();
  const SamplingParams sampling = a.sampling.resolve(a.model);  // before loading: a bad file fails at once
  const Tokenizer tok = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
  const ChatTemplate& tmpl = tok.chat_template();
  auto backend = open_backend(a.backend);
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3 model(a.model, *backend, {.progress = bar.fn()});
  Generator gen(model, a.context);
  GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = sampling;
  if (auto eos = tok.eos_id()) opts.stop_tokens.push_back(*eos);

  nlohmann::json history = nlohmann::json::array();
  if (!a.system.empty()) history.push_back({{"role", "system"}, {"content", a.system}});
  const nlohmann::json initial = history;  // what /reset returns to
  std::fprintf(stderr,
               "moe chat: %s on %s. /reset clears the conversation, /save FILE and /load FILE keep it as JSON, "
               "/exit or Ctrl-D quits; Ctrl-C stops a reply.\n",
               a.model.c_str(), backend->name().c_str());
  LineReader input;
  for (;;) {
    const std::optional<std::string> read = input.read("> ");
    if (!read || *read == "/exit") break;
    const std::string& line = *read;
    if (line.empty()) continue;
    if (auto path = command_arg(line, "/save")) {
      try {
        if (path->empty()) fail("/save needs a file name");
        save_conversation(*path, history);
        std::fprintf(stderr, "(saved %zu messages to %s)\n", history.size(), path->c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "(not saved: %s)\n", e.what());
      }
      continue;
    }
    if (auto path = command_arg(line, "/load")) {
      try {
        if (path->empty()) fail("/load needs a file name");
        history = load_conversation(*path);
        gen.reset();
        std::fprintf(stderr, "(loaded %zu messages from %s)\n", history.size(), path->c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "(not loaded, the conversation is unchanged: %s)\n", e.what());
      }
      continue;
    }
    if (line == "/reset") {
      history = initial;
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
    const ReplyInterrupt interrupt;  // Ctrl-C from here to the end of this turn stops the reply
    const std::vector<int32_t> out = gen.generate(prompt, opts, [&](int32_t id) {
      const std::string piece = decoder.push(id);
      reply += piece;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return !interrupt.fired();
    });
    const std::string rest = decoder.flush();
    reply += rest;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s\n", rest.c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu tokens, %.1f tokens/s%s]\n", out.size(), double(out.size()) / dt,
                 interrupt.fired() ? ", stopped" : "");
    history.push_back({{"role", "assistant"}, {"content", reply}});
  }
}

}  // namespace

void register_text_commands(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Interactive chat in the terminal using the model's chat template");
  auto a = std::make_shared<ChatArgs>();
  cmd->add_option("--model", a->model, "Checkpoint directory (default: models/moe-tiny)");
  cmd->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json and tokenizer_config.json (default: the model directory)");
  add_backend_options(cmd, a->backend);
  cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  cmd->add_option("--system", a->system, "System prompt");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Longest reply in tokens");
  cmd->add_option("--context", a->context, "Context length in tokens (latent cache size)");
  add_sampling_options(cmd, a->sampling);
  cmd->callback([a] {
    a->model = resolve_model(a->model);
    run_chat(*a);
  });
}

}  // namespace moe::cli
