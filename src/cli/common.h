#pragma once
// Helpers shared by the command files.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/sampler.h"

namespace moe::cli {

extern int g_threads;      // --threads; 0 = all cores
void apply_thread_count();  // sizes the global pool before first use

std::vector<int32_t> parse_token_list(const std::string& text);  // "3,17,42"
std::string join_token_list(const std::vector<int32_t>& ids);     // the inverse
std::string human_count(int64_t n);                               // 15.96 B
std::string human_bytes(int64_t n);                               // 5.80 GB

// --device and the backends' options. Each flag has one environment variable, read by CLI11 when the flag is
// not given (flag value > environment > default); this is the only place the program reads them.
//   --device                    MOE_DEVICE                    cpu, cuda or cuda:N
//   --cuda-graphs               MOE_CUDA_GRAPHS               capture repeated steps as CUDA graphs (on)
//   --cuda-prefill              MOE_CUDA_PREFILL              bf16, split, gemv or fp8 (see CudaOptions::Prefill)
//   --cuda-mla-prefill-tokens   MOE_CUDA_MLA_PREFILL_TOKENS   expanded MLA from this many new tokens (64; 0 off)
//   --cuda-mla-splits           MOE_CUDA_MLA_SPLITS           decode attention splits (0: chosen per shape)
//   --cuda-mla-decode           MOE_CUDA_MLA_DECODE           decode attention kernel: auto, mma or wgmma
//   --cuda-grouped-experts-tokens   MOE_CUDA_GROUPED_EXPERTS_TOKENS   grouped expert GEMMs from this many tokens
//   --cuda-moe-decode-fusion    MOE_CUDA_MOE_DECODE_FUSION    decode: fewer MoE launches (CudaOptions)
struct BackendArgs {
  std::string device = "cpu";
  bool cuda_graphs = true;
  std::string cuda_prefill = "fp8";  // CudaOptions::prefill: W8A8 for FP8 weights, BF16 for the rest
  int64_t cuda_mla_prefill_tokens = 64;
  int32_t cuda_mla_splits = 0;
  std::string cuda_mla_decode = "auto";  // CudaOptions::mla_decode's default
  int64_t cuda_grouped_experts_tokens = 8;       // CudaOptions::grouped_experts_min_tokens (FP8 experts)
  int64_t cuda_bf16_grouped_experts_tokens = 9;  // CudaOptions::bf16_grouped_experts_min_tokens
  bool cuda_moe_decode_fusion = true;       // CudaOptions::moe_decode_fusion
  BackendOptions options() const;  // throws moe::Error naming a bad value
};
void add_backend_options(CLI::App* cmd, BackendArgs& args);
std::unique_ptr<Backend> open_backend(const BackendArgs& args);

// --temperature, --top-p, --top-k, --min-p, --repetition-penalty and --generation-config on a command that
// samples. Flags given win; the others come from the model's generation_config.json (`auto`, the default, as
// vLLM does) or stay greedy with no penalties (`none`).
struct SamplingArgs {
  SamplingParams flags;
  std::string generation_config = "auto";
  CLI::Option *temperature = nullptr, *top_p = nullptr, *top_k = nullptr, *min_p = nullptr, *rep = nullptr;
  // The parameters for a model in model_dir (reads its generation_config.json under auto; throws moe::Error
  // naming the file and key when it is malformed).
  SamplingParams resolve(const std::string& model_dir) const;
  bool temperature_given() const { return given(temperature); }
  static bool given(const CLI::Option* o) { return o && o->count() > 0; }
};
void add_sampling_options(CLI::App* cmd, SamplingArgs& sampling);
// --generation-config alone (serve: the defaults of requests that leave a parameter out).
void add_generation_config_option(CLI::App* cmd, std::string& mode);
// The defaults generation_config.json gives (auto) or none: greedy, no penalties.
SamplingParams generation_defaults(const std::string& mode, const std::string& model_dir);

void register_generate_command(CLI::App& app);  // generate_command.cpp
void register_bench_command(CLI::App& app);     // bench_command.cpp

}  // namespace moe::cli
