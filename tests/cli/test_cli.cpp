// The command-line contract (issue 2): `moe logits`, `generate`, `info`, `create-random`, and bad input ending
// in a clear message and exit code 1. Runs the real binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "run_moe.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using Result = test::MoeResult;


std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

TEST(Cli, LogitsWithMtpMatchReference) {
  const auto cases = test::load_reference_cases();
  SafetensorsFile ref(test::kReferenceTensors);
  const std::string out = test::temp_path("logits.safetensors");
  const Result r = test::run_moe("logits --model " + test::kTinyModel + " --tokens " + join(cases[2].input_ids) + " --out " + out + " --mtp");
  ASSERT_EQ(r.code, 0) << r.out;
  SafetensorsFile got(out);
  for (const auto& [name, ref_name] : {std::pair{"logits", "case2.logits"}, std::pair{"mtp_logits", "case2.mtp_logits"}}) {
    const SafetensorsEntry* g = got.find(name);
    ASSERT_NE(g, nullptr) << name;
    EXPECT_EQ(g->dtype, DType::F32);
    const TensorView want = ref.view(*ref.find(ref_name));
    ASSERT_EQ(g->shape, want.shape);
    EXPECT_LE(test::max_abs_diff(got.view(*g).as<float>(), want.as<float>(), want.numel()), 1e-3) << name;
  }
  fs::remove(out);
}

// The many-token GEMMs' precision: fp8 by default (FP8 checkpoints in W8A8, every other weight as bf16),
// shown in the help; a name the backend does not know is an error naming it, even on the CPU.
TEST(Cli, CudaPrefillDefaultsToFp8AndRejectsUnknownNames) {
  const Result help = test::run_moe("generate --help");
  ASSERT_EQ(help.code, 0) << help.out;
  EXPECT_NE(help.out.find("--cuda-prefill TEXT=fp8"), std::string::npos) << help.out;
  const Result bad = test::run_moe("generate --model " + test::kTinyModel +
                                   " --tokens 1,2 --max-new-tokens 1 --cuda-prefill fp4");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("unknown CUDA prefill precision 'fp4'"), std::string::npos) << bad.out;
}

TEST(Cli, GeneratePrintsTheGreedyContinuation) {
  for (const auto& c : test::load_reference_cases()) {
    const Result r = test::run_moe("generate --model " + test::kTinyModel + " --tokens " + join(c.input_ids) +
                         " --max-new-tokens " + std::to_string(c.greedy_continuation.size()), /*with_stderr=*/false);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out, join(c.greedy_continuation) + "\n");
  }
  // The FP8 twin has the same greedy continuation on the first case (its logits differ by ~1e-2 at most).
  const auto c = test::load_reference_cases()[0];
  const Result fp8 = test::run_moe("generate --model " + test::kTinyModelFp8 + " --tokens " + join(c.input_ids) + " --max-new-tokens 3");
  EXPECT_EQ(fp8.code, 0) << fp8.out;
}

TEST(Cli, SpeculativeGenerateMatchesGreedy) {
  const auto c = test::load_reference_cases()[2];
  const Result r = test::run_moe("generate --model " + test::kTinyModel + " --tokens " + join(c.input_ids) + " --max-new-tokens " +
                       std::to_string(c.greedy_continuation.size()) + " --speculative");
  ASSERT_EQ(r.code, 0) << r.out;
  // stdout (the ids) and stderr (the statistics) arrive interleaved through one pipe.
  EXPECT_NE(r.out.find(join(c.greedy_continuation) + "\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("drafts accepted"), std::string::npos);
}

// `create-random --mtp-check` and `bench --speculative`: the check model's MTP module drafts the main model's
// greedy token (acceptance near 1), and the scheduler's greedy tokens are the same with and without drafts.
TEST(Cli, MtpCheckModelAndSpeculativeBench) {
  const std::string dir = test::temp_path("mtpcheck");
  fs::remove_all(dir);
  ASSERT_EQ(test::run_moe("create-random --mtp-check --config " + test::kTinyModel + "/config.json --out " + dir).code, 0);
  const std::string bench = "bench --model " + dir + " --batch 1,3 --prompt-tokens 6 --gen-tokens 12 --print-tokens";
  const Result plain = test::run_moe(bench + " --speculative 0", /*with_stderr=*/false);
  const Result spec = test::run_moe(bench + " --speculative 2", /*with_stderr=*/false);
  ASSERT_EQ(plain.code, 0) << plain.out;
  ASSERT_EQ(spec.code, 0) << spec.out;
  auto token_lines = [](const std::string& out) {
    std::string lines;
    std::istringstream in(out);
    for (std::string l; std::getline(in, l);)
      if (l.rfind("tokens ", 0) == 0) lines += l + "\n";
    return lines;
  };
  EXPECT_EQ(token_lines(spec.out), token_lines(plain.out));
  EXPECT_NE(token_lines(plain.out).find("tokens batch 3 request 2: "), std::string::npos) << plain.out;
  const size_t at = spec.out.find("(acceptance ");
  ASSERT_NE(at, std::string::npos) << spec.out;
  EXPECT_GE(std::stod(spec.out.substr(at + 12)), 0.9) << spec.out;
  // A config without an MTP layer cannot make a check model; a checkpoint without one cannot speculate.
  const Result bad = test::run_moe("create-random --mtp-check --config bench/gpu/configs/moonlight-16b-a3b.json --out " + dir + "/x");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("num_nextn_predict_layers"), std::string::npos) << bad.out;
  fs::remove_all(dir);
}

TEST(Cli, SeededSamplingIsReproducible) {
  const std::string args = "generate --model " + test::kTinyModel + " --tokens 5,6,7 --max-new-tokens 8 --temperature 1.0 --top-p 0.9 --seed 7";
  const Result a = test::run_moe(args), b = test::run_moe(args);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
}

TEST(Cli, InfoReportsArchitectureParametersAndCache) {
  const Result r = test::run_moe("info --model " + test::kTinyModel);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("DeepseekV3ForCausalLM"), std::string::npos);
  // 3 layers x (kv_lora 128 + rope 32) values x 2 bytes (MODEL.md's formula for the BF16 latent cache).
  EXPECT_NE(r.out.find("160 values per layer, 960 B in BF16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("active per token"), std::string::npos);
}

TEST(Cli, InfoNamesDeepSeekV32AndItsSparseAttention) {
  const Result r = test::run_moe("info --model " + test::kTinyV32Model);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("DeepseekV32ForCausalLM (DeepSeek-V3.2, DeepSeek Sparse Attention)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("sparse attention: lightning indexer with 8 heads of 32, each query attends to its top 16"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("index key cache per token: 32 values per layer"), std::string::npos) << r.out;
}

TEST(Cli, GenerateV32PrintsTheGreedyContinuation) {
  const auto c = test::load_reference_cases(test::kV32ReferenceJson)[1];  // 40 tokens: sparse attention
  const Result r = test::run_moe("generate --model " + test::kTinyV32Model + " --tokens " + join(c.input_ids) +
                       " --max-new-tokens " + std::to_string(c.greedy_continuation.size()), /*with_stderr=*/false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, join(c.greedy_continuation) + "\n");
}

// A random checkpoint in the hub layout loads, runs, and keeps logits near unit size; its FP8 twin (same seed,
// quantised in 128x128 blocks) gives nearly the same logits, which checks quantisation and dequantisation.
TEST(Cli, CreateRandomBf16AndFp8) {
  const std::string dir = test::temp_path("random");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string cfg = dir + "/shape.json";
  std::ofstream(cfg) << R"({"architectures":["DeepseekV3ForCausalLM"],"vocab_size":512,"hidden_size":320,
    "intermediate_size":640,"moe_intermediate_size":192,"num_hidden_layers":3,"num_attention_heads":4,
    "n_shared_experts":1,"n_routed_experts":8,"routed_scaling_factor":2.5,"kv_lora_rank":160,"q_lora_rank":192,
    "qk_rope_head_dim":32,"v_head_dim":64,"qk_nope_head_dim":64,"n_group":2,"topk_group":1,"num_experts_per_tok":2,
    "first_k_dense_replace":1,"norm_topk_prob":true,"scoring_func":"sigmoid","topk_method":"noaux_tc",
    "num_nextn_predict_layers":1,"rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":4096})";
  for (const char* dtype : {"bf16", "fp8"}) {
    const Result r = test::run_moe("create-random --config " + cfg + " --out " + dir + "/" + dtype + " --dtype " + dtype + " --seed 3");
    ASSERT_EQ(r.code, 0) << r.out;
    const Result l = test::run_moe("logits --model " + dir + "/" + dtype + " --tokens 1,2,3,400,17 --mtp --out " + dir + "/" + dtype + ".st");
    ASSERT_EQ(l.code, 0) << l.out;
  }
  SafetensorsFile a(dir + "/bf16.st"), b(dir + "/fp8.st");
  const TensorView la = a.view(*a.find("logits")), lb = b.view(*b.find("logits"));
  double sum2 = 0, diff2 = 0;
  for (int64_t i = 0; i < la.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(la.as<float>()[i]));
    sum2 += double(la.as<float>()[i]) * la.as<float>()[i];
    diff2 += std::pow(double(la.as<float>()[i]) - lb.as<float>()[i], 2);
  }
  const double rms = std::sqrt(sum2 / double(la.numel()));
  EXPECT_GT(rms, 0.2);  // near unit size, not vanishing
  EXPECT_LT(rms, 5.0);  // nor exploding
  // E4M3 keeps 3 mantissa bits: each weight is off by up to 2^-4 relative, ~3.6% rms for uniform values;
  // through 3 layers the logits move by a few percent, far below 25%.
  EXPECT_LT(std::sqrt(diff2 / sum2), 0.25);
  fs::remove_all(dir);
}

// create-random --family makes each member of the family and `moe info` names it with what it uses (issue 17).
TEST(Cli, CreateRandomFamiliesAndInfoNamesThem) {
  const std::string dir = test::temp_path("families");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/shape.json") << R"({"architectures":["DeepseekV3ForCausalLM"],"vocab_size":256,
    "hidden_size":128,"intermediate_size":160,"moe_intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":2,"q_lora_rank":48,"kv_lora_rank":32,"qk_nope_head_dim":16,"qk_rope_head_dim":8,
    "v_head_dim":16,"n_routed_experts":384,"n_shared_experts":1,"num_experts_per_tok":8,"n_group":1,"topk_group":1,
    "first_k_dense_replace":1,"norm_topk_prob":true,"routed_scaling_factor":2.827,"index_n_heads":2,
    "index_head_dim":16,"index_topk":4})";
  const std::vector<std::pair<std::string, std::vector<std::string>>> want = {
      {"v3", {"family: Kimi-K2", "dense MLA", "BF16/F32"}},  // 384 routed experts: Kimi-K2-shaped
      {"v31", {"family: DeepSeek-V3.1", "FP8 e4m3, 128x128 blocks, ue8m0"}},
      {"v32", {"family: DeepSeek-V3.2", "sparse (DSA", "top 4"}},
      {"kimi-k2", {"family: Kimi-K2", "routed experts INT4 (W4A16, group 32, compressed-tensors pack-quantized)"}}};
  for (const auto& [family, needles] : want) {
    const std::string m = dir + "/" + family;
    const Result c = test::run_moe("create-random --config " + dir + "/shape.json --out " + m + " --family " + family);
    ASSERT_EQ(c.code, 0) << c.out;
    const Result r = test::run_moe("info --model " + m);
    ASSERT_EQ(r.code, 0) << r.out;
    for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << family << ": " << n << "\n" << r.out;
    const Result g = test::run_moe("generate --model " + m + " --tokens 3,17,42 --max-new-tokens 3", false);
    EXPECT_EQ(g.code, 0) << family << ": " << g.out;
  }
  const Result info = test::run_moe("info --model " + test::kTinyModel);
  EXPECT_NE(info.out.find("family: DeepSeek-V3/R1; attention dense MLA; weights BF16/F32"), std::string::npos)
      << info.out;
  const Result bad = test::run_moe("create-random --config " + dir + "/shape.json --out " + dir + "/x --family v4");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("v4"), std::string::npos) << bad.out;
  fs::remove_all(dir);
}

// DeepSeek-V2(-Lite) checkpoints: softmax routing, no q compression (q_proj), no correction bias, YaRN with
// mscale 0.707; group-limited greedy as in V2. A random checkpoint of that shape loads and gives finite logits
// of unit size, and batching inside `generate` agrees with `logits` (the greedy pick is the argmax).
TEST(Cli, DeepseekV2ShapedCheckpointRuns) {
  const std::string dir = test::temp_path("v2");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/shape.json") << R"({"architectures":["DeepseekV2ForCausalLM"],"model_type":"deepseek_v2",
    "vocab_size":300,"hidden_size":128,"intermediate_size":256,"moe_intermediate_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"n_shared_experts":2,"n_routed_experts":8,"routed_scaling_factor":1.0,"kv_lora_rank":64,
    "q_lora_rank":null,"qk_rope_head_dim":16,"v_head_dim":32,"qk_nope_head_dim":32,"n_group":4,"topk_group":2,
    "num_experts_per_tok":3,"first_k_dense_replace":1,"norm_topk_prob":false,"scoring_func":"softmax",
    "topk_method":"group_limited_greedy","rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":8192,
    "rope_scaling":{"type":"yarn","factor":4,"original_max_position_embeddings":2048,"beta_fast":32,"beta_slow":1,
    "mscale":0.707,"mscale_all_dim":0.707}})";
  ASSERT_EQ(test::run_moe("create-random --config " + dir + "/shape.json --out " + dir + "/m").code, 0);
  const Result info = test::run_moe("info --model " + dir + "/m");
  EXPECT_NE(info.out.find("DeepseekV2ForCausalLM"), std::string::npos) << info.out;
  const Result l = test::run_moe("logits --model " + dir + "/m --tokens 5,6,7,8 --out " + dir + "/l.st");
  ASSERT_EQ(l.code, 0) << l.out;
  SafetensorsFile f(dir + "/l.st");
  const TensorView v = f.view(*f.find("logits"));
  int best = 0;
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(std::isfinite(v.as<float>()[3 * 300 + i]));
    if (v.as<float>()[3 * 300 + i] > v.as<float>()[3 * 300 + best]) best = i;
  }
  const Result g = test::run_moe("generate --model " + dir + "/m --tokens 5,6,7,8 --max-new-tokens 1", /*with_stderr=*/false);
  EXPECT_EQ(g.out, std::to_string(best) + "\n");
  fs::remove_all(dir);
}

// Issue 3's text path on a random model with DeepSeek-V3's vocabulary and its real tokenizer beside it:
// `generate --prompt` must print exactly the decoding of what `generate --tokens` produces for the same
// prompt ids, and `chat` must answer each line, honour /reset and quit on /exit.
TEST(Cli, TextGenerateAndChatWithTheRealTokenizer) {
  const std::string dir = test::temp_path("dsvocab");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/shape.json") << R"({"architectures":["DeepseekV3ForCausalLM"],"vocab_size":129280,
    "hidden_size":64,"intermediate_size":128,"moe_intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":2,
    "n_shared_experts":1,"n_routed_experts":4,"routed_scaling_factor":2.5,"kv_lora_rank":32,"q_lora_rank":48,
    "qk_rope_head_dim":16,"v_head_dim":16,"qk_nope_head_dim":16,"n_group":2,"topk_group":1,"num_experts_per_tok":2,
    "first_k_dense_replace":1,"norm_topk_prob":true,"scoring_func":"sigmoid","topk_method":"noaux_tc",
    "rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":4096,"bos_token_id":0,"eos_token_id":1})";
  const std::string model = dir + "/model";
  ASSERT_EQ(test::run_moe("create-random --config " + dir + "/shape.json --out " + model).code, 0);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file("models/deepseek-v3-tokenizer/" + std::string(f), model + "/" + f);

  // The prompt's ids (BOS + text) through the tokenizer command, then both generate paths.
  const std::string prompt_file = dir + "/prompt.txt";
  std::ofstream(prompt_file) << "\"Hello, 世界\"\n";
  const Result ids = test::run_moe("tokenize --tokenizer " + model + " < " + prompt_file);
  ASSERT_EQ(ids.code, 0) << ids.out;
  std::string id_list = ids.out.substr(1, ids.out.find(']') - 1);
  const Result by_ids = test::run_moe("generate --model " + model + " --tokens 0," + id_list + " --max-new-tokens 12", /*with_stderr=*/false);
  ASSERT_EQ(by_ids.code, 0) << by_ids.out;
  const std::string decode_file = dir + "/ids.txt";
  std::ofstream(decode_file) << "[" << by_ids.out.substr(0, by_ids.out.size() - 1) << "]\n";
  const Result decoded = test::run_moe("tokenize --decode --tokenizer " + model + " < " + decode_file);
  ASSERT_EQ(decoded.code, 0) << decoded.out;
  const Result by_text = test::run_moe("generate --model " + model + " --prompt 'Hello, 世界' --max-new-tokens 12", false);
  ASSERT_EQ(by_text.code, 0) << by_text.out;
  // decoded is a JSON string line; by_text is the raw text plus a newline.
  const std::string expected = nlohmann::json::parse(decoded.out).get<std::string>() + "\n";
  EXPECT_EQ(by_text.out, expected);

  const std::string script = dir + "/chat.txt";
  std::ofstream(script) << "Hi\nHow are you?\n/reset\nAgain\n/exit\nnever read\n";
  const Result c = test::run_moe("chat --model " + model + " --max-new-tokens 6 < " + script);
  ASSERT_EQ(c.code, 0) << c.out;
  size_t replies = 0;
  for (size_t p = c.out.find("tokens/s]"); p != std::string::npos; p = c.out.find("tokens/s]", p + 1)) ++replies;
  EXPECT_EQ(replies, 3u) << c.out;
  EXPECT_NE(c.out.find("(conversation cleared)"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Cli, BadInputEndsWithAClearErrorAndExitCode1) {
  struct Case {
    std::string args, needle;
  };
  const Case cases[] = {
      {"generate --model " + test::kTinyModel + " --tokens 1,2048", "outside the vocabulary"},
      {"generate --model " + test::kTinyModel + " --tokens 1,x", "'x' is not a token id"},
      {"generate --model /nonexistent/dir --tokens 1", "/nonexistent/dir"},
      {"logits --model " + test::kTinyModel + " --tokens 1 --out /nonexistent/dir/out.st",
       "/nonexistent/dir/out.st"},
      {"info --model tests", "config.json"},
      {"create-random --config /nonexistent.json --out /tmp/x", "/nonexistent.json"},
      {"generate --model " + test::kTinyModel + " --tokens 1 --device tpu", "unknown device 'tpu'"},
      {"generate --model " + test::kTinyModel + " --tokens 1 --cuda-grouped-experts-tokens 0",
       "--cuda-grouped-experts-tokens must be >= 1, not 0"},
      {"generate --model " + test::kTinyModel + " --tokens 1 --cuda-bf16-grouped-experts-tokens -3",
       "--cuda-bf16-grouped-experts-tokens must be >= 1, not -3"},
  };
  for (const Case& c : cases) {
    const Result r = test::run_moe(c.args);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("internal error"), std::string::npos) << r.out;
  }
  EXPECT_NE(test::run_moe("logits --model " + test::kTinyModel).code, 0);  // missing required flags
  // A flag's value CLI11 cannot convert: its own error, naming the flag and the value.
  const Result b =
      test::run_moe("generate --model " + test::kTinyModel + " --tokens 1 --cuda-moe-decode-fusion maybe");
  EXPECT_NE(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("--cuda-moe-decode-fusion = maybe"), std::string::npos) << b.out;
}

TEST(Cli, ChatTemplateRefusesDeeplyNestedJson) {
  // 100,000 levels of [[...]] in a message field and in --context: a clear error, not a stack overflow.
  const std::string dir = test::temp_path("deep_json");
  fs::create_directories(dir);
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  std::ofstream(dir + "/messages.json") << R"([{"role": "user", "content": "hi", "x": )" << deep << "}]";
  std::ofstream(dir + "/ok.json") << R"([{"role": "user", "content": "hi"}])";
  const Result r = test::run_moe("chat-template --tokenizer " + test::kTinyModel + " < " + dir + "/messages.json");
  EXPECT_EQ(r.code, 1) << r.out.substr(0, 500);
  EXPECT_NE(r.out.find("nesting deeper than 128 levels"), std::string::npos) << r.out.substr(0, 500);
  const Result c = test::run_moe("chat-template --tokenizer " + test::kTinyModel + " --context '{\"x\": " +
                       std::string(20000, '[') + std::string(20000, ']') + "}' < " + dir + "/ok.json");
  EXPECT_EQ(c.code, 1) << c.out.substr(0, 500);
  EXPECT_NE(c.out.find("nesting deeper than 128 levels"), std::string::npos) << c.out.substr(0, 500);
  EXPECT_EQ(test::run_moe("chat-template --tokenizer " + test::kTinyModel + " < " + dir + "/ok.json").code, 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moe
