#include "cli/common.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>

#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cli {

int g_threads = 0;

void apply_thread_count() {
  if (g_threads < 0) fail("--threads must be >= 0");
  ThreadPool::set_global_threads(g_threads);
}

BackendOptions BackendArgs::options() const {
  BackendOptions o;
  o.device = Device::parse(device);
  o.cpu.threads = g_threads;  // --threads (0: all cores)
  o.cuda.graphs = cuda_graphs;
  o.cuda.prefill = parse_cuda_prefill(cuda_prefill);
  if (cuda_mla_prefill_tokens < 0) fail("--cuda-mla-prefill-tokens must be >= 0, not {}", cuda_mla_prefill_tokens);
  if (cuda_mla_splits < 0) fail("--cuda-mla-splits must be >= 0, not {}", cuda_mla_splits);
  o.cuda.mla_prefill_min_tokens = cuda_mla_prefill_tokens;
  o.cuda.mla_splits = cuda_mla_splits;
  o.cuda.mla_decode = parse_mla_decode_kernel(cuda_mla_decode);
  if (cuda_grouped_experts_tokens < 1)
    fail("--cuda-grouped-experts-tokens must be >= 1, not {}", cuda_grouped_experts_tokens);
  o.cuda.grouped_experts_min_tokens = cuda_grouped_experts_tokens;
  if (cuda_bf16_grouped_experts_tokens < 1)
    fail("--cuda-bf16-grouped-experts-tokens must be >= 1, not {}", cuda_bf16_grouped_experts_tokens);
  o.cuda.bf16_grouped_experts_min_tokens = cuda_bf16_grouped_experts_tokens;
  o.cuda.moe_decode_fusion = cuda_moe_decode_fusion;
  return o;
}

void add_backend_options(CLI::App* cmd, BackendArgs& a) {
  cmd->add_option("--device", a.device, "cpu, cuda or cuda:N")->envname("MOE_DEVICE")->capture_default_str();
  cmd->add_option("--cuda-graphs", a.cuda_graphs, "Capture repeated steps (decode) as CUDA graphs")
      ->envname("MOE_CUDA_GRAPHS")
      ->capture_default_str();
  cmd->add_option("--cuda-prefill", a.cuda_prefill,
                  "GEMM precision of many-token steps: fp8 (FP8 weights in W8A8, activations in DeepSeek-V3's 1x128 "
                  "tiles; other weights as bf16), bf16 (FP8 weights widened), split or gemv")
      ->envname("MOE_CUDA_PREFILL")
      ->capture_default_str();
  cmd->add_option("--cuda-mla-prefill-tokens", a.cuda_mla_prefill_tokens,
                  "Expanded-form MLA for prefill chunks of at least this many tokens (0: never)")
      ->envname("MOE_CUDA_MLA_PREFILL_TOKENS")
      ->capture_default_str();
  cmd->add_option("--cuda-mla-splits", a.cuda_mla_splits, "Decode attention split count (0: chosen per shape)")
      ->envname("MOE_CUDA_MLA_SPLITS")
      ->capture_default_str();
  cmd->add_option("--cuda-mla-decode", a.cuda_mla_decode,
                  "Decode attention kernel: auto (wgmma where the head count is a multiple of 64), mma or wgmma")
      ->envname("MOE_CUDA_MLA_DECODE")
      ->capture_default_str();
  cmd->add_option(
         "--cuda-grouped-experts-tokens", a.cuda_grouped_experts_tokens,
         "Routed FP8 experts (--cuda-prefill fp8) on the grouped FP8 GEMM from this many tokens a step "
         "(below: the GEMV)")
      ->envname("MOE_CUDA_GROUPED_EXPERTS_TOKENS")
      ->capture_default_str();
  cmd->add_option(
         "--cuda-bf16-grouped-experts-tokens", a.cuda_bf16_grouped_experts_tokens,
         "Routed BF16 experts (--cuda-prefill bf16 or fp8) on the grouped GEMM from this many tokens a step "
         "(below: the GEMV)")
      ->envname("MOE_CUDA_BF16_GROUPED_EXPERTS_TOKENS")
      ->capture_default_str();
  cmd->add_option("--cuda-moe-decode-fusion", a.cuda_moe_decode_fusion,
                  "Decode batches below --cuda-grouped-experts-tokens: shared experts in the routed "
                  "launches, no plan launch")
      ->envname("MOE_CUDA_MOE_DECODE_FUSION")
      ->capture_default_str();
}

std::unique_ptr<Backend> open_backend(const BackendArgs& args) { return make_backend(args.options()); }

std::vector<int32_t> parse_token_list(const std::string& text) {
  std::vector<int32_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno == ERANGE || v < 0 || v > INT32_MAX)
      fail("--tokens: '{}' is not a token id (expected comma-separated non-negative integers)", item);
    out.push_back(int32_t(v));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (out.empty()) fail("--tokens: no token ids given");
  return out;
}

void add_generation_config_option(CLI::App* cmd, std::string& mode) {
  cmd->add_option("--generation-config", mode,
                  "auto: sampling parameters not given default to the model's generation_config.json (when it has "
                  "one); none: greedy, no penalties (auto)")
      ->check(CLI::IsMember({"auto", "none"}));
}

SamplingParams generation_defaults(const std::string& mode, const std::string& model_dir) {
  if (mode == "none") return {};
  return apply_generation_defaults({}, load_generation_config(model_dir));
}

void add_sampling_options(CLI::App* cmd, SamplingArgs& s) {
  s.temperature = cmd->add_option("--temperature", s.flags.temperature, "Sampling temperature (0: greedy)");
  s.top_p = cmd->add_option("--top-p", s.flags.top_p, "Nucleus sampling mass");
  s.top_k = cmd->add_option("--top-k", s.flags.top_k, "Keep the k most likely tokens (0: all)");
  s.min_p = cmd->add_option("--min-p", s.flags.min_p, "Drop tokens below min_p times the top probability");
  s.rep = cmd->add_option("--repetition-penalty", s.flags.repetition_penalty, "Penalty on tokens already seen");
  add_generation_config_option(cmd, s.generation_config);
}

SamplingParams SamplingArgs::resolve(const std::string& model_dir) const {
  SamplingParams p = generation_defaults(generation_config, model_dir);
  if (given(temperature)) p.temperature = flags.temperature;
  if (given(top_p)) p.top_p = flags.top_p;
  if (given(top_k)) p.top_k = flags.top_k;
  if (given(min_p)) p.min_p = flags.min_p;
  if (given(rep)) p.repetition_penalty = flags.repetition_penalty;
  return p;
}

std::string join_token_list(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::string human_count(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f} B", double(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f} M", double(n) / 1e6);
  if (n >= 1000) return fmt::format("{:.2f} K", double(n) / 1e3);
  return std::to_string(n);
}

std::string human_bytes(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f} GB", double(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f} MB", double(n) / 1e6);
  if (n >= 1000) return fmt::format("{:.2f} KB", double(n) / 1e3);
  return fmt::format("{} B", n);
}

}  // namespace moe::cli
