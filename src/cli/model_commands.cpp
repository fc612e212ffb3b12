// Model commands: info, logits, generate, create-random, bench (bench in bench_command.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/expert_parallel_args.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/dp_attention.h"
#include "engine/generator.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "model/family.h"
#include "model/random_checkpoint.h"

namespace moe::cli {

namespace {

void run_info(const std::string& model_dir) {
  const ModelConfig c = ModelConfig::load(model_dir);
  const Checkpoint ckpt(model_dir);
  const ModelStats s = compute_stats(ckpt, c);
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) moe_layers += c.is_moe_layer(i);
  fmt::print("architecture: {}{}\n", c.architecture,
             c.sparse_attention() ? " (DeepSeek-V3.2, DeepSeek Sparse Attention)" : "");
  fmt::print("family: {}; attention {}; weights {}\n", family_name(model_family(c)), attention_summary(c),
             weight_format_summary(c));
  fmt::print("layers: {} ({} dense, {} MoE), hidden {}, heads {}, vocab {}\n", c.num_hidden_layers,
             c.num_hidden_layers - moe_layers, moe_layers, c.hidden_size, c.num_attention_heads, c.vocab_size);
  fmt::print("attention: MLA, q_lora_rank {}, kv_lora_rank {}, qk_nope {}, qk_rope {}, v {}\n", c.q_lora_rank,
             c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  if (c.sparse_attention())
    fmt::print("sparse attention: lightning indexer with {} heads of {}, each query attends to its top {} cached "
               "positions (all of them up to {})\n",
               c.indexer->n_heads, c.indexer->head_dim, c.indexer->topk, c.indexer->topk);
  fmt::print("experts: {} routed (top {}, {} groups choose {}), {} shared, moe_intermediate {}, scoring {}\n",
             c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.n_shared_experts,
             c.moe_intermediate_size, c.scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax");
  if (c.yarn)
    fmt::print("rope: YaRN factor {} over {} positions, theta {}\n", c.yarn->factor,
               c.yarn->original_max_position_embeddings, c.rope_theta);
  else
    fmt::print("rope: plain, theta {}\n", c.rope_theta);
  fmt::print("parameters: {} total, {} active per token", human_count(s.total_params), human_count(s.active_params));
  if (s.mtp_params) fmt::print(", plus {} in the MTP module", human_count(s.mtp_params));
  fmt::print("\n");
  fmt::print("weight bytes: {} (read per decoded token at batch 1: {})\n", human_bytes(s.weight_bytes),
             human_bytes(s.active_weight_bytes));
  const int64_t per_token_f32 = c.num_hidden_layers * c.cache_width() * 4;
  fmt::print("latent cache per token: {} values per layer, {} B in BF16, {} B in F32 (CPU)\n", c.cache_width(),
             per_token_f32 / 2, per_token_f32);
  if (c.sparse_attention())
    fmt::print("index key cache per token: {} values per layer, {} B in F32 (CPU)\n", c.indexer->head_dim,
               c.num_hidden_layers * c.indexer->head_dim * 4);
}

// --tokens: one sequence "3,17,42", or several separated by ';' ("3,17;42,5,9"), run as one batch.
std::vector<std::vector<int32_t>> parse_sequences(const std::string& text) {
  std::vector<std::vector<int32_t>> out;
  size_t pos = 0;
  for (;;) {
    const size_t semi = text.find(';', pos);
    const std::string item = text.substr(pos, semi == std::string::npos ? std::string::npos : semi - pos);
    if (item.empty()) fail("--tokens: sequence {} is empty (sequences are separated by ';')", out.size() + 1);
    out.push_back(parse_token_list(item));
    if (semi == std::string::npos) return out;
    pos = semi + 1;
  }
}

void run_logits(const std::string& model_dir, const BackendArgs& device, const std::string& tokens_text,
                const std::string& out_path, bool mtp, const EpArgs& ep_args, const RandomWeightsArgs& random,
                int32_t repeat) {
  const std::vector<std::vector<int32_t>> seqs = parse_sequences(tokens_text);
  if (mtp && (seqs.size() > 1 || ep_args.dp_attention))
    fail("--mtp writes the MTP logits of one sequence without --dp-attention");
  const EpRuntime ep = open_ep(ep_args, model_config(model_dir, random), device.device);
  auto backend = open_backend(device);
  ProgressBar bar = ProgressBar::on_stderr("loading " + model_dir);
  DeepseekV3::Options options{.load_mtp = mtp, .progress = ep.root() ? bar.fn() : ProgressFn{}};
  ep.apply(options);
  const auto model_ptr = open_model(model_dir, random, *backend, options);
  DeepseekV3& model = *model_ptr;
  if (mtp && !model.has_mtp()) fail("{}: the checkpoint has no MTP module (num_nextn_predict_layers)", model_dir);
  const int64_t V = model.config().vocab_size, page = 64;
  int64_t T = 0;
  for (const auto& s : seqs) T += int64_t(s.size());
  // Sequence s in its own pages; with --dp-attention on the least loaded rank (in tokens), in that rank's part.
  const int32_t ranks = ep_args.dp_attention ? ep_args.ep : 1;
  std::vector<int64_t> tokens_on(size_t(ranks), 0), pages_on(size_t(ranks), 0);
  std::vector<int32_t> owner;
  for (const auto& s : seqs) {
    owner.push_back(least_loaded_rank(tokens_on));
    tokens_on[size_t(owner.back())] += int64_t(s.size());
    pages_on[size_t(owner.back())] += pages_for(int64_t(s.size()), page);
  }
  const DpLayout layout{ranks, *std::max_element(pages_on.begin(), pages_on.end())};
  std::vector<SequenceChunk> chunks;
  std::vector<int64_t> next_page(size_t(ranks), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    SequenceChunk c{seqs[i], 0, {}, true};
    const int64_t r = owner[i];
    for (int64_t p = 0; p < pages_for(int64_t(seqs[i].size()), page); ++p)
      c.pages.push_back(int32_t(r * layout.pages_per_rank + next_page[size_t(r)]++));
    chunks.push_back(std::move(c));
  }
  // A rank without sequences still needs a cache of the layout's size (dp_forward checks it); it stays unwritten.
  LatentCache cache(model.config(), *backend, std::max<int64_t>(layout.pages_per_rank, 1), page, model.cache_layers());
  StepExecutor executor(model);
  auto step = [&] { return ep_args.dp_attention ? dp_forward(executor, layout, chunks, cache) : model.forward(chunks, cache); };
  ForwardOutput main = step();
  if (repeat > 0) {
    // --repeat: the same step again (same positions rewritten), timed on this rank; rank 0 prints the median.
    std::vector<double> ms;
    for (int32_t i = 0; i < repeat; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      step();
      backend->synchronize();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    if (ep.root())
      std::fprintf(stderr, "step time: median %.3f ms, min %.3f ms over %d steps of %lld tokens\n", ms[ms.size() / 2],
                   ms[0], repeat, (long long)T);
  }
  if (!ep.root()) return;  // rank 0 has every row (replicated: every rank has them)
  Tensor logits = Tensor::host(DType::F32, {T, V});
  backend->copy_to_host(main.logits, logits.data());
  std::vector<NamedTensor> out{{"logits", logits.view()}};
  Tensor mtp_logits;
  if (mtp && T > 1) {
    const auto& tokens = seqs[0];
    SequenceChunk next{std::vector<int32_t>(tokens.begin() + 1, tokens.end()), 0, chunks[0].pages, true};
    ForwardOutput draft = model.forward_mtp({next}, main.hidden.view().slice_rows(0, T - 1), cache);
    mtp_logits = Tensor::host(DType::F32, {T - 1, V});
    backend->copy_to_host(draft.logits, mtp_logits.data());
    out.push_back({"mtp_logits", mtp_logits.view()});
  }
  write_safetensors(out_path, out);
}

}  // namespace

void register_model_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("info", "Architecture, parameter counts, weight and cache bytes of a checkpoint");
    auto model = std::make_shared<std::string>();
    cmd->add_option("--model", *model, "Checkpoint directory (config.json + safetensors)")->required();
    cmd->callback([model] { run_info(*model); });
  }
  {
    auto* cmd = app.add_subcommand("logits", "Write the logits of a token sequence to a safetensors file");
    auto model = std::make_shared<std::string>(), tokens = std::make_shared<std::string>(),
         out = std::make_shared<std::string>();
    auto device = std::make_shared<BackendArgs>();
    auto mtp = std::make_shared<bool>(false);
    auto ep = std::make_shared<EpArgs>();
    auto random = std::make_shared<RandomWeightsArgs>();
    cmd->add_option("--model", *model, "Checkpoint directory (a config.json with --random-weights)")->required();
    cmd->add_option("--tokens", *tokens, "Comma-separated token ids; several sequences separated by ';' run as one batch")
        ->required();
    cmd->add_option("--out", *out, "Output safetensors file (F32 logits [T, vocab], the sequences' rows in order)")
        ->required();
    cmd->add_flag("--mtp", *mtp, "Also write mtp_logits [T-1, vocab] from the MTP module");
    add_backend_options(cmd, *device);
    add_ep_options(cmd, *ep);
    add_random_weights_options(cmd, *random);
    cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
    auto repeat = std::make_shared<int32_t>(0);
    cmd->add_option("--repeat", *repeat, "Run the step this many more times and print its median time (stderr)")
        ->check(CLI::Range(0, 1 << 20));
    cmd->callback([=] {
      apply_thread_count();
      run_logits(*model, *device, *tokens, *out, *mtp, *ep, *random, *repeat);
    });
  }
  {
    auto* cmd = app.add_subcommand("create-random", "Write a checkpoint of any shape with random weights");
    auto opts = std::make_shared<RandomCheckpointOptions>();
    auto dtype = std::make_shared<std::string>("bf16");
    cmd->add_option("--config", opts->config_path, "config.json giving the shape")->required();
    cmd->add_option("--out", opts->out_dir, "Output directory")->required();
    auto family = std::make_shared<std::string>();
    cmd->add_option("--dtype", *dtype, "bf16 or fp8")->check(CLI::IsMember({"bf16", "fp8"}));
    cmd->add_option("--family", *family,
                    "Make the config a family member: v3, v31 (FP8 with ue8m0 scales), v32 (indexer weights), "
                    "kimi-k2 (INT4 routed experts; with --dtype fp8: FP8)")
        ->check(CLI::IsMember({"v3", "v31", "v32", "kimi-k2"}));
    cmd->add_option("--seed", opts->seed, "Random seed");
    cmd->add_flag("--mtp-check", opts->mtp_check,
                  "A check model for speculative decoding: the MTP module drafts the main model's greedy next token");
    cmd->callback([=] {
      opts->fp8 = *dtype == "fp8";
      opts->family = parse_random_family(*family);
      ProgressBar bar = ProgressBar::on_stderr("writing " + opts->out_dir);
      RandomCheckpointOptions o = *opts;
      o.progress = bar.fn();
      create_random_checkpoint(o);
    });
  }
  register_generate_command(app);
  register_bench_command(app);
}

}  // namespace moe::cli
