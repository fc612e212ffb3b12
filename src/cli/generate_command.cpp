// `moe generate`: continue a prompt given as token ids (prints the new ids, comma-separated, on one line) or
// as text (prints the decoded continuation as it streams). Greedy unless sampling flags are given or the model's
// generation_config.json recommends sampling (--generation-config none ignores it).
#include <fmt/format.h>

#include <cstdio>
#include <random>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/default_model.h"
#include "cli/common.h"
#include "cli/expert_parallel_args.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/generator.h"
#include "engine/speculative.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, tokens, prompt;
  BackendArgs backend;
  int32_t max_new_tokens = 16;
  SamplingArgs sampling;
  uint64_t seed = 0;
  bool has_seed = false;
  bool speculative = false;
  EpArgs ep;
  RandomWeightsArgs random;
};

void run_generate(const GenerateArgs& a) {
  apply_thread_count();
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0");
  const bool text = !a.prompt.empty();
  std::optional<Tokenizer> tok;
  std::vector<int32_t> prompt;
  if (text) {
    tok = Tokenizer::load(a.tokenizer.empty() ? a.model : a.tokenizer);
    prompt = tok->encode(a.prompt, /*add_special_tokens=*/true);
  } else {
    prompt = parse_token_list(a.tokens);
  }
  // --ep: every rank runs the same steps (same logits, same seeded sampling); only rank 0's stdout is kept.
  if (a.ep.dp_attention)
    fail("--dp-attention spreads sequences over the ranks and generate runs one: use it with logits or serve");
  // Read before the model loads, so that a malformed generation_config.json fails at once.
  const SamplingParams sampling = a.sampling.resolve(a.model);
  const EpRuntime ep = open_ep(a.ep, model_config(a.model, a.random), a.backend.device);
  auto backend = open_backend(a.backend);
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3::Options options{.load_mtp = a.speculative, .progress = ep.root() ? bar.fn() : ProgressFn{}};
  ep.apply(options);
  const auto model_ptr = open_model(a.model, a.random, *backend, options);
  DeepseekV3& model = *model_ptr;
  if (a.speculative) {
    // Greedy with the MTP module drafting the next-next token; same tokens as plain greedy decoding.
    if (a.sampling.temperature_given() && a.sampling.flags.temperature > 0)
      fail("--speculative decodes greedily; drop --temperature");
    if (sampling.temperature > 0)
      std::fprintf(stderr, "note: --speculative decodes greedily; the sampling defaults of %s/generation_config.json "
                   "are not used\n", a.model.c_str());
    if (!model.has_mtp()) fail("{}: --speculative needs the checkpoint's MTP module (num_nextn_predict_layers)", a.model);
    SpeculativeStats st;
    const std::vector<int32_t> out = generate_greedy_mtp(model, prompt, a.max_new_tokens, &st);
    if (text) {
      std::printf("%s\n", tok->decode(out, /*skip_special_tokens=*/true).c_str());
    } else {
      std::printf("%s\n", join_token_list(out).c_str());
    }
    std::fprintf(stderr, "speculative: %lld main-model passes, %lld of %lld drafts accepted\n", (long long)st.main_passes,
                 (long long)st.accepted, (long long)st.drafted);
    return;
  }
  Generator gen(model, int64_t(prompt.size()) + a.max_new_tokens + 1);
  GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = sampling;
  if (a.has_seed) opts.sampling.seed = a.seed;
  if (ep.comm && opts.sampling.temperature > 0 && !opts.sampling.seed) {
    // Every rank must draw the same tokens: rank 0's random seed for all.
    uint64_t seed = ep.root() ? (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}() : 0;
    ep.comm->broadcast(&seed, sizeof seed, 0);
    opts.sampling.seed = seed;
  }
  if (text) {
    if (auto eos = tok->eos_id()) opts.stop_tokens.push_back(*eos);
    StreamingDecoder decoder(*tok, /*skip_special_tokens=*/true);
    if (a.max_new_tokens)
      gen.generate(prompt, opts, [&](int32_t id) {
        const std::string piece = decoder.push(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
      });
    const std::string rest = decoder.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::printf("\n");
    return;
  }
  const std::vector<int32_t> out = a.max_new_tokens ? gen.generate(prompt, opts) : std::vector<int32_t>{};
  std::printf("%s\n", join_token_list(out).c_str());
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Continue a prompt (greedy unless sampling flags or the model's generation_config.json say otherwise)");
  auto a = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", a->model, "Checkpoint directory (default: models/moe-tiny)");
  auto* tokens = cmd->add_option("--tokens", a->tokens, "Prompt as comma-separated token ids; prints ids");
  auto* prompt = cmd->add_option("--prompt", a->prompt, "Prompt as text; prints the decoded continuation");
  tokens->excludes(prompt);
  cmd->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json (default: the model directory)");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens to generate");
  add_backend_options(cmd, a->backend);
  add_ep_options(cmd, a->ep);
  add_random_weights_options(cmd, a->random);
  cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  add_sampling_options(cmd, a->sampling);
  cmd->add_flag("--speculative", a->speculative, "Greedy decoding with the MTP module drafting (same output, fewer passes)");
  cmd->add_option("--seed", a->seed, "Random seed for reproducible sampling")->each([a](const std::string&) { a->has_seed = true; });
  cmd->callback([a, tokens, prompt] {
    if (tokens->count() == 0 && prompt->count() == 0) fail("generate needs --tokens or --prompt");
    a->model = resolve_model(a->model);
    run_generate(*a);
  });
}

}  // namespace moe::cli
