// `moe generate`: greedy (or sampled) continuation of token ids, printed comma-separated on one line.
#include <fmt/format.h>

#include <cstdio>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "engine/generator.h"

namespace moe::cli {

namespace {

struct GenerateArgs {
  std::string model, device = "cpu", tokens;
  int32_t max_new_tokens = 16;
  SamplingParams sampling;
  uint64_t seed = 0;
  bool has_seed = false;
};

void run_generate(const GenerateArgs& a) {
  apply_thread_count();
  const std::vector<int32_t> prompt = parse_token_list(a.tokens);
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0");
  auto backend = make_backend(a.device);
  DeepseekV3 model(a.model, *backend);
  Generator gen(model, int64_t(prompt.size()) + a.max_new_tokens + 1);
  GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = a.sampling;
  if (a.has_seed) opts.sampling.seed = a.seed;
  const std::vector<int32_t> out = a.max_new_tokens ? gen.generate(prompt, opts) : std::vector<int32_t>{};
  std::string line;
  for (size_t i = 0; i < out.size(); ++i) {
    if (i) line += ',';
    line += std::to_string(out[i]);
  }
  std::printf("%s\n", line.c_str());
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Continue a prompt (greedy unless sampling flags are given)");
  auto a = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", a->model, "Checkpoint directory")->required();
  cmd->add_option("--tokens", a->tokens, "Prompt as comma-separated token ids")->required();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens to generate");
  cmd->add_option("--device", a->device, "cpu or cuda");
  cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  cmd->add_option("--temperature", a->sampling.temperature, "Sampling temperature (0: greedy)");
  cmd->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass");
  cmd->add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens (0: all)");
  cmd->add_option("--min-p", a->sampling.min_p, "Drop tokens below min_p times the top probability");
  cmd->add_option("--repetition-penalty", a->sampling.repetition_penalty, "Penalty on tokens already seen");
  cmd->add_option("--seed", a->seed, "Random seed for reproducible sampling")->each([a](const std::string&) { a->has_seed = true; });
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace moe::cli
